"""Training: the GAN loop (scheduling), its phases (losses), its state (resume files), its backends
(DDP, DeepSpeed ZeRO), options, freezing plans, the structure loss, EMA and ADA."""
# Names are imported on first use (PEP 562): `from cartoon_stylegan.training.options import LoopOptions`
# -- what reading a config needs -- then costs no torch import.
_WHERE = {
    "ada": ("AUGMENT_PRESETS", "AdaptiveAugment", "AugmentPipe", "make_augment_pipe"),
    "backends": ("BACKENDS", "DDPBackend", "DeepSpeedBackend", "make_backend"),
    "ema": ("EMA", "ema_beta"),
    "freeze": ("FreezePlan", "build_optimizers", "lazy_ratio", "trainable_parameters"),
    "loop": ("TrainingLoop", "train"),
    "losses": ("StructureLoss", "d_logistic_loss", "d_r1_loss", "g_nonsaturating_loss", "g_path_regularize",
               "structure_loss"),
    "options": ("RUN_ONLY", "LoopOptions", "NonFiniteLossError", "TrainResult"),
    "phases": ("PHASES", "StyleGAN2Phases"),
    "state": ("RESUME_FORMAT", "CheckpointStore", "LocalCheckpoints", "find_latest_resume", "read_resume_step",
              "resume_path"),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}


def __getattr__(name):
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = list(_MODULE_OF)
