"""Exponential moving average of generator weights, with a half-life in images (NVlabs style).

beta = 0.5 ** (batch_total / ema_nimg), ema_nimg = ema_kimg * 1000, optionally capped by
`rampup * images_seen` early in training (so the average does not remember the random
initialisation for long). Only the parameter/buffer names the EMA is given are touched:
frozen parameters are left alone, so they cannot drift.
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["EMA", "ema_beta"]


def ema_beta(batch_total: int, images_seen: int, ema_kimg: float, rampup: float | None) -> float:
    """Decay for one update after `images_seen` images (counted after this step)."""
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        ema_nimg = min(ema_nimg, images_seen * rampup)
    return 0.5 ** (batch_total / max(ema_nimg, 1e-8))


class EMA:
    """Keeps `ema_model` a moving average of a source model's named parameters.

    ema_model:   the module holding the average (G_ema); updated in place.
    param_names: parameters to average (the trainable ones); None = all parameters.
    buffer_names: buffers to copy verbatim; None = all buffers.
    ema_kimg:    half-life of the average in thousands of images.
    rampup:      if not None, the half-life is at most rampup * images seen.
    """

    def __init__(
        self,
        ema_model: torch.nn.Module,
        *,
        param_names: Iterable[str] | None = None,
        buffer_names: Iterable[str] | None = None,
        ema_kimg: float = 10.0,
        rampup: float | None = 0.05,
    ):
        if ema_kimg < 0:
            raise ValueError(f"ema_kimg must be >= 0, got {ema_kimg}")
        if rampup is not None and rampup < 0:
            raise ValueError(f"ema rampup must be >= 0 or None, got {rampup}")
        self.ema_model = ema_model
        params = dict(ema_model.named_parameters())
        buffers = dict(ema_model.named_buffers())
        self.param_names = sorted(params if param_names is None else param_names)
        self.buffer_names = sorted(buffers if buffer_names is None else buffer_names)
        unknown = [n for n in self.param_names if n not in params] + [n for n in self.buffer_names if n not in buffers]
        if unknown:
            raise KeyError(f"EMA: names not in the EMA model: {unknown[:8]}")
        self.ema_kimg = float(ema_kimg)
        self.rampup = rampup
        self.num_updates = 0  # number of update() calls so far (resume state)
        self.last_beta = 0.0  # decay used by the last update (for reporting)
        for p in ema_model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, *, batch_total: int, images_seen: int) -> float:
        """One EMA step from `model` (the trained, unwrapped one); returns the beta used."""
        beta = ema_beta(batch_total, images_seen, self.ema_kimg, self.rampup)
        src_p = dict(model.named_parameters())
        src_b = dict(model.named_buffers())
        dst_p = dict(self.ema_model.named_parameters())
        dst_b = dict(self.ema_model.named_buffers())
        if self.param_names:
            dsts = [dst_p[n] for n in self.param_names]
            srcs = [src_p[n].detach().to(dsts[0].dtype) for n in self.param_names]
            # ema = src + beta * (ema - src), i.e. lerp(src, ema, beta)
            torch._foreach_lerp_(dsts, srcs, 1.0 - beta)
        for n in self.buffer_names:
            dst_b[n].copy_(src_b[n])
        self.num_updates += 1
        self.last_beta = beta
        return beta

    def state_dict(self) -> dict:
        """Settings and counters; the averaged weights are G_ema's own state_dict."""
        return {
            "ema_kimg": self.ema_kimg,
            "rampup": self.rampup,
            "num_updates": self.num_updates,
            "last_beta": self.last_beta,
            "param_names": list(self.param_names),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state.get("param_names", self.param_names)) != list(self.param_names):
            raise ValueError("EMA state was saved for a different set of averaged parameters (freeze plan changed?)")
        self.ema_kimg = float(state["ema_kimg"])
        self.rampup = state["rampup"]
        self.num_updates = int(state["num_updates"])
        self.last_beta = float(state["last_beta"])
