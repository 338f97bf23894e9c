"""Take a trained generator out of this project: rosinality's checkpoint layout, TorchScript, ONNX.

- :func:`to_rosinality`: his checkpoint dict (``g_ema``, ``g``, ``d`` and ``args`` as his ``train.py``
  writes them, ``latent_avg`` as his ``convert_weight.py`` does; no ``g_optim``/``d_optim``, so his
  ``train.py --ckpt`` cannot resume from it), loadable with ``strict=True`` by his
  ``model.Generator(size, latent, n_mlp, channel_multiplier)`` wherever his fixed architecture can
  express ours (else :class:`ExportError` says what differs) -- by his ``generate.py`` and
  ``closed_form_factorization.py`` for any latent/n_mlp, by ``projector.py`` and ``apply_factor.py``
  (which build ``Generator(size, 512, 8)``) and the Cartoon-StyleGAN Colab for config-f (512, 8, 2).
- :class:`SamplingNetwork`: a :class:`~cartoon_stylegan.sampling.Sampler` (truncation towards the
  network's centre, a FreezeSG variant's source-mapping prefix, a weight-swapped pair) as one
  module, ``z -> image`` or ``W+ -> image``, constant noise; :func:`export_torchscript` and
  :func:`export_onnx` write it with the reference ops and check the file against PyTorch.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import torch
from torch import nn

from toolbox import atomic_path

__all__ = ["ExportError", "to_rosinality", "rosinality_channels", "SamplingNetwork", "export_torchscript",
           "export_onnx", "FORMATS"]

FORMATS = ("rosinality", "torchscript", "onnx")
ROSINALITY_LR_MLP = 0.01            # his Generator's default; his scripts never pass another
ROSINALITY_BLUR = [1.0, 3.0, 3.0, 1.0]


class ExportError(ValueError):
    """The network cannot be written in the asked format (one line saying why)."""


def rosinality_channels(res: int, channel_multiplier: int) -> int:
    """The width of his model at ``res``: 512 up to 32 px, then 16384 * m / res (no cap)."""
    return 512 if res <= 32 else 16384 * channel_multiplier // res


def _check_widths(net, what: str) -> None:
    cm = net.channel_multiplier
    sizes = [2 ** k for k in range(2, int(net.size).bit_length())]
    ours = {r: (net.channels[r] if hasattr(net, "channels") else _d_width(net, r)) for r in sizes}
    his = {r: rosinality_channels(r, cm) for r in sizes}
    if ours != his:
        diff = ", ".join(f"{r} px: {ours[r]} vs {his[r]}" for r in sizes if ours[r] != his[r])
        raise ExportError(f"{what}: rosinality's model (channel_multiplier={cm}) has other channel widths "
                          f"({diff}; his are 512 up to 32 px and uncapped above, ours are capped at channel_max="
                          f"{net.channel_max}); export to torchscript or onnx instead")
    if [float(t) for t in net.blur_kernel] != ROSINALITY_BLUR:
        raise ExportError(f"{what}: blur kernel {list(net.blur_kernel)}; his scripts build [1, 3, 3, 1]")


def _d_width(d, res: int) -> int:
    from cartoon_stylegan.networks.layers import stylegan2_channels

    return stylegan2_channels(res, d.channel_multiplier, d.channel_max)


def _plain(net):
    from cartoon_stylegan.checkpoint.native import unwrap

    return unwrap(net)


def _generator_state(G, what: str) -> dict[str, torch.Tensor]:
    G = _plain(G)
    _check_widths(G, what)
    if G.lr_mlp != ROSINALITY_LR_MLP:  # his mapping trains with 0.01: same function, rescaled weights
        G = G.with_lr_mlp(ROSINALITY_LR_MLP)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in G.state_dict().items()}
    if not G.use_noise:  # his forward always adds weight * noise: a zero weight adds nothing
        for k in state:
            if k.endswith(".noise.weight"):
                state[k].zero_()
    return state


def to_rosinality(g_ema, *, g=None, d=None, latent_avg: torch.Tensor | None = None,
                  args: dict | None = None) -> dict[str, Any]:
    """His checkpoint dict for our networks (see the module docstring).

    ``latent_avg`` defaults to g_ema's truncation centre (the pinned one of an imported network, else
    the mean of its mapping over 4096 z). ``args`` is stored as a plain dict (size, latent, n_mlp,
    channel_multiplier, ...): his scripts take the architecture from their command line, and a dict,
    unlike his ``argparse.Namespace``, loads under ``torch.load(weights_only=True)``, the default since
    torch 2.6. There is no ``g_optim`` / ``d_optim``: his ``train.py --ckpt`` needs those to resume.
    """
    from cartoon_stylegan.sampling import truncation_center

    g_ema = _plain(g_ema)
    out: dict[str, Any] = {"g_ema": _generator_state(g_ema, "g_ema")}
    if g is not None:
        if _plain(g).config != g_ema.config:
            raise ExportError(f"g {_plain(g).config} and g_ema {g_ema.config} differ")
        out["g"] = _generator_state(g, "g")
    if d is not None:
        d = _plain(d)
        _check_widths(d, "d")
        if d.size != g_ema.size or d.channel_multiplier != g_ema.channel_multiplier:
            raise ExportError(f"d {d.config} does not pair with g_ema {g_ema.config} in one rosinality args record")
        out["d"] = {k: v.detach().to("cpu", torch.float32).clone() for k, v in d.state_dict().items()}
    with torch.no_grad():
        avg = latent_avg if latent_avg is not None else truncation_center(g_ema)
    out["latent_avg"] = avg.detach().to("cpu", torch.float32).reshape(-1).clone()
    out["args"] = {"size": g_ema.size, "latent": g_ema.style_dim, "n_mlp": g_ema.n_mlp,
                   "channel_multiplier": g_ema.channel_multiplier, **(args or {})}
    return out


# ------------------------------------------------------------------------------ one network
class SamplingNetwork(nn.Module):
    """A sampler as one module on the CPU in float32 (so the custom ops take their reference path,
    which is what a traced or exported graph can hold): ``forward(z) -> image`` (``input_is="z"``) or
    ``forward(wplus) -> image`` (``input_is="wplus"``); constant noise, truncation ``psi`` fixed.

    With ``input_is="z"``: w = mapping(z); w <- c + psi (w - c) towards the network's own centre;
    W+ = w repeated; a FreezeSG variant's first ``prefix_len`` entries come from the source's mapping
    (with the source's centre), exactly as :class:`~cartoon_stylegan.sampling.Sampler` draws them.
    """

    def __init__(self, sampler, input_is: str = "z"):
        super().__init__()
        from cartoon_stylegan.sampling import truncation_center

        if input_is not in ("z", "wplus"):
            raise ExportError(f"input_is must be z or wplus, got {input_is!r}")
        self.input_is = input_is
        self.G = copy.deepcopy(_plain(sampler.G)).to("cpu", torch.float32).eval().requires_grad_(False)
        self.psi = float(sampler.truncation)
        self.prefix_len = int(sampler.prefix_len)
        with torch.no_grad():
            self.register_buffer("center", truncation_center(_plain(sampler.G)).detach().to("cpu", torch.float32))
            self.source_style = None
            if self.prefix_len and input_is == "z":
                src = _plain(sampler.source)
                self.source_style = copy.deepcopy(src.style).to("cpu", torch.float32).eval().requires_grad_(False)
                self.register_buffer("source_center", truncation_center(src).detach().to("cpu", torch.float32))
        self.eval()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.G.style_dim,) if self.input_is == "z" else (self.G.n_latent, self.G.style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_is == "wplus":
            return self.G.synthesis(x, noise_mode="const")
        w = self.G.style(x)
        w = self.center + self.psi * (w - self.center)
        wplus = w[:, None, :].expand(-1, self.G.n_latent, -1)
        if self.source_style is not None:
            ws = self.source_style(x)
            ws = self.source_center + self.psi * (ws - self.source_center)
            k = self.prefix_len
            wplus = torch.cat([ws[:, None, :].expand(-1, k, -1), wplus[:, k:]], 1)
        return self.G.synthesis(wplus, noise_mode="const")

    def example(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch, *self.input_shape), generator=g)


def _check(what: str, got, want, tol: float) -> float:
    err = float((torch.as_tensor(got) - want).abs().max())
    if not err <= tol:
        raise ExportError(f"{what} differs from PyTorch by {err:.3g} (tolerance {tol})")
    return err


def export_torchscript(net: SamplingNetwork, path: str, tol: float = 1e-4) -> float:
    """Trace ``net`` to a TorchScript file (any batch size); returns the max difference to PyTorch on a
    batch of another size than the traced one."""
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        tmp = str(tmp)
        # the ops' padding arithmetic on Python ints is traced as constants: right, since every size but
        # the batch is fixed by the architecture (checked below on another batch size)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*is deprecated", category=FutureWarning)  # torch >= 2.9
        traced = torch.jit.trace(net, net.example(2), check_trace=False)
        traced.save(tmp)
        x = net.example(3, seed=1)
        err = _check("TorchScript", torch.jit.load(tmp)(x), net(x), tol)  # noqa: the load warns too (caught)
    return err


def export_onnx(net: SamplingNetwork, path: str, tol: float = 1e-4) -> float | None:
    """Export ``net`` to ONNX (torch's exporter, dynamic batch; input ``z`` or ``wplus``, output ``image``).
    Checked with onnxruntime when it is installed (returns the max difference), else None. Written in a
    temporary folder beside ``path`` and moved into place with any external-data file of the exporter."""
    import importlib.util
    import shutil
    import tempfile

    lacking = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if lacking:
        raise ExportError(f"ONNX export needs {' and '.join(lacking)}: pip install {' '.join(lacking)} "
                          "(or the project's [export] extra)")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmpdir = tempfile.mkdtemp(dir=folder, prefix=".onnx-export-")
    tmp = os.path.join(tmpdir, os.path.basename(path))
    try:
        try:
            with torch.no_grad():
                torch.onnx.export(net, (net.example(2),), tmp, dynamo=True, input_names=[net.input_is],
                                  output_names=["image"], verbose=False,
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
        except Exception as e:  # noqa: BLE001 -- one line for the user
            raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
        err = None
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            x = net.example(3, seed=1)
            with torch.no_grad():
                got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
                err = _check("ONNX (onnxruntime)", got, net(x), tol)
        for name in sorted(os.listdir(tmpdir), key=lambda n: n == os.path.basename(path)):  # the graph last
            os.replace(os.path.join(tmpdir, name), os.path.join(folder, name))
        return err
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
