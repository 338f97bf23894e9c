"""StyleGAN2 residual discriminator with rosinality's parameter names.

``convs.0`` is fromRGB (1x1 conv at full resolution); ``convs.i`` (i >= 1) is a
ResBlock taking ``size / 2**(i-1)`` px to half that; then the minibatch-stddev
feature, ``final_conv`` (3x3 at 4 px) and ``final_linear`` (two fully connected layers).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .layers import ConvLayer, EqualLinear, ResBlock, check_shape, stylegan2_channels


class Discriminator(nn.Module):
    """StyleGAN2 discriminator: image (N, 3, size, size) -> logits (N, 1).

    Args:
        size: input resolution, a power of two >= 4.
        channel_multiplier: 2 for config-f.
        blur_kernel: 1-D FIR taps for the down-sampling blurs.
        channel_max: cap on every feature-map width (512 reproduces rosinality).
    """

    stddev_group = 4
    stddev_feat = 1

    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 channel_max: int = 512):
        super().__init__()
        if not isinstance(size, int) or size < 4 or size & (size - 1):
            raise ValueError(f"Discriminator size must be a power of two >= 4, got {size!r}")
        if channel_multiplier < 1 or channel_max < 1:
            raise ValueError(f"Discriminator: channel_multiplier ({channel_multiplier}) and channel_max "
                             f"({channel_max}) must be >= 1")
        self.size, self.channel_multiplier, self.channel_max = size, channel_multiplier, channel_max
        self.blur_kernel = tuple(float(t) for t in blur_kernel)
        self.log_size = int(math.log2(size))
        ch = {2 ** r: stylegan2_channels(2 ** r, channel_multiplier, channel_max)
              for r in range(2, self.log_size + 1)}
        self.channels = ch
        convs: list[nn.Module] = [ConvLayer(3, ch[size], 1)]
        in_ch = ch[size]
        for k in range(self.log_size, 2, -1):
            out_ch = ch[2 ** (k - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(in_ch + self.stddev_feat, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activation="lrelu"),
            EqualLinear(ch[4], 1),
        )

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able); ``Discriminator.from_config(d.config)`` rebuilds d."""
        return {"size": self.size, "channel_multiplier": self.channel_multiplier,
                "blur_kernel": list(self.blur_kernel), "channel_max": self.channel_max}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Discriminator":
        unknown = set(cfg) - set(cls.config_keys())
        if unknown:
            raise ValueError(f"Discriminator config has unknown keys {sorted(unknown)}; known: {cls.config_keys()}")
        return cls(**cfg)

    @staticmethod
    def config_keys() -> tuple[str, ...]:
        return ("size", "channel_multiplier", "blur_kernel", "channel_max")

    def layer_resolution(self, name: str) -> int | str:
        """Input resolution of the block a parameter/buffer belongs to; ``"head"`` for ``final_*``.

        ``convs.0`` (fromRGB) and ``convs.1`` both read ``size`` px; ``convs.i`` reads
        ``size / 2**(i-1)``. An instance method because it depends on ``size``.
        """
        parts = name.split(".")
        if parts[0] in ("final_conv", "final_linear"):
            return "head"
        if parts[0] == "convs" and len(parts) > 1 and parts[1].isdigit():
            i = int(parts[1])
            if i < len(self.convs):
                return self.size if i == 0 else self.size >> (i - 1)
        raise ValueError(f"Discriminator.layer_resolution: {name!r} is not a discriminator parameter or buffer name")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        check_shape(img, (None, 3, self.size, self.size), "Discriminator input")
        x = self.convs(img)
        n, c, h, w = x.shape
        group = min(n, self.stddev_group)
        if n % group:
            raise ValueError(f"Discriminator: batch {n} must be divisible by the stddev group {group}")
        f = self.stddev_feat
        y = x.view(group, -1, f, c // f, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8)           # (N/G, F, C/F, H, W)
        y = y.mean([2, 3, 4], keepdim=True).squeeze(2)            # (N/G, F, 1, 1)
        y = y.repeat(group, 1, h, w)                              # (N, F, H, W)
        x = self.final_conv(torch.cat([x, y], 1))
        return self.final_linear(x.view(n, -1))
