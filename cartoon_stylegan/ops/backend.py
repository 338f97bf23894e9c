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
    if (impl is None or impl == "auto") and _state.agreed is not None:
        return _state.agreed  # what all ranks agreed on (settle)
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
        self.agreed = None     # 'ref' | 'cuda' once the ranks of a job agreed (settle)


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
        _state.agreed = None


def _kernels_ready(required: bool) -> bool:
    return load_extension(required=required) is not None


# torch.compile may treat _kernels_ready as a constant. This is what torch.compiler.assume_constant_result
# does (torch 2.10-2.14: it sets this attribute), written out because the decorator imports torch._dynamo,
# 1.5-3 s of every process's start on a 2-core CPU; tests/ops/test_ops_dispatch.py checks the two agree.
_kernels_ready._dynamo_marked_constant = True


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


def settle(accelerator, say=print) -> str:
    """Make every rank of a job use the same implementation; returns it ('cuda' or 'ref').

    The kernels are built once per machine: the local main process of each node finds or
    builds them while the other ranks wait at a barrier, then those load the finished build
    (or fail at once on the failure marker a failed build leaves). The ranks then agree: the
    CUDA kernels only if every rank has them, else the reference everywhere -- mixing the two
    across ranks would make the replicas compute slightly different things. Said once, by the
    main process. Without CUDA tensors (CPU training) or with ``ref`` requested: 'ref', no build.
    """
    if accelerator.device.type != "cuda" or requested_impl() == "ref":
        return "ref"  # CPU tensors always take the reference: nothing to agree on
    required = requested_impl() == "cuda"
    ok = False
    if accelerator.is_local_main_process:
        ok = _try_load(required)
    accelerator.wait_for_everyone()
    if not accelerator.is_local_main_process:
        ok = _try_load(required)
    agreed = "cuda" if all_ranks_min(accelerator, 1.0 if ok else 0.0) > 0 else "ref"
    if required and agreed != "cuda":
        raise RuntimeError(f"CUDA kernels were requested ({ENV_IMPL}=cuda) but some rank could not load them")
    with _state.lock:
        _state.agreed = agreed
    if accelerator.is_main_process:
        why = "" if agreed == "cuda" or ok else f" ({getattr(_state.error, 'reason', None) or _state.error})"
        say(f"cartoon_stylegan.ops: all {accelerator.num_processes} rank(s) use the "
            f"{'CUDA kernels' if agreed == 'cuda' else 'reference ops'}{why}")
    return agreed


def all_ranks_min(accelerator, value: float) -> float:
    """The minimum of ``value`` over the job's ranks (a collective: every rank must call it)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], device=accelerator.device)
    return float(accelerator.reduce(t, "min").item())


def _try_load(required: bool) -> bool:
    try:
        return load_extension(required=required) is not None
    except RuntimeError:
        if required:
            raise
        return False
