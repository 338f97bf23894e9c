"""Training: the GAN loop (scheduling), its phases (losses), its state (resume files), its backends
(DDP, DeepSpeed ZeRO), options, freezing plans, the structure loss, EMA and ADA."""
from .ada import AUGMENT_PRESETS, AdaptiveAugment, AugmentPipe, make_augment_pipe
from .backends import BACKENDS, DDPBackend, DeepSpeedBackend, make_backend
from .ema import EMA, ema_beta
from .freeze import FreezePlan, build_optimizers, lazy_ratio, trainable_parameters
from .loop import TrainingLoop, train
from .losses import (
    StructureLoss,
    d_logistic_loss,
    d_r1_loss,
    g_nonsaturating_loss,
    g_path_regularize,
    structure_loss,
)
from .options import RUN_ONLY, LoopOptions, NonFiniteLossError, TrainResult
from .phases import PHASES, StyleGAN2Phases
from .state import (
    RESUME_FORMAT,
    CheckpointStore,
    LocalCheckpoints,
    find_latest_resume,
    read_resume_step,
    resume_path,
)

__all__ = [
    "LoopOptions", "TrainResult", "NonFiniteLossError", "RUN_ONLY", "train", "TrainingLoop",
    "find_latest_resume", "read_resume_step", "resume_path", "RESUME_FORMAT", "CheckpointStore", "LocalCheckpoints",
    "StyleGAN2Phases", "PHASES", "BACKENDS", "DDPBackend", "DeepSpeedBackend", "make_backend",
    "FreezePlan", "build_optimizers", "lazy_ratio", "trainable_parameters",
    "StructureLoss", "d_logistic_loss", "d_r1_loss", "g_nonsaturating_loss", "g_path_regularize", "structure_loss",
    "EMA", "ema_beta",
    "AugmentPipe", "AdaptiveAugment", "AUGMENT_PRESETS", "make_augment_pipe",
]
