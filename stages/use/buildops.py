"""``python -m pipeline build-ops``: build the CUDA kernels into their cache ahead of time (on a login
node with nvcc), so that the training jobs find them built. A command of this registry: the runner
knows nothing of kernels."""
from __future__ import annotations

import sys

from pipeline.registry import Command


def _arguments(p) -> None:
    p.usage = "python -m pipeline build-ops"


def run(reg, cfg, args) -> int:
    from cartoon_stylegan.ops import OpsBuildError, build_ops

    try:
        path = build_ops(verbose=True)
    except OpsBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"CUDA ops built and cached: {path}")
    return 0


COMMAND = Command("build-ops", "Build the CUDA kernels into their cache (on a login node with nvcc).", _arguments, run,
                  config=False)
