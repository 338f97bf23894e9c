"""Training: losses (pure functions), EMA, ADA, freezing plans, the structure loss and the GAN loop."""
from .ada import AUGMENT_PRESETS, AdaptiveAugment, AugmentPipe, make_augment_pipe
from .ema import EMA, ema_beta
from .freeze import FreezePlan, build_optimizers, lazy_ratio, trainable_parameters
from .loop import (
    LoopOptions,
    NonFiniteLossError,
    TrainResult,
    find_latest_resume,
    read_resume_step,
    resume_path,
    train,
)
from .losses import (
    StructureLoss,
    d_logistic_loss,
    d_r1_loss,
    g_nonsaturating_loss,
    g_path_regularize,
    structure_loss,
)

__all__ = [
    "LoopOptions", "TrainResult", "NonFiniteLossError", "train", "find_latest_resume", "read_resume_step",
    "resume_path",
    "FreezePlan", "build_optimizers", "lazy_ratio", "trainable_parameters",
    "StructureLoss", "d_logistic_loss", "d_r1_loss", "g_nonsaturating_loss", "g_path_regularize", "structure_loss",
    "EMA", "ema_beta",
    "AugmentPipe", "AdaptiveAugment", "AUGMENT_PRESETS", "make_augment_pipe",
]
