"""NVlabs' StyleGAN2 arithmetic, written out naively in float64 from their state-dict names.

A reading of stylegan2-ada-pytorch's ``training/networks.py`` and ``torch_utils/ops`` written as
plain loops and ``torch.nn.functional`` calls (no code of theirs): per-sample weight modulation,
the transposed convolution + [1,3,3,1] filter for up-sampling, filter + strided convolution for
down-sampling, bias + leaky ReLU with gain sqrt(2), noise added before the bias. The tests compare
our imported networks with it; ``benchmarks/nvlabs_parity.py`` compares it, and our import, with
NVlabs' own code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def _filter():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def _blur(x, pad0, pad1, gain=1.0):
    """Zero-pad (pad0 before, pad1 after, both axes) and convolve each channel with the 4x4 filter."""
    c = x.shape[1]
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = (_filter() * gain).to(x)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, k.flip([2, 3]), groups=c)


def _upsample2d(x):
    n, c, h, w = x.shape
    y = torch.zeros(n, c, 2 * h, 2 * w, dtype=x.dtype)
    y[:, :, ::2, ::2] = x
    return _blur(y, 2, 1, gain=4.0)


def _lrelu(x, gain=SQRT2):
    return F.leaky_relu(x, 0.2) * gain


def _fc(s, name, x, lr=1.0, act=False):
    w = s[f"{name}.weight"].double()
    b = s[f"{name}.bias"].double()
    y = x @ (w * (lr / math.sqrt(w.shape[1]))).t() + b * lr
    return _lrelu(y) if act else y


def mapping(s, z, n_layers, lr=0.01, psi=1.0):
    x = z.double()
    x = x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    for i in range(n_layers):
        x = _fc(s, f"mapping.fc{i}", x, lr=lr, act=True)
    if psi != 1:
        avg = s["mapping.w_avg"].double()
        x = avg + psi * (x - avg)
    return x


def _modconv(s, name, x, w, up=False, demod=True, eps_after_gain=False):
    weight = s[f"{name}.weight"].double()
    styles = _fc(s, f"{name}.affine", w)
    if not demod:  # ToRGB: the 1/sqrt(fan_in) gain goes on the styles
        styles = styles / math.sqrt(weight.shape[1] * weight.shape[2] * weight.shape[3])
    out = []
    for i in range(x.shape[0]):
        wi = weight * styles[i][None, :, None, None]
        if demod:
            # NVlabs add eps to the sum over the *unscaled* modulated weight; rosinality (and we) after the
            # 1/sqrt(fan_in) gain, i.e. eps * fan_in here
            eps = 1e-8 * (weight[0].numel() if eps_after_gain else 1)
            wi = wi * (wi.square().sum([1, 2, 3]) + eps).rsqrt()[:, None, None, None]
        xi = x[i:i + 1]
        if up:
            y = F.conv_transpose2d(xi, wi.transpose(0, 1), stride=2)
            y = _blur(y, 1, 1, gain=4.0)
        else:
            y = F.conv2d(xi, wi, padding=weight.shape[-1] // 2)
        out.append(y)
    return torch.cat(out)


def _synthesis_layer(s, name, x, w, up, noise, eps_after_gain):
    x = _modconv(s, name, x, w, up=up, eps_after_gain=eps_after_gain)
    if noise and f"{name}.noise_const" in s:
        x = x + s[f"{name}.noise_const"].double() * s[f"{name}.noise_strength"].double()
    return _lrelu(x + s[f"{name}.bias"].double()[None, :, None, None])


def synthesis(s, ws, res, noise=True, eps_after_gain=False):
    """ws (N, num_ws, w_dim) -> image, with each layer's constant noise (``noise_mode='const'``).
    ``eps_after_gain``: demodulate as rosinality does (the only arithmetic that differs from NVlabs)."""
    ws = ws.double()
    x = s["synthesis.b4.const"].double()[None].repeat(ws.shape[0], 1, 1, 1)
    x = _synthesis_layer(s, "synthesis.b4.conv1", x, ws[:, 0], False, noise, eps_after_gain)
    img = _modconv(s, "synthesis.b4.torgb", x, ws[:, 1], demod=False) + s["synthesis.b4.torgb.bias"].double()[None, :, None, None]
    k = 1
    r = 8
    while r <= res:
        b = f"synthesis.b{r}"
        x = _synthesis_layer(s, f"{b}.conv0", x, ws[:, k], True, noise, eps_after_gain)
        x = _synthesis_layer(s, f"{b}.conv1", x, ws[:, k + 1], False, noise, eps_after_gain)
        y = _modconv(s, f"{b}.torgb", x, ws[:, k + 2], demod=False) + s[f"{b}.torgb.bias"].double()[None, :, None, None]
        img = _upsample2d(img) + y
        k += 2
        r *= 2
    return img


def generate(s, z, res, n_layers, lr=0.01, psi=1.0, noise=True, eps_after_gain=False):
    w = mapping(s, z, n_layers, lr=lr, psi=psi)
    num_ws = 2 * int(math.log2(res)) - 2
    return synthesis(s, w[:, None].repeat(1, num_ws, 1), res, noise=noise, eps_after_gain=eps_after_gain)


def _conv(s, name, x, *, down=False, act=True, gain=1.0):
    w = s[f"{name}.weight"].double()
    w = w / math.sqrt(w.shape[1] * w.shape[2] * w.shape[3])
    k = w.shape[-1]
    if down and k == 1:
        x = _blur(x, 1, 1)[:, :, ::2, ::2]
        y = F.conv2d(x, w)
    elif down:
        y = F.conv2d(_blur(x, 2, 2), w, stride=2)
    else:
        y = F.conv2d(x, w, padding=k // 2)
    if f"{name}.bias" in s:
        y = y + s[f"{name}.bias"].double()[None, :, None, None]
    return _lrelu(y, SQRT2 * gain) if act else y * gain


def _mbstd(x, group=4):
    n, c, h, w = x.shape
    g = min(group, n)
    y = x.reshape(g, -1, 1, c, h, w)
    y = (y - y.mean(0)).square().mean(0)
    y = (y + 1e-8).sqrt().mean([2, 3, 4]).reshape(-1, 1, 1, 1)
    return torch.cat([x, y.repeat(g, 1, h, w)], 1)


def discriminate(s, img, res):
    x = _conv(s, f"b{res}.fromrgb", img.double())
    r = res
    while r > 4:
        b = f"b{r}"
        y = _conv(s, f"{b}.skip", x, down=True, act=False, gain=math.sqrt(0.5))
        x = _conv(s, f"{b}.conv0", x)
        x = _conv(s, f"{b}.conv1", x, down=True, gain=math.sqrt(0.5))
        x = y + x
        r //= 2
    x = _conv(s, "b4.conv", _mbstd(x))
    x = _fc(s, "b4.fc", x.flatten(1), act=True)
    return _fc(s, "b4.out", x)
