"""Edits of a trained generator: closed-form factorisation (SeFa) and style mixing.

SeFa (Shen & Zhou, "Closed-Form Factorization of Latent Semantics in GANs", CVPR 2021): the
style-modulation layers map w to per-channel scales, ``s = A w + b``; the directions n that change
those scales most, ``argmax |A n|`` with ``|n| = 1``, are the top eigenvectors of ``A^T A``, A the
modulation weights of the chosen layers stacked (here: every synthesis layer's, ToRGB left out, as
rosinality's ``closed_form_factorization.py`` does). Moving w along n by ``strength`` edits the image.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["modulation_weights", "sefa_directions", "sefa_edit", "style_mix"]


def modulation_weights(G, include_torgb: bool = False) -> torch.Tensor:
    """The style-modulation weights of G's synthesis layers, stacked: (sum of out channels, style_dim)."""
    mats = [m.weight for name, m in G.named_modules()
            if name.endswith("modulation") and (include_torgb or "to_rgb" not in name)]
    if not mats:
        raise ValueError("the generator has no style-modulation layers")
    return torch.cat([w.detach().reshape(w.shape[0], -1) for w in mats], 0)


def sefa_directions(G, k: int = 8, include_torgb: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues (k,), directions (k, style_dim)): the top-k eigenvectors of A^T A, unit length,
    largest first, each signed so that its largest-magnitude entry is positive (a stable sign)."""
    A = modulation_weights(G, include_torgb).double().cpu()
    vals, vecs = torch.linalg.eigh(A.T @ A)  # ascending
    k = max(1, min(int(k), vals.numel()))
    vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k].T.contiguous()
    sign = torch.sign(vecs.gather(1, vecs.abs().argmax(1, keepdim=True)))
    return vals.float(), (vecs * sign).float()


@torch.no_grad()
def sefa_edit(sampler, z: torch.Tensor, direction: torch.Tensor, strengths: Sequence[float]) -> torch.Tensor:
    """Images (len(strengths) * N, C, H, W): W+ of z moved by s * direction (every layer), s in strengths;
    strength-major order."""
    wplus = sampler.wplus(z)
    d = direction.to(wplus.device, wplus.dtype).view(1, 1, -1)
    out = [sampler.G(wplus + s * d, input_is="wplus", noise_mode="const") for s in strengths]
    return torch.cat(out)


@torch.no_grad()
def style_mix(sampler, z_rows: torch.Tensor, z_cols: torch.Tensor, crossover: int) -> torch.Tensor:
    """Images (R * C, ...): row r takes W+ entries [0, crossover) from z_rows[r] (coarse: pose, shape),
    the rest from z_cols[c] (fine: colour, texture)."""
    n = sampler.G.n_latent
    if not 1 <= int(crossover) < n:
        raise ValueError(f"crossover must be in [1, {n - 1}] (the W+ index where the column's styles start)")
    R, C = z_rows.shape[0], z_cols.shape[0]
    zr = z_rows.repeat_interleave(C, 0)
    zc = z_cols.repeat(R, 1)
    return sampler(zr, z2=zc, crossover=int(crossover), noise_mode="const")
