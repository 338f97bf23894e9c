"""StyleGAN2's two custom ops and their helpers, each with a PyTorch reference and a CUDA twin.

`impl` (None | "auto" | "ref" | "cuda") picks the implementation per call; None defers
to the environment variable CARTOON_STYLEGAN_OPS, then "auto" (CUDA kernels for CUDA
tensors when the extension builds, else the reference). See `backend`.

`build_ops()` builds the kernels ahead of time into their cache (``python -m pipeline
build-ops``); it raises `OpsBuildError` with a one-line reason when it cannot.
"""
from .bias_act import ACTIVATIONS, Activation, fused_bias_act, register_activation
from .build import OpsBuildError, build_ops
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "fused_bias_act", "ACTIVATIONS", "Activation", "register_activation",
    "upfirdn2d", "setup_filter", "upsample2d", "downsample2d", "filter2d",
    "build_ops", "OpsBuildError",
]
