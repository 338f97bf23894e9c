"""Adaptive discriminator augmentation (Karras et al. 2020, "Training GANs with limited data").

`AugmentPipe` applies, each with probability p (times a per-transform multiplier), a
chain of invertible, differentiable transforms to a batch of images:

  pixel blitting   x-flip, 90-degree rotations, integer translation
  geometric        isotropic scaling, arbitrary rotation (before and after) anisotropic
                   scaling, fractional translation
  colour           brightness, contrast, luma flip, hue rotation, saturation

Geometric transforms are composed into one 3x3 matrix per sample and executed once:
reflect-pad, 2x upsample with a wavelet low-pass filter (`ops.upsample2d`), bilinear
warp (`grid_sample`), 2x downsample with the same filter (`ops.downsample2d`) and crop.
Colour transforms are one 4x4 matrix per sample. All random draws come from the
`generator` passed to forward (deterministic training); p == 0 returns the input as is.

`AdaptiveAugment` tunes p from the sign of D's outputs on reals: r_t = E[sign(D(x))]
over the last `interval` steps; p += sign(r_t - target) * images / (ada_kimg * 1000),
clamped to [0, 1].
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cartoon_stylegan import ops

__all__ = ["AugmentPipe", "AdaptiveAugment", "AUGMENT_PRESETS", "make_augment_pipe", "translate2d"]

# Orthogonal low-pass filter of the geometric pipeline (Daubechies symlet, 6 vanishing moments).
_SYM6 = [
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
]

# Presets (short names, as in the ADA paper): which transform groups are on.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "blit": dict(xflip=1, rotate90=1, xint=1),
    "geom": dict(scale=1, rotate=1, aniso=1, xfrac=1),
    "color": dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "bg": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    "bgc": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
}


def make_augment_pipe(preset: str = "bgc", **overrides) -> "AugmentPipe":
    """AugmentPipe from a preset name (see AUGMENT_PRESETS) plus keyword overrides."""
    if preset not in AUGMENT_PRESETS:
        raise KeyError(f"unknown augment preset {preset!r}; known: {sorted(AUGMENT_PRESETS)}")
    zero = {k: 0 for k in AUGMENT_PRESETS["bgc"]}
    return AugmentPipe(**{**zero, **AUGMENT_PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------- matrices
# Batched homogeneous matrices, built from per-sample parameter vectors of shape (N,).

def _mat(rows, like: torch.Tensor) -> torch.Tensor:
    """rows: nested lists of (N,) tensors or numbers -> (N, R, C)."""
    n = like.shape[0]
    out = [[e if torch.is_tensor(e) else torch.full((n,), float(e), dtype=like.dtype, device=like.device)
            for e in row] for row in rows]
    return torch.stack([torch.stack(r, dim=-1) for r in out], dim=-2)


def translate2d(tx, ty, like):
    """Batched 3x3 homogeneous 2-D translation matrices (N, 3, 3) for per-sample shifts tx, ty."""
    return _mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]], like)


def _scale2d(sx, sy, like):
    return _mat([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def _rotate2d(theta, like):
    c, s = torch.cos(theta), torch.sin(theta)
    return _mat([[c, -s, 0], [s, c, 0], [0, 0, 1]], like)


def _translate3d(t, like):
    return _mat([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], like)


def _scale3d(s, like):
    return _mat([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], like)


def _rotate3d(axis: torch.Tensor, theta: torch.Tensor, like):
    """Rotation by theta (N,) around the unit axis (3,)."""
    x, y, z = (float(a) for a in axis[:3])
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _mat([
        [x * x * cc + c, x * y * cc - z * s, x * z * cc + y * s, 0],
        [y * x * cc + z * s, y * y * cc + c, y * z * cc - x * s, 0],
        [z * x * cc - y * s, z * y * cc + x * s, z * z * cc + c, 0],
        [0, 0, 0, 1],
    ], like)


class AugmentPipe(torch.nn.Module):
    """Differentiable augmentation of NCHW images in [-1, 1]; `p` scales every probability.

    Each `<name>` argument is the probability multiplier of one transform (0 = off);
    the `*_std` / `*_max` arguments set their ranges (fractions of the image size, log2
    standard deviations, or fractions of a full turn), defaults as in the ADA paper.
    """

    def __init__(
        self,
        xflip=1.0, rotate90=1.0, xint=1.0, xint_max=0.125,
        scale=1.0, rotate=1.0, aniso=1.0, xfrac=1.0,
        scale_std=0.2, rotate_max=1.0, aniso_std=0.2, xfrac_std=0.125,
        brightness=1.0, contrast=1.0, lumaflip=1.0, hue=1.0, saturation=1.0,
        brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0,
        p: float = 0.0,
    ):
        super().__init__()
        self.p = float(p)  # overall probability multiplier (a plain float: tuned on the host)
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        # Normalised to unit DC gain (upsample2d/downsample2d then keep the signal level).
        self.register_buffer("filter", ops.setup_filter(_SYM6), persistent=False)

    # -- random helpers: every draw goes through the caller's generator -------------------
    @staticmethod
    def _rand(n, gen, device, *shape):
        return torch.rand((n, *shape), generator=gen, device=device)

    @staticmethod
    def _randn(n, gen, device, *shape):
        return torch.randn((n, *shape), generator=gen, device=device)

    def _gate(self, mult, n, gen, device):
        """Boolean (N,) mask: apply this transform to the sample with prob mult * p."""
        return self._rand(n, gen, device) < mult * self.p

    # -- the pipeline --------------------------------------------------------------------
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"AugmentPipe expects (N, 1|3, H, W) images, got {tuple(images.shape)}")
        if self.p <= 0:
            return images
        n, c, h, w = images.shape
        dev, gen = images.device, generator
        f32 = torch.zeros(n, device=dev)  # template for matrix building (float32)

        # Geometric part: G_inv maps output pixel coordinates (centred) to input ones.
        g_inv = torch.eye(3, device=dev).expand(n, 3, 3)
        geometric = False
        if self.xflip > 0:
            i = torch.floor(self._rand(n, gen, dev) * 2)
            i = torch.where(self._gate(self.xflip, n, gen, dev), i, torch.zeros_like(i))
            g_inv = g_inv @ _scale2d(1 - 2 * i, 1, f32)
            geometric = True
        if self.rotate90 > 0:
            i = torch.floor(self._rand(n, gen, dev) * 4)
            i = torch.where(self._gate(self.rotate90, n, gen, dev), i, torch.zeros_like(i))
            g_inv = g_inv @ _rotate2d(math.pi / 2 * i, f32)
            geometric = True
        if self.xint > 0:
            t = (self._rand(n, gen, dev, 2) * 2 - 1) * self.xint_max
            t = torch.where(self._gate(self.xint, n, gen, dev)[:, None], t, torch.zeros_like(t))
            g_inv = g_inv @ translate2d(-torch.round(t[:, 0] * w), -torch.round(t[:, 1] * h), f32)
            geometric = True
        if self.scale > 0:
            s = torch.exp2(self._randn(n, gen, dev) * self.scale_std)
            s = torch.where(self._gate(self.scale, n, gen, dev), s, torch.ones_like(s))
            g_inv = g_inv @ _scale2d(1 / s, 1 / s, f32)
            geometric = True
        # Rotation happens before and after the anisotropic scaling, each with p_rot such
        # that P(at least one) = rotate * p.
        p_rot = 1 - math.sqrt(min(max(1 - self.rotate * self.p, 0.0), 1.0))
        if self.rotate > 0:
            theta = (self._rand(n, gen, dev) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(self._rand(n, gen, dev) < p_rot, theta, torch.zeros_like(theta))
            g_inv = g_inv @ _rotate2d(-theta, f32)
            geometric = True
        if self.aniso > 0:
            s = torch.exp2(self._randn(n, gen, dev) * self.aniso_std)
            s = torch.where(self._gate(self.aniso, n, gen, dev), s, torch.ones_like(s))
            g_inv = g_inv @ _scale2d(1 / s, s, f32)
            geometric = True
        if self.rotate > 0:
            theta = (self._rand(n, gen, dev) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(self._rand(n, gen, dev) < p_rot, theta, torch.zeros_like(theta))
            g_inv = g_inv @ _rotate2d(-theta, f32)
        if self.xfrac > 0:
            t = self._randn(n, gen, dev, 2) * self.xfrac_std
            t = torch.where(self._gate(self.xfrac, n, gen, dev)[:, None], t, torch.zeros_like(t))
            g_inv = g_inv @ translate2d(-t[:, 0] * w, -t[:, 1] * h, f32)
            geometric = True
        if geometric:
            images = self._warp(images, g_inv)

        # Colour part: C maps input colours (homogeneous RGB) to output ones.
        cmat = torch.eye(4, device=dev).expand(n, 4, 4)
        colour = False
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=dev) / math.sqrt(3)
        if self.brightness > 0:
            b = self._randn(n, gen, dev) * self.brightness_std
            b = torch.where(self._gate(self.brightness, n, gen, dev), b, torch.zeros_like(b))
            cmat = _translate3d(b, f32) @ cmat
            colour = True
        if self.contrast > 0:
            s = torch.exp2(self._randn(n, gen, dev) * self.contrast_std)
            s = torch.where(self._gate(self.contrast, n, gen, dev), s, torch.ones_like(s))
            cmat = _scale3d(s, f32) @ cmat
            colour = True
        vv = torch.outer(luma, luma)
        if self.lumaflip > 0:
            i = torch.floor(self._rand(n, gen, dev) * 2)
            i = torch.where(self._gate(self.lumaflip, n, gen, dev), i, torch.zeros_like(i))
            cmat = (torch.eye(4, device=dev) - 2 * vv * i[:, None, None]) @ cmat  # Householder
            colour = True
        if self.hue > 0 and c > 1:
            theta = (self._rand(n, gen, dev) * 2 - 1) * math.pi * self.hue_max
            theta = torch.where(self._gate(self.hue, n, gen, dev), theta, torch.zeros_like(theta))
            cmat = _rotate3d(luma, theta, f32) @ cmat
            colour = True
        if self.saturation > 0 and c > 1:
            s = torch.exp2(self._randn(n, gen, dev) * self.saturation_std)
            s = torch.where(self._gate(self.saturation, n, gen, dev), s, torch.ones_like(s))
            cmat = (vv + (torch.eye(4, device=dev) - vv) * s[:, None, None]) @ cmat
            colour = True
        if colour:
            cmat = cmat.to(images.dtype)
            flat = images.reshape(n, c, h * w)
            if c == 3:
                flat = cmat[:, :3, :3] @ flat + cmat[:, :3, 3:]
            else:  # grey: average the colour matrix rows
                m = cmat[:, :3, :].mean(dim=1, keepdim=True)
                flat = flat * m[:, :, :3].sum(dim=2, keepdim=True) + m[:, :, 3:]
            images = flat.reshape(n, c, h, w)
        return images

    def _warp(self, images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
        """Resample images[n] at G_inv[n] @ (output pixel), band-limited by a 2x round trip."""
        n, c, h, w = images.shape
        dev = images.device
        f = self.filter.to(dev)
        fpad = f.shape[0] // 4  # margin (in input pixels) the filter needs on each side
        cx, cy = (w - 1) / 2, (h - 1) / 2

        # How far outside the image the warped output corners reach -> reflect padding.
        corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=dev)
        reach = (g_inv @ corners.t())[:, :2, :]  # (N, xy, 4)
        reach = reach.permute(1, 0, 2).flatten(1)  # (xy, N*4)
        margin = torch.cat([-reach, reach]).amax(dim=1)  # x0, y0, x1, y1
        margin = margin + torch.tensor([2 * fpad - cx, 2 * fpad - cy] * 2, device=dev)
        limit = torch.tensor([w - 1, h - 1] * 2, device=dev, dtype=margin.dtype)
        margin = torch.minimum(margin.clamp(min=0), limit)
        mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())

        images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
        g_inv = translate2d(torch.full((n,), (mx0 - mx1) / 2, device=dev),
                             torch.full((n,), (my0 - my1) / 2, device=dev), g_inv[:, 0, 0]) @ g_inv

        # 2x upsample; in the upsampled grid, centred coordinates double, and the filter's
        # half-sample phase moves the origin by half an (upsampled) pixel.
        images = ops.upsample2d(images, f, up=2)
        one = torch.ones(n, device=dev)
        g_inv = _scale2d(2 * one, 2 * one, one) @ g_inv @ _scale2d(0.5 * one, 0.5 * one, one)
        half = torch.full((n,), 0.5, device=dev)
        g_inv = translate2d(-half, -half, one) @ g_inv @ translate2d(half, half, one)

        # Warp into an output canvas of (size + 2*fpad) * 2, normalised coordinates.
        out_h, out_w = (h + 2 * fpad) * 2, (w + 2 * fpad) * 2
        in_h, in_w = images.shape[2], images.shape[3]
        g_inv = (_scale2d(2 / in_w * one, 2 / in_h * one, one) @ g_inv
                 @ _scale2d(out_w / 2 * one, out_h / 2 * one, one))
        grid = F.affine_grid(g_inv[:, :2, :].to(images.dtype), [n, c, out_h, out_w], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # 2x downsample with the time-reversed filter and crop the margin away.
        return ops.downsample2d(images, f, down=2, padding=-2 * fpad, flip_filter=True)


class AdaptiveAugment:
    """Tunes `pipe.p` towards E[sign(D(real))] == target.

    Call `accumulate(real_logits)` every step (no host sync) and `tune(batch_total, reduce)`
    every step; every `interval` steps the accumulated signs are reduced across processes
    (`reduce(tensor) -> summed tensor`, identity for one process) and p moves by
    sign(r_t - target) * batch_total * interval / (ada_kimg * 1000), clamped to [0, 1].
    """

    def __init__(self, pipe: AugmentPipe, *, target: float = 0.6, ada_kimg: float = 500, interval: int = 4):
        if not 0 < target < 1:
            raise ValueError(f"ADA target must be in (0, 1), got {target}")
        if ada_kimg <= 0 or interval < 1:
            raise ValueError(f"ADA needs ada_kimg > 0 and interval >= 1, got {ada_kimg}, {interval}")
        self.pipe = pipe
        self.target = float(target)
        self.ada_kimg = float(ada_kimg)
        self.interval = int(interval)
        self.rt = 0.0  # r_t of the last adjustment (for reporting)
        self._steps = 0  # steps accumulated since the last adjustment
        self._sign_sum: torch.Tensor | float = 0.0
        self._count = 0.0  # number of logits accumulated (host float: numel is known)

    @property
    def p(self) -> float:
        return self.pipe.p

    @torch.no_grad()
    def accumulate(self, real_logits: torch.Tensor) -> None:
        x = real_logits.detach().float()
        self._sign_sum = self._sign_sum + torch.sign(x).sum()
        self._count += float(x.numel())

    def tune(self, batch_total: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Counts one step; adjusts p every `interval` steps. Returns p."""
        self._steps += 1
        if self._steps < self.interval:
            return self.pipe.p
        sign_sum = torch.as_tensor(self._sign_sum, dtype=torch.float32)
        stats = torch.stack([sign_sum, torch.full_like(sign_sum, self._count)])
        if reduce is not None:
            stats = reduce(stats)
        sign_sum, count = (float(v) for v in stats.tolist())
        if count > 0:
            self.rt = sign_sum / count
            adjust = float(np.sign(self.rt - self.target)) * batch_total * self._steps / (self.ada_kimg * 1000)
            self.pipe.p = float(min(max(self.pipe.p + adjust, 0.0), 1.0))
        self._steps, self._sign_sum, self._count = 0, 0.0, 0.0
        return self.pipe.p

    def state_dict(self) -> dict:
        return {
            "p": self.pipe.p,
            "rt": self.rt,
            "steps": self._steps,
            "sign_sum": float(self._sign_sum),
            "count": float(self._count),
            "target": self.target,
            "ada_kimg": self.ada_kimg,
            "interval": self.interval,
        }

    def load_state_dict(self, state: dict) -> None:
        self.pipe.p = float(state["p"])
        self.rt = float(state["rt"])
        self._steps = int(state["steps"])
        self._sign_sum = float(state["sign_sum"])
        self._count = float(state["count"])
