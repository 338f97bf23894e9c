"""StyleGAN2 (config-f) building blocks.

Parameter and buffer names follow rosinality's stylegan2-pytorch ``model.py`` so that
his checkpoints load with ``strict=True``; the arithmetic follows his as well, so the
same weights, latents and noise give the same images (up to float rounding where an
operation is computed in a cheaper but equivalent order, e.g. demodulation
coefficients as a matrix product).

Conventions shared by every layer here:
- "equalized learning rate": weights are stored as N(0, 1) / lr_mul and scaled at run
  time by ``lr_mul / sqrt(fan_in)``;
- FIR filters (blur kernels) are persistent 2-D buffers named ``kernel`` (they are in
  rosinality's state dicts), already multiplied by their gain, and applied with
  :func:`cartoon_stylegan.ops.upfirdn2d`, which *convolves* (like his op);
- ``lrelu`` means leaky ReLU with slope 0.2 times sqrt(2) after adding the bias.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cartoon_stylegan.ops import fused_bias_act, upfirdn2d


def stylegan2_channels(res: int, channel_multiplier: int, channel_max: int) -> int:
    """Feature channels at resolution ``res``.

    rosinality's table (512 up to 32 px, then ``256 * channel_multiplier`` at 64 px,
    halving per octave) is ``min(512, 16384 * channel_multiplier // res)``; ``channel_max``
    replaces the 512 cap, so the default ``channel_max=512`` reproduces his table.
    """
    return int(min(channel_max, (16384 * channel_multiplier) // res))


def make_fir_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """2-D FIR kernel: outer product of 1-D ``taps``, normalised to sum 1, times ``gain``."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"blur kernel must be 1-D taps or a square 2-D kernel, got shape {tuple(k.shape)}")
    k = k / k.sum()
    return k * gain if gain != 1 else k


def check_shape(t: torch.Tensor, shape: Sequence[int | None], what: str) -> None:
    """Raise ValueError unless ``t.shape`` matches ``shape`` (None matches any size)."""
    ok = t.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{what}: expected shape {want}, got {tuple(t.shape)}")


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square over dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FIRFilter(nn.Module):
    """upfirdn2d with a stored kernel: upsample by ``up``, pad, convolve, keep every ``down``-th.

    ``pad`` = (before, after), the same on both axes (rosinality's ``pad``).
    rosinality calls this ``Blur`` (inside convs) or ``Upsample`` (in ToRGB); only the
    buffer name ``kernel`` matters for checkpoints.
    """

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], up: int = 1, down: int = 1, gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps, gain))
        self.up, self.down = int(up), int(down)
        self.padding = (int(pad[0]), int(pad[1]), int(pad[0]), int(pad[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.up, down=self.down, padding=self.padding)

    def extra_repr(self) -> str:
        return f"up={self.up}, down={self.down}, padding={self.padding}"


def upsample_pad(kernel_len: int, factor: int = 2) -> tuple[int, int]:
    """Padding that makes upfirdn2d(up=factor) return exactly factor x the input size."""
    p = kernel_len - factor
    return (p + 1) // 2 + factor - 1, p // 2


def transposed_blur_pad(kernel_len: int, conv_size: int, factor: int = 2) -> tuple[int, int]:
    """Blur padding after a stride-``factor`` transposed conv so the output is factor x the input."""
    p = (kernel_len - factor) - (conv_size - 1)
    return (p + 1) // 2 + factor - 1, p // 2 + 1


def downsample_blur_pad(kernel_len: int, conv_size: int, factor: int = 2) -> tuple[int, int]:
    """Blur padding before a stride-``factor`` conv (no conv padding) so the output is input / factor."""
    p = (kernel_len - factor) + (conv_size - 1)
    return (p + 1) // 2, p // 2


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate; ``activation`` None or ``"lrelu"``."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        if bias:
            self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        else:
            self.register_parameter("bias", None)
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale
        b = self.bias
        if b is not None and self.lr_mul != 1:
            b = b * self.lr_mul
        if self.activation:
            return fused_bias_act(F.linear(x, w), b, dim=1, act=self.activation)
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """2-D convolution with equalized learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, {k}, stride={self.stride}, padding={self.padding}"


class BiasLeakyReLU(nn.Module):
    """Per-channel bias then lrelu (rosinality's ``FusedLeakyReLU``; parameter ``bias``)."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        if bias:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_bias_act(x, self.bias, dim=1, act="lrelu")


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (optionally demodulated, optionally 2x upsampling).

    Parameters: ``weight`` (1, out, in, k, k) and ``modulation`` (an EqualLinear from
    the style to one scale per input channel, bias initialised to 1); ``blur`` (FIR
    buffer) when upsampling. Upsampling is a stride-2 transposed convolution followed
    by the blur, exactly like rosinality's.

    Two equivalent evaluation orders:
    - fused (rosinality's default): one grouped convolution with a per-sample
      modulated weight (batch x out x in x k x k);
    - unfused (NVlabs' training path): scale the input by the styles, one shared-weight
      convolution, scale the output by the demodulation coefficients.
    ``fused=None`` picks fused for CUDA tensors in eval mode and unfused otherwise
    (NVlabs' choice on GPUs; on CPU the unfused order measured faster in both modes);
    1x1 convolutions (ToRGB) always use a batched matrix product. Both orders agree
    to float rounding (tests/networks compares them with a naive reference).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), fused: bool | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample, self.demodulate, self.fused = upsample, demodulate, fused
        if upsample:
            self.blur = FIRFilter(blur_kernel, transposed_blur_pad(len(blur_kernel), kernel_size), gain=4)
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, {self.kernel_size}, "
                f"upsample={self.upsample}, demodulate={self.demodulate}")

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        weight = self.weight[0]                                   # (O, I, k, k)
        s = self.modulation(style) * self.scale                   # (N, I): style and weight gain
        d = None
        if self.demodulate:                                       # 1 / |modulated weight| per (N, O)
            d = torch.rsqrt(torch.mm(s.square(), weight.square().sum((2, 3)).t()) + 1e-8)

        if self.kernel_size == 1 and not self.upsample:
            coef = s[:, None, :] if d is None else s[:, None, :] * d[:, :, None]         # (N, O, I)
            out = torch.bmm(weight.view(1, self.out_channels, c) * coef, x.reshape(n, c, h * w))
            return out.view(n, self.out_channels, h, w)

        fused = (x.is_cuda and not self.training) if self.fused is None else self.fused
        if fused:
            coef = s[:, None, :] if d is None else s[:, None, :] * d[:, :, None]         # (N, O, I)
            xg = x.reshape(1, n * c, h, w)
            k = self.kernel_size
            if self.upsample:                                     # transposed conv wants (N*I, O, k, k)
                wmod = weight.transpose(0, 1)[None] * coef.transpose(1, 2)[..., None, None]
                out = F.conv_transpose2d(xg, wmod.reshape(n * c, self.out_channels, k, k), stride=2, groups=n)
            else:
                wmod = weight[None] * coef[..., None, None]
                out = F.conv2d(xg, wmod.reshape(n * self.out_channels, c, k, k), padding=self.padding, groups=n)
            out = out.view(n, self.out_channels, out.shape[2], out.shape[3])
            return self.blur(out) if self.upsample else out

        x = x * s[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        return out if d is None else out * d[:, :, None, None]


class NoiseInjection(nn.Module):
    """Adds ``weight * noise`` (one learned scalar; noise is (1 or N, 1, H, W))."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 input of the synthesis network (parameter ``input``)."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + lrelu (``conv``, ``noise``, ``activate``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1), demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB + bias, plus the upsampled skip from the previous resolution.

    Parameters ``conv.*``, ``bias`` (1, 3, 1, 1); buffer ``upsample.kernel`` when it
    takes a skip input.
    """

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = FIRFilter(blur_kernel, upsample_pad(len(blur_kernel)), up=2, gain=4)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConvLayer(nn.Sequential):
    """Discriminator conv: [blur] -> EqualConv2d -> [bias + lrelu]; indices as rosinality's.

    With ``downsample`` the blur precedes a stride-2 conv; for 1x1 convs the blur
    itself keeps every second sample (same values, a quarter of the blur work).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        stride, padding = 1, kernel_size // 2
        if downsample:
            pad = downsample_blur_pad(len(blur_kernel), kernel_size)
            if kernel_size == 1:
                layers.append(FIRFilter(blur_kernel, pad, down=2))
            else:
                layers.append(FIRFilter(blur_kernel, pad))
                stride = 2
            padding = 0
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(BiasLeakyReLU(out_channels, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Discriminator residual block halving the resolution (``conv1``, ``conv2``, ``skip``)."""

    def __init__(self, in_channels: int, out_channels: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)
