"""Structure distance: does a fine-tuned generator keep the source's layout for the same latent?

For the same z and noise, the source and the variant each draw an image; the images are
reduced to a *structure descriptor*, and the distance between descriptors is compared
for matched pairs (source of z_i vs variant of z_i) and mismatched pairs (z_i vs z_j):

- ``matched`` / ``matched_std``: mean / std of the matched distances;
- ``mismatched``: mean over all i != j;
- ``ratio`` = matched / mismatched: scale-free, 1.0 = no structure kept, 0 = all of it;
- ``mean_rank``: for each variant image, the rank of its true source among the n
  sources by distance (1 = best, (n + 1) / 2 = chance); ``top1`` the fraction ranked first;
- ``separation``: (mismatched - matched) / pooled std of the two distance populations (d').

Descriptors (:data:`STRUCTURE_METHODS`, by short name):

``"lowpass16"`` (the first version): luminance, area-downsampled to 16x16, each image
    z-scored; distance = MSE.
``"edges+ssm"`` (the default), three changes:
    1. *Centre each set on its own mean descriptor* before z-scoring. Faces share a
       layout (centred head, background above, shoulders below), so uncentred
       descriptors of *any* two faces correlate and the mismatched baseline sits close
       to the matched one; subtracting each generator's mean image leaves the
       per-sample geometry (position, size, tilt, hair shape). It also removes a
       style-wide change of the variant (outlines, flat backgrounds) from the comparison.
    2. *Colour-invariant parts.* Luminance correlation breaks when the new style remaps
       colours (a light-on-dark region becomes dark-on-light: luminance flips sign and
       the "matched" distance becomes the largest). Two parts that only see where
       regions and boundaries are: the colour-edge magnitude (RGB gradient magnitude of
       the image low-passed to 32x32, pooled to 16x16: sign-free boundaries), and the
       self-similarity matrix of the 16x16 low-passed colours (pairwise colour distances
       between all positions, normalised by their mean: which positions share a colour,
       invariant to any recolouring that keeps regions distinct).
    3. Distance = mean over the parts of the MSE between z-scored vectors
       (= 2 (1 - Pearson r) per part; 0 identical, 2 unrelated, 4 inverted).

Measured on paired sets (mean rank of the true source / top-1 / separation d'):

=====================================================  ===================  ==================
set                                                    lowpass16            edges+ssm
=====================================================  ===================  ==================
a peer's 32 px grid, source vs 3-min fine-tune, n=32   5.7 / 0.34 / 1.1     1.6 / 0.69 / 2.8
  same, colours of the variant inverted                27.3 / 0.00 / -1.1   1.6 / 0.69 / 2.8
synthetic faces vs cartoons, same factors, 32 px, 256  17.7 / 0.47 / 1.9    1.2 / 0.91 / 4.2
synthetic faces vs cartoons, same factors, 64 px, 256  9.4 / 0.55 / 2.1     1.02 / 0.99 / 4.6
=====================================================  ===================  ==================

Unpaired sets give ratio ~1.0 with both. ``"lowpass16-centred"`` (step 1 only) is as good
as the default while colours carry over (1.4 / 0.81 on the peer grid) but collapses like
the first version when the style inverts them.

Centring needs a batch: use n >= 32 (64+ for stable figures).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from cartoon_stylegan.sampling import as_sampler

Part = Callable[[torch.Tensor], torch.Tensor]   # (N, 3, H, W) in [0, 1] -> (N, D)
_CHUNK = 256                                     # images per descriptor call (bounds the N x 256 x 256 SSM)


# ---------------------------------------------------------------------------------- descriptor parts
def _resize_area(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area (box) low-pass to size x size; bilinear up-sampling if the image is smaller."""
    if x.shape[-1] >= size and x.shape[-2] >= size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def luminance_lowpass(x: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Rec. 601 luminance, area-downsampled to size x size, flattened."""
    lum = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return _resize_area(lum, size).flatten(1)


def colour_edges(x: torch.Tensor, work: int = 32, size: int = 16) -> torch.Tensor:
    """RGB gradient magnitude of the image low-passed to ``work`` px, pooled to ``size`` px."""
    y = _resize_area(x, work)
    gx = F.pad(y[..., :, 1:] - y[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1))
    mag = (gx.pow(2) + gy.pow(2)).sum(1, keepdim=True).sqrt()
    return _resize_area(mag, size).flatten(1)


def self_similarity(x: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Upper triangle of the matrix of colour distances between the size x size low-passed
    positions, each image's matrix divided by its mean (contrast-free)."""
    p = _resize_area(x, size).flatten(2).transpose(1, 2)          # N, P, 3
    p = p - p.mean(1, keepdim=True)
    d = torch.cdist(p, p)                                          # N, P, P
    d = d / (d.mean((1, 2), keepdim=True) + 1e-8)
    iu = torch.triu_indices(d.shape[1], d.shape[1], 1, device=d.device)
    return d[:, iu[0], iu[1]]


@dataclass(frozen=True)
class StructureMethod:
    parts: tuple[Part, ...]
    center: bool
    doc: str


STRUCTURE_METHODS: dict[str, StructureMethod] = {
    "edges+ssm": StructureMethod((colour_edges, self_similarity), True,
                                 "batch-centred colour edges + colour self-similarity (default)"),
    "lowpass16": StructureMethod((luminance_lowpass,), False,
                                 "luminance at 16x16, per-image z-score, MSE (first version)"),
    "lowpass16-centred": StructureMethod((luminance_lowpass,), True,
                                         "luminance at 16x16, batch-centred"),
}
"""Structure descriptors by short name."""


# ---------------------------------------------------------------------------------- scores
def _as_unit(imgs: torch.Tensor) -> torch.Tensor:
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"structure: expected (N, 3, H, W) images, got {tuple(imgs.shape)}")
    if imgs.dtype == torch.uint8:
        return imgs.float() / 255
    return (imgs.detach().float().clamp(-1, 1) + 1) / 2


def _zscore(f: torch.Tensor) -> torch.Tensor:
    f = f - f.mean(1, keepdim=True)
    return f / (f.std(1, unbiased=False, keepdim=True) + 1e-8)


def structure_descriptors(imgs: torch.Tensor, method: str = "edges+ssm") -> list[torch.Tensor]:
    """Per-part descriptors (N, D_p) of a set of images (centred on the set if the method says so,
    then z-scored per image). ``imgs``: uint8, or float in [-1, 1]."""
    m = _method(method)
    x = _as_unit(imgs)
    out = []
    for part in m.parts:
        f = torch.cat([part(x[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])
        if m.center:
            f = f - f.mean(0, keepdim=True)
        out.append(_zscore(f))
    return out


def structure_distance_matrix(src: torch.Tensor, tgt: torch.Tensor, method: str = "edges+ssm") -> torch.Tensor:
    """D[i, j] = distance between source image i and variant image j (n x n, float32)."""
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"structure: {src.shape[0]} source images but {tgt.shape[0]} variant images")
    fa, fb = structure_descriptors(src, method), structure_descriptors(tgt, method)
    d = torch.zeros(src.shape[0], tgt.shape[0], dtype=fa[0].dtype, device=fa[0].device)
    for a, b in zip(fa, fb):
        d += (2 - 2 * (a @ b.T) / a.shape[1]).clamp_min(0)   # = MSE of unit-variance, zero-mean vectors
    return d / len(fa)


def structure_scores(src: torch.Tensor, tgt: torch.Tensor, *, method: str = "edges+ssm") -> dict:
    """Scores of paired image sets: ``src[i]`` and ``tgt[i]`` come from the same latent and noise.

    Returns ``{"matched", "matched_std", "mismatched", "ratio", "mean_rank", "top1", "separation",
    "n", "method", "per_latent"}``; ``per_latent``: lists of n values in latent order, whose means
    are the scores of the same name: ``matched`` (distance of pair i), ``ratio`` (that distance over
    the mean mismatched distance) and ``mean_rank`` (the rank of pair i's source).
    """
    n = src.shape[0]
    if n < 4:
        raise ValueError(f"structure: need at least 4 pairs (the mismatched baseline and the centring "
                         f"use the batch), got {n}")
    d = structure_distance_matrix(src, tgt, method)
    diag = d.diagonal()
    off = d[~torch.eye(n, dtype=torch.bool, device=d.device)]
    rank = (d < diag[None, :]).sum(0).double() + 1          # column j: variant j vs all sources
    mismatched = off.mean().item()
    pooled = ((diag.var() + off.var()) / 2).sqrt().item()
    return {
        "matched": diag.mean().item(),
        "matched_std": diag.std().item(),
        "mismatched": mismatched,
        "ratio": diag.mean().item() / max(mismatched, 1e-12),
        "mean_rank": rank.mean().item(),
        "top1": (rank == 1).double().mean().item(),
        "separation": (mismatched - diag.mean().item()) / max(pooled, 1e-12),
        "n": int(n),
        "method": method,
        "per_latent": {"matched": diag.double().tolist(),
                       "ratio": (diag.double() / max(mismatched, 1e-12)).tolist(),
                       "mean_rank": rank.tolist()},
    }


# ---------------------------------------------------------------------------------- generators
@torch.no_grad()
def sample_pairs(src, tgt, *, n: int, seed: int = 0, batch: int = 32, device=None, noise_mode: str = "const"):
    """Images of both samplers for the same z and the same noise: (src uint8, tgt uint8), (n, 3, H, W).

    src, tgt: :class:`cartoon_stylegan.sampling.Sampler` (a variant's, with its truncation and
    FreezeSG prefix) or bare Generators; each runs on its generator's device. ``device``
    (optional): the kind of device both generators must be on (a check).
    noise_mode ``"const"``: both use the *source's* stored noise buffers; ``"random"``: one
    seeded draw per batch, shared; ``"none"``: no noise.
    """
    from cartoon_stylegan.imageutil import to_uint8

    src, tgt = as_sampler(src), as_sampler(tgt)
    G_src, G_tgt = src.G, tgt.G
    if G_src.style_dim != G_tgt.style_dim or G_src.num_layers != G_tgt.num_layers:
        raise ValueError("structure: the generators must share style_dim and resolution "
                         f"(got {G_src.config} vs {G_tgt.config})")
    if noise_mode not in ("const", "random", "none"):
        raise ValueError(f"structure: noise_mode must be const|random|none, got {noise_mode!r}")
    if device is not None and {src.device.type, tgt.device.type} != {torch.device(device).type}:
        raise ValueError(f"structure: device={device} but the generators are on {src.device} and {tgt.device}")
    gen = torch.Generator().manual_seed(int(seed))
    z_all = torch.randn(n, G_src.style_dim, generator=gen)
    const = [getattr(G_src.noises, f"noise_{i}") for i in range(G_src.num_layers)]
    out_s, out_t = [], []
    for start in range(0, n, batch):
        z = z_all[start:start + batch]
        if noise_mode == "const":
            noise = const
        elif noise_mode == "random":
            noise = [torch.randn(z.shape[0], 1, r, r, generator=gen)
                     for r in map(G_src.noise_resolution, range(G_src.num_layers))]
        else:
            noise = None
        mode = "none" if noise is None else "const"
        for sampler, out in ((src, out_s), (tgt, out_t)):
            nz = None if noise is None else [t.to(sampler.device) for t in noise]
            out.append(to_uint8(sampler(z, noise_mode=mode, noise=nz)).cpu())
    return torch.cat(out_s), torch.cat(out_t)


def structure_by_resolution(src: torch.Tensor, tgt: torch.Tensor, resolutions: Sequence[int]) -> dict:
    """The structure distance at each resolution: batch-centred luminance area-downsampled to R x R
    (``lowpass<R>-centred``), for paired image sets as :func:`structure_scores` takes them.

    {R: {"ratio", "mean_rank"}}. Freezing the blocks up to some resolution makes the low resolutions
    agree by construction; the higher ones -- the full resolution is the image as the user sees it --
    say whether the variant's pictures still show the source's face (its rank among the others).
    """
    out = {}
    for r in resolutions:
        s = structure_scores(src, tgt, method=f"lowpass{int(r)}-centred")
        out[int(r)] = {"ratio": s["ratio"], "mean_rank": s["mean_rank"]}
    return out


def structure_distance(src, tgt, *, n: int = 256, seed: int = 0, batch: int = 32, device=None,
                       noise_mode: str = "const", method: str = "edges+ssm",
                       resolutions: Sequence[int] = ()) -> dict:
    """How much of the source's structure the variant keeps, for the same latents and noise.

    src, tgt: Samplers (or bare Generators), see :func:`sample_pairs`.
    Returns ``{"matched", "matched_std", "mismatched", "ratio", "mean_rank", "top1", "separation",
    "n", "method", "per_latent"}`` (see the module docstring and :func:`structure_scores`). ``ratio``
    ~ 1 for unrelated generators.
    """
    _method(method)
    a, b = sample_pairs(src, tgt, n=n, seed=seed, batch=batch, device=device, noise_mode=noise_mode)
    scores = structure_scores(a, b, method=method)
    if resolutions:  # the same image pairs, at each resolution (``by_resolution``)
        scores["by_resolution"] = structure_by_resolution(a, b, resolutions)
    return scores


def _method(name: str) -> StructureMethod:
    m = re.fullmatch(r"lowpass(\d+)-centred", name)
    if m and name not in STRUCTURE_METHODS and 1 <= int(m.group(1)) <= 1024:  # any resolution, as the named one
        size = int(m.group(1))
        return StructureMethod((lambda x, size=size: luminance_lowpass(x, size),), True,
                               f"luminance at {size}x{size}, batch-centred")
    try:
        return STRUCTURE_METHODS[name]
    except KeyError:
        raise ValueError(f"structure: unknown method {name!r}; known: {sorted(STRUCTURE_METHODS)}") from None


__all__: Sequence[str] = ("STRUCTURE_METHODS", "structure_distance", "structure_scores", "structure_descriptors",
                          "structure_distance_matrix", "sample_pairs", "colour_edges", "self_similarity",
                          "luminance_lowpass", "structure_by_resolution")
