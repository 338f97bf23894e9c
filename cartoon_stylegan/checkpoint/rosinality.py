"""rosinality's stylegan2-pytorch checkpoints (``train.py``: ``{"g", "d", "g_ema", "g_optim", "d_optim",
"args"}``; ``convert_weight.py``: ``g_ema`` and ``latent_avg``), read with ``weights_only=True`` (the
only class allowed besides tensors and containers is ``argparse.Namespace``) into our networks, whose
parameter names are his; the architecture is inferred from the state dicts where ``args`` is absent."""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any, Mapping

import torch
from torch import nn

from cartoon_stylegan.checkpoint.native import build_network, load_file
from cartoon_stylegan.networks import Discriminator, Generator

def _load_rosinality(path: str | os.PathLike, map_location: Any) -> Any:
    allow = getattr(torch.serialization, "safe_globals", None)
    if allow is None:  # torch < 2.5
        raise RuntimeError("import_rosinality needs torch >= 2.5 (torch.serialization.safe_globals)")
    with allow([argparse.Namespace]):
        return load_file(path, map_location)


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.fullmatch(k))})


def infer_multiplier(widths: dict[int, int], channel_max: int, size: int, what: str) -> int:
    """channel_multiplier from widths at resolution -> channels (width = min(cmax, 16384*cm // res))."""
    below = {r: c for r, c in widths.items() if c < channel_max}
    if not below:                  # every width is capped: any cm large enough gives the same network
        need = math.ceil(channel_max * size / 16384)
        return max(2, need)
    r, c = min(below.items())
    cm = round(c * r / 16384)
    if cm < 1:
        raise ValueError(f"{what}: cannot infer channel_multiplier from width {c} at {r} px")
    return cm


def infer_generator_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Generator config from the tensor shapes of a rosinality generator state dict.

    size from the number of ``to_rgbs``, style_dim from ``style.1.weight``, n_mlp from
    the ``style.N.weight`` count, channel_max from the 4 px width and
    channel_multiplier from the first width below the cap. lr_mlp and blur_kernel
    leave no trace in shapes: rosinality's defaults (0.01, [1, 3, 3, 1]).
    """
    try:
        n_rgb = len(_indices(state, r"to_rgbs\.(\d+)\.bias"))
        size = 2 ** (n_rgb + 2)
        style_dim = int(state["style.1.weight"].shape[1])
        n_mlp = len(_indices(state, r"style\.(\d+)\.weight"))
        channel_max = int(state["input.input"].shape[1])
        widths = {4: channel_max}
        widths.update({2 ** (j + 3): int(state[f"to_rgbs.{j}.conv.weight"].shape[2]) for j in range(n_rgb)})
    except KeyError as e:
        raise ValueError(f"not a rosinality generator state dict (no {e.args[0]!r})") from None
    cm = infer_multiplier(widths, channel_max, size, "generator")
    return {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": cm,
            "blur_kernel": [1.0, 3.0, 3.0, 1.0], "lr_mlp": 0.01, "channel_max": channel_max}


def infer_discriminator_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Discriminator config from the tensor shapes of a rosinality discriminator state dict."""
    try:
        n_convs = len(_indices(state, r"convs\.(\d+)\..*"))
        size = 2 ** (n_convs + 1)
        channel_max = int(state["final_linear.1.weight"].shape[1])
        widths = {size: int(state["convs.0.0.weight"].shape[0])}
        widths.update({size >> i: int(state[f"convs.{i}.conv2.1.weight"].shape[0]) for i in range(1, n_convs)})
    except KeyError as e:
        raise ValueError(f"not a rosinality discriminator state dict (no {e.args[0]!r})") from None
    cm = infer_multiplier(widths, channel_max, size, "discriminator")
    return {"size": size, "channel_multiplier": cm, "blur_kernel": [1.0, 3.0, 3.0, 1.0],
            "channel_max": channel_max}


def import_rosinality(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Build modules from a rosinality (or Cartoon-StyleGAN) checkpoint -> {"g", "d", "g_ema"}.

    The architecture comes from the file's ``args`` (size, latent, n_mlp,
    channel_multiplier) where present, else from the tensor shapes (files from his
    ``convert_weight.py`` have no args); channel_max is always read from the shapes.
    Loading is strict; a file whose tensors do not fit raises :class:`CheckpointMismatch`.
    Entries absent from the file are None. A ``latent_avg`` in the file (his convert_weight.py
    writes the TF model's ``dlatent_avg``) becomes g_ema's truncation centre and ``out["latent_avg"]``.
    """
    ck = _load_rosinality(path, map_location)
    if not isinstance(ck, dict) or not any(ck.get(k) is not None for k in ("g", "d", "g_ema")):
        keys = sorted(ck) if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{os.fspath(path)} has none of 'g', 'd', 'g_ema' (found {keys})")
    args = ck.get("args")
    argd = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}
    out: dict[str, nn.Module | None] = {"g": None, "d": None, "g_ema": None}
    for key in ("g", "g_ema"):
        if ck.get(key) is None:
            continue
        state = _strip_module_prefix(ck[key])
        cfg = infer_generator_config(state)
        for ours, his in (("size", "size"), ("style_dim", "latent"), ("n_mlp", "n_mlp"),
                          ("channel_multiplier", "channel_multiplier")):
            if argd.get(his) is not None:
                cfg[ours] = int(argd[his])
        out[key] = build_network(Generator, cfg, state, f"{os.fspath(path)}:{key}")
    avg = ck.get("latent_avg")
    out["latent_avg"] = None
    if isinstance(avg, torch.Tensor) and out["g_ema"] is not None and avg.numel() == out["g_ema"].style_dim:
        from cartoon_stylegan.sampling import set_truncation_center

        out["latent_avg"] = avg.detach().float().reshape(1, -1)
        set_truncation_center(out["g_ema"], out["latent_avg"])  # convert_weight.py's dlatent_avg
    if ck.get("d") is not None:
        state = _strip_module_prefix(ck["d"])
        cfg = infer_discriminator_config(state)
        for name in ("size", "channel_multiplier"):
            if argd.get(name) is not None:
                cfg[name] = int(argd[name])
        out["d"] = build_network(Discriminator, cfg, state, f"{os.fspath(path)}:d")
    return out
