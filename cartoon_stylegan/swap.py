"""Layer swapping between a source generator and its fine-tuned variant.

Two kinds, both functions of two generators (no flags on ``forward``):

- :func:`weight_swap` (Pinkney & Adler's "toonify" layer swapping): a new generator whose
  synthesis layers at and below resolution ``res`` carry the source's weights and those
  above carry the target's; the mapping network comes from the side named by
  ``mapping``. ``blend_width > 0`` blends the weights smoothly instead: the source's
  share at resolution ``r`` is ``sigmoid((log2(res) + 0.5 - log2(r)) / blend_width)``
  (-> the hard swap as ``blend_width -> 0``).
- :func:`activation_swap` (what the Cartoon-StyleGAN reference code does): the feature map
  at ``res`` is the source's (its synthesis up to and including that block); the RGB path
  is the target's own (its skip image up to the block below, and its ToRGB of ``res``
  applied to the swapped features), and the target's blocks above continue from there.

:func:`swap_grid` draws one column per seed and one row per generator: source, target,
then the swap at each resolution, with row labels.

Which parameter belongs to which resolution is :meth:`Generator.layer_resolution`'s
answer (parsed by dotted components, so ``convs.1`` never matches ``convs.10``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from cartoon_stylegan.sampling import Sampler, as_sampler, device_of, seed_latents

MAPPING_SIDES = ("source", "target")
SWAP_KINDS = ("weight", "activation")


def _check_pair(G_src, G_tgt) -> None:
    if G_src.config != G_tgt.config:
        raise ValueError(f"swap: the generators must share one architecture; "
                         f"source {G_src.config} vs target {G_tgt.config}")


def _check_res(G, res: int) -> int:
    if not isinstance(res, (int, np.integer)) or res < 1 or (res & (res - 1)) or res > G.size:
        raise ValueError(f"swap: res must be a power of two in [1, {G.size}] "
                         f"(below 4 = nothing from the source's synthesis), got {res!r}")
    return int(res)


def source_share(layer_res: int, res: int, blend_width: float = 0.0) -> float:
    """Fraction of the source's weights for a layer at ``layer_res`` when swapping at ``res``."""
    if blend_width <= 0:
        return 1.0 if layer_res <= res else 0.0
    t = (math.log2(res) + 0.5 - math.log2(layer_res)) / blend_width
    return 1.0 / (1.0 + math.exp(-t)) if t > -60 else 0.0


def weight_swap(G_src, G_tgt, res: int, mapping: str = "source", blend_width: float = 0.0):
    """A new generator: synthesis layers at resolutions <= ``res`` from ``G_src``, the rest
    from ``G_tgt``; mapping network (``style.*``) from the ``mapping`` side.

    ``res`` = the output size gives the source's synthesis; ``res`` < 4 (e.g. 2) gives the
    target's (with ``mapping="target"`` that is the target generator itself).
    ``blend_width > 0``: float weights are mixed with :func:`source_share`; noise buffers and
    non-float tensors still take the side with the larger share. The new generator lives on
    ``G_tgt``'s device, in ``G_tgt``'s train/eval mode, and shares no storage with either input.
    """
    _check_pair(G_src, G_tgt)
    res = _check_res(G_src, res)
    if mapping not in MAPPING_SIDES:
        raise ValueError(f"weight_swap: mapping must be one of {MAPPING_SIDES}, got {mapping!r}")
    if blend_width < 0:
        raise ValueError(f"weight_swap: blend_width must be >= 0, got {blend_width}")
    sd_s, sd_t = G_src.state_dict(), G_tgt.state_dict()
    if sd_s.keys() != sd_t.keys():
        raise ValueError("weight_swap: the generators' state dicts have different keys")
    out = {}
    for name, t_val in sd_t.items():
        s_val = sd_s[name]
        r = G_tgt.layer_resolution(name)
        share = (1.0 if mapping == "source" else 0.0) if r == "mapping" else source_share(r, res, blend_width)
        hard = name.startswith("noises.") or not torch.is_floating_point(t_val)
        if share in (0.0, 1.0) or hard:
            out[name] = (s_val if share >= 0.5 else t_val).detach().clone()
        else:
            out[name] = torch.lerp(t_val.detach(), s_val.detach().to(t_val), share)
    new = type(G_tgt).from_config(G_tgt.config)
    new.load_state_dict(out, strict=True)
    p = next(G_tgt.parameters())
    return new.to(device=p.device, dtype=p.dtype).train(G_tgt.training)


def activation_swap(G_src, G_tgt, wplus: torch.Tensor, res: int, noise=None, noise_mode: str = "const"):
    """The target's image with its feature map at ``res`` replaced by the source's.

    As the reference code (its ``swap_layer_tensor``): the source runs up to and including the
    block at ``res``; the target's RGB skip path is kept -- its own skip up to the block below
    ``res``, then its ToRGB at ``res`` applied to the source's features -- and its blocks above
    ``res`` continue from the swapped features. ``wplus`` feeds both. ``res`` < 4 gives the
    target's image.
    """
    _check_pair(G_src, G_tgt)
    res = _check_res(G_src, res)
    if res < 4:
        return G_tgt.synthesis(wplus, noise_mode=noise_mode, noise=noise)
    _, src = G_src.synthesis(wplus, noise_mode=noise_mode, noise=noise, stop_res=res)
    _, x_src, _ = src["state"]
    if res == 4:
        skip = G_tgt.to_rgb1(x_src, wplus[:, 1])
    else:
        _, below = G_tgt.synthesis(wplus, noise_mode=noise_mode, noise=noise, stop_res=res // 2)
        j = int(math.log2(res)) - 3  # the block index of ``res`` (as Generator.synthesis counts)
        skip = G_tgt.to_rgbs[j](x_src, wplus[:, 2 * j + 3], below["state"][2])
    return G_tgt.synthesis(wplus, noise_mode=noise_mode, noise=noise, start=(res, x_src, skip))


# ---------------------------------------------------------------------------------- grid
def row_labels(resolutions: Sequence[int], kind: str) -> list[str]:
    """Labels of :func:`swap_grid`'s rows."""
    if kind == "activation":  # the source's features at r, the target's RGB path and blocks above
        return ["source", "target"] + [f"act: src feat @{r}px" for r in resolutions]
    return ["source", "target"] + [f"{kind}: src<={r}px" for r in resolutions]


@torch.no_grad()
def swap_grid(G_src, tgt, *, seeds: Sequence[int], resolutions: Sequence[int] | None = None,
              kind: str = "weight", truncation: float = 0.7, mapping: str = "source",
              noise_mode: str = "const", blend_width: float = 0.0,
              upscale: int | None = None, pad: int = 2) -> tuple[np.ndarray, list[str]]:
    """A labelled grid: one column per seed; rows source, target, then the swap at each ``r``.

    Args:
        G_src: the source generator.
        tgt: the variant's :class:`cartoon_stylegan.sampling.Sampler` (its FreezeSG prefix makes the
            target row as the variant was trained and is sampled), or a bare target Generator.
        seeds: z of column i is ``torch.randn(style_dim)`` under ``manual_seed(seeds[i])``.
        resolutions: swap points, rows in the given order; default every block, 4 .. size.
        kind: ``"weight"`` (:func:`weight_swap`) or ``"activation"`` (:func:`activation_swap`).
        truncation: for every row, towards each mapping network's own centre
            (:func:`cartoon_stylegan.sampling.truncation_center`); replaces the sampler's.
        mapping: which mapping network makes the swapped rows' W+ (``"source"`` as in
            toonify / FreezeSG). The source and target rows use their own samplers.
        noise_mode: ``"const"`` (each generator's stored noise), ``"random"`` (one seeded
            draw shared by every row) or ``"none"``.
        upscale: integer nearest-neighbour zoom of each tile; default ``max(1, 64 // size)``.

    Returns ``(uint8 HWC image, row labels)``; labels are drawn in a left margin.
    """
    from PIL import Image, ImageDraw

    from cartoon_stylegan.imageutil import to_uint8

    tgt = as_sampler(tgt, truncation=truncation)
    src = Sampler(G_src, truncation=truncation, center_n=tgt.center_n)
    G_tgt = tgt.G
    _check_pair(G_src, G_tgt)
    if kind not in SWAP_KINDS:
        raise ValueError(f"swap_grid: kind must be one of {SWAP_KINDS}, got {kind!r}")
    if mapping not in MAPPING_SIDES:
        raise ValueError(f"swap_grid: mapping must be one of {MAPPING_SIDES}, got {mapping!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("swap_grid: give at least one seed")
    size = G_src.size
    if resolutions is None:
        resolutions = [2 ** k for k in range(2, int(math.log2(size)) + 1)]
    resolutions = [_check_res(G_src, r) for r in resolutions]

    z = seed_latents(seeds, G_src.style_dim)
    noise, mode = None, noise_mode
    if noise_mode == "random":
        gen = torch.Generator().manual_seed(seeds[0])
        noise = [torch.randn(len(seeds), 1, r, r, generator=gen).to(device_of(G_src))
                 for r in map(G_src.noise_resolution, range(G_src.num_layers))]
        mode = "const"   # every layer's noise is given
    elif noise_mode not in ("const", "none"):
        raise ValueError(f"swap_grid: noise_mode must be const|random|none, got {noise_mode!r}")

    def run(G, wp):
        nz = None if noise is None else [t.to(device_of(G)) for t in noise]
        return G.synthesis(wp.to(device_of(G)), noise_mode=mode, noise=nz).cpu()

    rows = [run(G_src, src.wplus(z)), run(G_tgt, tgt.wplus(z))]
    wp = (src if mapping == "source" else tgt.replace(source=None, prefix_len=0)).wplus(z)
    for r in resolutions:
        if kind == "weight":
            rows.append(run(weight_swap(G_src, G_tgt, r, mapping=mapping, blend_width=blend_width), wp))
        else:
            nz = None if noise is None else [t.to(device_of(G_src)) for t in noise]
            rows.append(activation_swap(G_src, G_tgt, wp.to(device_of(G_src)), r, noise=nz,
                                        noise_mode=mode).cpu())
    labels = row_labels(resolutions, kind)

    tiles = to_uint8(torch.stack(rows))                              # R, C, 3, H, W
    k = upscale if upscale is not None else max(1, 64 // size)
    if k > 1:
        tiles = tiles.repeat_interleave(k, -1).repeat_interleave(k, -2)
    n_rows, n_cols, _, h, w = tiles.shape

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(math.ceil(probe.textlength(s))) for s in labels)
    margin = text_w + 2 * max(pad, 4)
    canvas = Image.new("RGB", (margin + n_cols * (w + pad) - pad, n_rows * (h + pad) - pad), "white")
    draw = ImageDraw.Draw(canvas)
    arr = tiles.permute(0, 1, 3, 4, 2).numpy()
    for i in range(n_rows):
        y = i * (h + pad)
        for j in range(n_cols):
            canvas.paste(Image.fromarray(arr[i, j]), (margin + j * (w + pad), y))
        top, bottom = draw.textbbox((0, 0), labels[i])[1::2]
        draw.text((max(pad, 4), y + (h - (bottom - top)) // 2 - top), labels[i], fill="black")
    return np.asarray(canvas).copy(), labels
