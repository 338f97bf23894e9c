"""Projection: the W+ of the source generator that best reproduces an image (for "turn my photo into a cartoon").

No network is downloaded: the perceptual term compares the source *discriminator's* features (the
outputs of its convolution blocks, at every resolution) of the generated and the target image, next
to a pixel term. W+ starts at the truncation centre in every entry and is optimised with Adam under
rosinality's projector schedule (linear ramp-up, cosine ramp-down of the learning rate). The noise
inputs are held at their stored constants (``noise_mode="const"``), so they need no regulariser.
"""
from __future__ import annotations

import math
import threading
from typing import Callable

import torch
import torch.nn.functional as F

from cartoon_stylegan.sampling import truncation_center

__all__ = ["d_features", "project", "ProjectionCancelled"]


class ProjectionCancelled(Exception):
    """``project`` stopped because its ``cancel`` event was set (the message says at which step)."""


def d_features(D, img: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of D's convolution blocks (from-RGB, then each downsampling block)."""
    feats, x = [], img
    for block in D.convs:
        x = block(x)
        feats.append(x)
    return feats


def _lr(step: int, steps: int, lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    t = step / max(steps, 1)
    ramp = min(1.0, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / rampup) if rampup > 0 else lr * ramp


def project(G, D, target: torch.Tensor, *, steps: int = 200, lr: float = 0.1, pixel_weight: float = 1.0,
            feature_weight: float = 1.0, progress: Callable[[int, dict], None] | None = None,
            cancel: threading.Event | None = None):
    """W+ (N, n_latent, style_dim) of G for ``target`` (N, C, H, W) in [-1, 1], and the per-step history
    [{"step", "loss", "pixel_mse", "feature_mse"}]. G and D stay frozen.

    cancel: checked before every step; once set, :class:`ProjectionCancelled` is raised (the serve page's
        cancel button)."""
    if target.shape[-1] != G.size or target.shape[-2] != G.size:
        raise ValueError(f"project: target is {tuple(target.shape[-2:])}, the generator draws {G.size}x{G.size}")
    dev = next(G.parameters()).device
    target = target.to(dev, torch.float32)
    G, D = G.eval().requires_grad_(False), D.eval().requires_grad_(False)
    c = truncation_center(G).to(dev)
    wplus = c.view(1, 1, -1).repeat(target.shape[0], G.n_latent, 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([wplus], lr=lr, betas=(0.9, 0.999))
    with torch.no_grad():
        want = d_features(D, target)
    history = []
    for step in range(steps):
        if cancel is not None and cancel.is_set():
            raise ProjectionCancelled(f"cancelled at step {step} of {steps}")
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        img = G(wplus, input_is="wplus", noise_mode="const")
        pix = F.mse_loss(img, target)
        feat = sum(F.mse_loss(a, b) for a, b in zip(d_features(D, img), want)) / len(want)
        loss = pixel_weight * pix + feature_weight * feat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {"step": step, "loss": loss.item(), "pixel_mse": pix.item(), "feature_mse": feat.item()}
        history.append(rec)
        if progress is not None:
            progress(step, rec)
    return wplus.detach(), history

