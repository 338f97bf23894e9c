"""Chooses between the reference ops and the CUDA kernels (placeholder until the kernels land)."""
import os

_VALID = ("auto", "ref", "cuda")


def requested_impl(impl=None):
    impl = impl or os.environ.get("CARTOON_STYLEGAN_OPS", "auto")
    if impl not in _VALID:
        raise ValueError(f"ops impl {impl!r} (from impl= or CARTOON_STYLEGAN_OPS) is not one of {_VALID}")
    return impl


def use_cuda(x, impl=None):
    requested_impl(impl)
    return False
