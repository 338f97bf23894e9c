"""Upsample, FIR-filter and downsample batches of 2-D images (`upfirdn2d`) and its helpers.

Semantics are NVlabs' (stylegan2-ada-pytorch / stylegan3 `torch_utils/ops/upfirdn2d.py`),
for each channel:

1. upsample by inserting `up - 1` zeros after each pixel,
2. pad with zeros (`padding`, relative to the upsampled image; negative = crop),
3. convolve with the FIR filter `f` (a true convolution: correlation with the flipped
   filter, unless `flip_filter`), keeping only outputs whose footprint lies inside,
4. downsample by keeping every `down`-th pixel.

The reference implementation never materialises the zero-inserted image and never
convolves with a filter per sample: it is one depthwise (groups = C) `conv2d` with
stride `down`, or, when upsampling, one depthwise `conv_transpose2d` with stride `up`
(which is exactly zero insertion followed by a full convolution), with symmetric
padding/cropping done by the convolution itself and only the asymmetric rest by a
view. Long 1-D filters (>= 10 taps) run as two 1-D passes; shorter ones as their
outer product, which measures faster on CPU. Both are built from differentiable
torch ops, so gradients of any order work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backend

__all__ = ["setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d"]

# A 1-D (separable) filter with at least this many taps runs as two 1-D passes; shorter
# ones as one 2-D pass with the outer product (faster for small filters, see
# benchmarks/ops_cpu.py).
_SEPARABLE_MIN_TAPS = 10


# ----------------------------------------------------------------------------- parsing


def _parse_scaling(s, name):
    if isinstance(s, int) and not isinstance(s, bool):
        s = (s, s)
    if (not isinstance(s, (list, tuple)) or len(s) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)):
        raise ValueError(f"{name} must be an int >= 1 or a pair (x, y) of them, got {s!r}")
    return int(s[0]), int(s[1])


def _parse_padding(p):
    if isinstance(p, int) and not isinstance(p, bool):
        p = (p, p)
    if not isinstance(p, (list, tuple)) or len(p) not in (2, 4) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in p):
        raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1) of ints, got {p!r}")
    if len(p) == 2:
        p = (p[0], p[0], p[1], p[1])
    return tuple(int(v) for v in p)


def _filter_size(f):
    """(width, height) of a filter: None -> (1, 1); 1-D taps -> (taps, taps)."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError("f must be None or a non-empty 1-D (separable) or 2-D filter tensor")
    return int(f.shape[-1]), int(f.shape[0])


# ----------------------------------------------------------------------------- public


def setup_filter(f, normalize=True, flip_filter=False, gain=1, separable=None):
    r"""Make an FIR filter for `upfirdn2d` from a list, array or tensor.

    Args:
        f:           taps `[n]`, a 2-D filter `[h, w]`, a scalar (impulse) or None (identity).
        normalize:   scale so the filter sums to 1 (keeps a constant signal unchanged).
        flip_filter: flip the filter.
        gain:        overall signal gain, applied as `gain ** (ndim / 2)` so that the
                     separable and the 2-D form have the same effect.
        separable:   return the 1-D form; None = only for 1-D input with >= 8 taps (as
                     NVlabs), otherwise 1-D taps become their outer product.

    Returns:
        A new float tensor (float32 unless `f` is a floating tensor of another dtype),
        `[n]` (separable) or `[h, w]`; the input is never modified.
    """
    if f is None:
        f = 1
    dtype = f.dtype if isinstance(f, torch.Tensor) and f.is_floating_point() else torch.float32
    f = torch.as_tensor(f, dtype=dtype).detach().clone()
    if f.ndim == 0:
        f = f.reshape(1)
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: f must be scalar, 1-D or 2-D and non-empty, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError("setup_filter: separable=True needs 1-D taps")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    r"""Upsample (zero insertion), pad, FIR-filter and downsample a batch of 2-D images.

    Args:
        x:           `[N, C, H, W]` float tensor (any strides).
        f:           filter: 2-D `[h, w]`, 1-D `[n]` (separable: `f` outer `f`), or None
                     (identity). Cast to `x.dtype`; may require grad (reference only).
        up:          int or (ux, uy) upsampling factor.
        down:        int or (dx, dy) downsampling factor.
        padding:     int, (px, py) or (x0, x1, y0, y1), relative to the upsampled image;
                     negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain:        signal gain (multiplies the filter).
        impl:        None | "auto" | "ref" | "cuda"; None defers to CARTOON_STYLEGAN_OPS.

    Returns:
        `[N, C, (H*uy + y0 + y1 - h) // dy + 1, (W*ux + x0 + x1 - w) // dx + 1]`. The
        reference may return a strided view (with asymmetric crops or `up` and `down`
        together), as NVlabs' does; call `.contiguous()` before `.view()` on it.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be a 4-D [N, C, H, W] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    cuda = backend.use_cuda(x, impl)  # validates impl / CARTOON_STYLEGAN_OPS first
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    in_h, in_w = x.shape[2], x.shape[3]
    if in_w * upx + padx0 + padx1 < fw or in_h * upy + pady0 + pady1 < fh:
        raise ValueError(
            f"upfirdn2d: the padded, upsampled image ({in_h * upy + pady0 + pady1} x "
            f"{in_w * upx + padx0 + padx1}) is smaller than the filter ({fh} x {fw})")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    gain = float(gain)
    flip_filter = bool(flip_filter)

    if cuda:
        from .cuda_impl import upfirdn2d_cuda
        return upfirdn2d_cuda(x, f.to(device=x.device, dtype=torch.float32), upx, upy, downx, downy,
                              padx0, padx1, pady0, pady1, flip_filter, gain)
    return _upfirdn2d_ref(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl=None):
    r"""Filter (blur) with `f`; the output has the input's size plus `padding`
    (int, (px, py) or (x0, x1, y0, y1); negative crops)."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = (padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl=None):
    r"""Upsample by `up` (int or (ux, uy)) and filter with `f`; the output is `up` times
    the input plus `padding`. The gain is multiplied by `ux * uy` so that a normalised
    filter keeps the signal magnitude."""
    upx, upy = _parse_scaling(up, "up")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = (padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
         pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2)
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl=None):
    r"""Filter with `f` and downsample by `down` (int or (dx, dy)); the output is the
    input plus `padding` (relative to the input), divided by `down`."""
    downx, downy = _parse_scaling(down, "down")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    p = (padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2)
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ----------------------------------------------------------------------------- reference


def _upfirdn2d_ref(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain):
    f = f.to(device=x.device, dtype=x.dtype)
    if f.ndim == 1 and f.shape[0] >= _SEPARABLE_MIN_TAPS:
        # Two 1-D passes: x (with the whole gain), then y.
        x = _resample(x, (f * gain).unsqueeze(0), upx, 1, downx, 1, padx0, padx1, 0, 0, flip_filter)
        return _resample(x, f.unsqueeze(1), 1, upy, 1, downy, 0, 0, pady0, pady1, flip_filter)
    if f.ndim == 1:
        f = torch.outer(f, f)
    return _resample(x, f * gain if gain != 1 else f, upx, upy, downx, downy, padx0, padx1, pady0, pady1,
                     flip_filter)


def _resample(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter):
    """upfirdn2d with a 2-D filter `f` ([h, w], already scaled) as one depthwise convolution."""
    c, h, w = x.shape[1:]
    fh, fw = f.shape
    if ((upy * (h - 1) < -pady0 or upy * h <= -pady1)
            or (upx * (w - 1) < -padx0 or upx * w <= -padx1)):
        return _resample_explicit(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter)
    if upx == 1 and upy == 1:
        # conv2d correlates: weight = the flipped filter for a true convolution.
        if not flip_filter:
            f = f.flip([0, 1])
        weight = f.reshape(1, 1, fh, fw).expand(c, 1, fh, fw).contiguous()
        (sy, py, oy), (sx, px, ox) = (_conv_axis(x.shape[2], fh, downy, pady0, pady1),
                                      _conv_axis(x.shape[3], fw, downx, padx0, padx1))
        if sy != slice(None) or sx != slice(None):
            x = x[:, :, sy, sx]
        y = F.conv2d(x, weight, stride=(downy, downx), padding=(py, px), groups=c)
        if oy != slice(None) or ox != slice(None):
            y = y[:, :, oy, ox]
        return y

    # conv_transpose2d scatters: out[o] = sum_i x[i] w[o - up*i], i.e. zero insertion
    # followed by a full true convolution with w. flip_filter = correlation.
    if flip_filter:
        f = f.flip([0, 1])
    (ty, opy, cy, zy), (tx, opx, cx, zx) = (_transpose_axis(fh, upy, pady0, pady1),
                                            _transpose_axis(fw, upx, padx0, padx1))
    weight = f.reshape(1, 1, fh, fw).expand(c, 1, fh, fw).contiguous()
    y = F.conv_transpose2d(x, weight, stride=(upy, upx), padding=(ty, tx), output_padding=(opy, opx), groups=c)
    if cy != (0, 0) or cx != (0, 0):
        y = y[:, :, cy[0]:y.shape[2] - cy[1], cx[0]:y.shape[3] - cx[1]]
    if zy != (0, 0) or zx != (0, 0):
        y = F.pad(y, [zx[0], zx[1], zy[0], zy[1]])
    if downx > 1 or downy > 1:
        y = y[:, :, ::downy, ::downx]
    return y


def _resample_explicit(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter):
    """The definition step by step, for the degenerate case where a crop removes every
    input sample on some axis (the output is all zeros, but stays in the graph)."""
    n, c, h, w = x.shape
    fh, fw = f.shape
    x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0):x.shape[2] - max(-pady1, 0), max(-padx0, 0):x.shape[3] - max(-padx1, 0)]
    weight = (f if flip_filter else f.flip([0, 1])).reshape(1, 1, fh, fw).expand(c, 1, fh, fw).contiguous()
    return F.conv2d(x, weight, stride=(downy, downx), groups=c)


def _conv_axis(n, k, down, p0, p1):
    """One axis of the no-upsampling case, as (input slice, symmetric conv padding, output slice).

    Negative padding crops the input (a view). The remaining asymmetric padding becomes a
    symmetric one, grown on the short side by a multiple of `down` so the extra outputs
    fall exactly before/after the wanted ones and are dropped by a view; this measures
    faster than padding a copy of the input.
    """
    lo, hi = max(-p0, 0), max(-p1, 0)
    in_slice = slice(lo, n - hi) if lo or hi else slice(None)
    p0, p1, n = max(p0, 0), max(p1, 0), n - lo - hi
    out_len = (n + p0 + p1 - k) // down + 1
    pad = p0 + down * (-(-max(p1 - p0, 0) // down))  # p0 + a multiple of down, >= p1
    first = (pad - p0) // down
    conv_len = (n + 2 * pad - k) // down + 1
    out_slice = slice(first, first + out_len) if (first, first + out_len) != (0, conv_len) else slice(None)
    return in_slice, pad, out_slice


def _transpose_axis(k, up, p0, p1):
    """One axis of the upsampling case: (conv_transpose padding, output_padding,
    (crop before, crop after), (zeros before, zeros after)).

    The full transposed convolution has (n-1)*up + k outputs; the wanted ones skip
    `a = k-1-p0` at the start and `c = k-up-p1` at the end (negative = zeros to add).
    conv_transpose2d crops `padding` at the start and `padding - output_padding` at the
    end (0 <= output_padding < up), which covers the common symmetric cases exactly.
    """
    a, c = k - 1 - p0, k - up - p1
    ca, cc = max(a, 0), max(c, 0)
    if ca >= cc:
        pad = min(ca, cc + up - 1)
        out_pad, crop = pad - cc, (ca - pad, 0)
    else:
        pad, out_pad, crop = ca, 0, (0, cc - ca)
    return pad, out_pad, crop, (max(-a, 0), max(-c, 0))
