"""Chooses between the reference ops and the CUDA kernels.

``impl`` (argument of every public op): ``None`` or ``"auto"`` defer to the environment
variable ``CARTOON_STYLEGAN_OPS`` (``auto`` | ``ref`` | ``cuda``, default ``auto``);
``"ref"`` and ``"cuda"`` given explicitly win over it.

* ``auto``: the CUDA kernels for CUDA tensors when they build and load, else the
  reference, after ONE warning that says why and how to fix it.
* ``ref``: always the reference (no build is attempted, no warning).
* ``cuda``: the kernels or an error: a CPU tensor, or a build/load failure, raises with
  the reason, since the user asked for them.

Building is lazy (first CUDA call, never at import) and cached on disk; see ``build.py``.
Both functions here are safe to call while ``torch.compile`` traces: the environment is
read as a guarded constant and the (possibly slow) load runs once at trace time.
"""
from __future__ import annotations

import os
import threading
import warnings

import torch

_VALID = ("auto", "ref", "cuda")
ENV_IMPL = "CARTOON_STYLEGAN_OPS"


def requested_impl(impl=None):
    """The effective implementation choice: 'auto', 'ref' or 'cuda'."""
    source = "impl="
    if impl is None or impl == "auto":
        env = os.environ.get(ENV_IMPL)
        if env:
            impl, source = env.strip().lower(), f"{ENV_IMPL}="
        else:
            impl = "auto"
    if impl not in _VALID:
        raise ValueError(f"ops implementation {impl!r} (from {source}) is not one of {_VALID}")
    return impl


class _State:
    """Outcome of the one attempt per process to get the kernels."""

    def __init__(self):
        self.lock = threading.RLock()
        self.tried = False
        self.lib = None
        self.error = None      # OpsBuildError / Exception from the attempt
        self.warned = False


_state = _State()


def _load():
    """Find or build the kernels for the visible GPUs and load them. Monkeypatched in tests."""
    from . import build  # noqa: PLC0415

    if not torch.cuda.is_available():
        raise build.OpsBuildError("CUDA is not available in this process (no GPU visible or no driver)",
                               "run on a machine with a GPU, or use impl='ref'")
    path = build.ensure_built(build.device_arches(), ptx=False)
    build.load_library(path)
    return torch.ops.cartoon_stylegan


def _fallback_message(err) -> str:
    reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
    fix = getattr(err, "fix", "")
    detail = getattr(err, "detail", "")
    msg = (f"cartoon_stylegan.ops: the CUDA kernels are unavailable ({reason}); using the slower "
           f"reference implementation instead.")
    if fix:
        msg += f" To fix: {fix}."
    msg += (f" Set {ENV_IMPL}=ref to choose the reference explicitly (no warning), "
            f"or {ENV_IMPL}=cuda to make this an error.")
    if detail:
        msg += "\n" + detail
    return msg


def load_extension(required: bool = False):
    """The loaded kernels (the ``torch.ops.cartoon_stylegan`` namespace) or None.

    Tries once per process. On failure: ``required`` raises RuntimeError with the reason;
    otherwise one warning (the first time) and None.
    """
    with _state.lock:
        if not _state.tried:
            _state.tried = True
            try:
                _state.lib = _load()
            except Exception as e:  # noqa: BLE001 -- any failure means "fall back", reported below
                _state.error = e
        if _state.lib is not None:
            return _state.lib
        err = _state.error
        if required:
            raise RuntimeError(
                f"CUDA kernels were requested ({ENV_IMPL}=cuda or impl='cuda') but are unavailable: "
                f"{getattr(err, 'reason', None) or err}"
                + (f". To fix: {err.fix}" if getattr(err, "fix", "") else "")
                + (f"\n{err.detail}" if getattr(err, "detail", "") else "")
            ) from err
        if not _state.warned:
            _state.warned = True
            warnings.warn(_fallback_message(err), RuntimeWarning, stacklevel=4)
        return None


def reset():
    """Forget the outcome of the load attempt (tests; after fixing the toolchain)."""
    with _state.lock:
        _state.tried = False
        _state.lib = None
        _state.error = None
        _state.warned = False


@torch.compiler.assume_constant_result
def _kernels_ready(required: bool) -> bool:
    return load_extension(required=required) is not None


def use_cuda(x, impl=None):
    """True when the op should run the CUDA kernels on ``x``."""
    impl = requested_impl(impl)
    if impl == "ref":
        return False
    if x.device.type != "cuda":
        if impl == "cuda":
            raise RuntimeError(
                f"CUDA kernels were requested ({ENV_IMPL}=cuda or impl='cuda') but the input tensor is on "
                f"device '{x.device}'; move it to a CUDA device, or use impl='auto' / 'ref'"
            )
        return False
    return _kernels_ready(impl == "cuda")
