"""How far a fine-tuned variant's styles moved from the source's: the readout that tells FreezeG from
FreezeSG from FreezeG-with-a-trainable-mapping.

For the same latents z, the W+ a variant's layers receive (its mapping's, or for FreezeSG the
source's on the injected prefix) against the source's: per W+ entry, ``||W+_v(z)[i] - W+_s(z)[i]|| /
||W+_s(z)[i]||``, averaged over z. The ``frozen`` figure is the mean over the entries of the layers a
FreezeG/FreezeSG variant freezes (``up_to`` pixels): FreezeG (mapping frozen) and FreezeSG (source
styles injected) give exactly 0 there, FreezeG with a trainable mapping does not -- its frozen blocks
receive drifting styles, which is what the paper argues against.
"""
from __future__ import annotations

import torch

from cartoon_stylegan.sampling import Sampler, seed_latents

__all__ = ["style_drift"]


@torch.no_grad()
def style_drift(source: Sampler, variant: Sampler, *, up_to: int | None = None, n: int = 256,
                seed: int = 0) -> dict:
    """{"mapping": mean relative drift over all W+ entries, "frozen": over the entries of layers <= ``up_to``
    px (absent when ``up_to`` is None), "per_entry": [...]} for ``n`` latents of ``seed``; no truncation,
    no mixing (the styles themselves)."""
    src = source.replace(truncation=1.0)
    var = variant.replace(truncation=1.0)
    z = seed_latents(range(seed, seed + n), src.style_dim, device=src.device)
    ws = src.wplus(z).float()
    wv = var.wplus(z.to(var.device)).float().to(ws.device)
    rel = (wv - ws).norm(dim=2) / ws.norm(dim=2).clamp_min(1e-12)  # (n, n_latent)
    per_entry = rel.mean(0)
    out = {"mapping": float(per_entry.mean()), "per_entry": [float(v) for v in per_entry]}
    if up_to is not None:
        k = source.G.n_wplus_up_to(up_to)
        out["frozen"] = float(per_entry[:k].mean()) if k else 0.0
    return out
