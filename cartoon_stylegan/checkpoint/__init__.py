"""Checkpoint files, every format in one package: the only ``torch.save`` / ``torch.load`` of the project.

    native.py      this project's files: transfer (weights + the configs that rebuild them) and resume
                   (a run's exact state); atomic writes; strict ``weights_only`` loads
    rosinality.py  rosinality's stylegan2-pytorch ``.pt`` files, read into our networks (his names)
    nvlabs.py      NVlabs' stylegan2-ada-pytorch / stylegan3 pickles, read without running their code
    export.py      out again: rosinality's layout, TorchScript, ONNX
    formats.py     the registry of the formats a run can start from (``init.format``)
    scan.py        the opcode walk that refuses a pickle able to crash or exhaust an unpickler

``from cartoon_stylegan import checkpoint`` gives the native and rosinality functions by name
(``checkpoint.load_transfer``, ``checkpoint.import_rosinality``); the others are imported as modules.
"""
from __future__ import annotations

import importlib

_NATIVE = ("RESUME_FORMAT", "TRANSFER_FORMAT", "CheckpointMismatch", "CheckpointRefused", "atomic_save", "build_network", "check_compatible",
           "load_file", "load_resume", "load_transfer", "refusal", "save_resume", "save_transfer", "state_diff", "unwrap")
_ROSINALITY = ("import_rosinality", "infer_discriminator_config", "infer_generator_config", "infer_multiplier")
__all__ = [*_NATIVE, *_ROSINALITY]


def __getattr__(name: str):
    """The native and rosinality names, imported when first used: reading a config imports this package
    (for the formats registry) without importing torch."""
    if name in _NATIVE or name in _ROSINALITY:
        module = importlib.import_module(f"{__name__}.{'native' if name in _NATIVE else 'rosinality'}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
