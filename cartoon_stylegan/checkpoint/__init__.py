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

from cartoon_stylegan.checkpoint.native import (RESUME_FORMAT, TRANSFER_FORMAT, CheckpointMismatch, atomic_save,
                                                build_network, check_compatible, load_file, load_resume,
                                                load_transfer, refusal, save_resume, save_transfer, state_diff,
                                                unwrap)
from cartoon_stylegan.checkpoint.rosinality import (import_rosinality, infer_discriminator_config,
                                                    infer_generator_config, infer_multiplier)

__all__ = ["RESUME_FORMAT", "TRANSFER_FORMAT", "CheckpointMismatch", "atomic_save", "build_network",
           "check_compatible", "load_file", "load_resume", "load_transfer", "refusal", "save_resume",
           "save_transfer", "state_diff", "unwrap", "import_rosinality", "infer_discriminator_config",
           "infer_generator_config", "infer_multiplier"]
