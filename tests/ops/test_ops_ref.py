"""The PyTorch reference ops against explicit float64 math, with 1st and 2nd order gradients.

The naive references below spell out the definition step by step (zero insertion, zero
padding / cropping, a true 2-D convolution as a sum of shifted slices, stride-down) and
share no code with the library.
"""
import math
import random
import sys
import types

import pytest
import torch

from cartoon_stylegan import ops
from cartoon_stylegan.ops import (ACTIVATIONS, backend, downsample2d, filter2d, fused_bias_act, setup_filter,
                                  upfirdn2d, upsample2d)

D = torch.float64


# ----------------------------------------------------------------------------- naive references


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(p):
    if isinstance(p, int):
        return p, p, p, p
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)


def naive_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """The definition, step by step, in float64."""
    x = x.to(D)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _pads(padding)
    f = torch.ones(1, 1, dtype=D) if f is None else f.to(D)
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    n, c, h, w = x.shape
    # 1. zero insertion: up-1 zeros after every pixel
    z = torch.zeros(n, c, h * upy, w * upx, dtype=D)
    z[:, :, ::upy, ::upx] = x
    # 2. pad with zeros, negative = crop: padded index j holds z[j - p0]
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    p = torch.zeros(n, c, hp, wp, dtype=D)
    sy0, sy1 = max(0, -py0), min(h * upy, hp - py0)
    sx0, sx1 = max(0, -px0), min(w * upx, wp - px0)
    if sy1 > sy0 and sx1 > sx0:
        p[:, :, sy0 + py0:sy1 + py0, sx0 + px0:sx1 + px0] = z[:, :, sy0:sy1, sx0:sx1]
    # 3. true convolution, valid part: out[m, k] = sum_ij p[m + i, k + j] * f[fh-1-i, fw-1-j]
    fh, fw = f2.shape
    g = f2 if flip_filter else f2.flip([0, 1])
    mh, mw = hp - fh + 1, wp - fw + 1
    out = torch.zeros(n, c, mh, mw, dtype=D)
    for i in range(fh):
        for j in range(fw):
            out += p[:, :, i:i + mh, j:j + mw] * g[i, j]
    # 4. keep every down-th pixel
    return out[:, :, ::downy, ::downx]


NAIVE_ACTS = {
    "linear": lambda v, a: v,
    "relu": lambda v, a: torch.where(v > 0, v, torch.zeros_like(v)),
    "lrelu": lambda v, a: torch.where(v > 0, v, v * a),
    "tanh": lambda v, a: (torch.exp(v) - torch.exp(-v)) / (torch.exp(v) + torch.exp(-v)),
    "sigmoid": lambda v, a: 1 / (1 + torch.exp(-v)),
    "elu": lambda v, a: torch.where(v > 0, v, a * (torch.exp(v) - 1)),
    "selu": lambda v, a: 1.0507009873554804934193349852946 * torch.where(
        v > 0, v, 1.6732632423543772848170429916717 * (torch.exp(v) - 1)),
    "softplus": lambda v, a: torch.log(1 + torch.exp(v)),
    "swish": lambda v, a: v / (1 + torch.exp(-v)),
}
DEFAULTS = {  # act: (alpha, gain), the StyleGAN2 conventions
    "linear": (0, 1), "relu": (0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2)), "tanh": (0, 1),
    "sigmoid": (0, 1), "elu": (1.0, 1), "selu": (0, 1), "softplus": (0, 1), "swish": (0, math.sqrt(2)),
}


def naive_bias_act(x, b, dim, act, alpha, gain, clamp):
    v = x.to(D)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        v = v + b.to(D).reshape(shape)
    y = NAIVE_ACTS[act](v, alpha) * gain
    return y if clamp is None else torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)),
                                                 torch.full_like(y, clamp))


def away_from_kinks(shape, b=None, dim=1, kinks=(0.0,), margin=0.05, gen=None):
    """Random x such that x + b keeps `margin` away from every kink (finite differences)."""
    v = torch.randn(shape, dtype=D, generator=gen) * 1.5
    for k in kinks:
        near = (v - k).abs() < margin
        v = torch.where(near, k + margin * 2 * torch.sign(v - k + 1e-9), v)
    if b is not None:
        s = [1] * len(shape)
        s[dim] = -1
        v = v - b.reshape(s)
    return v


# ----------------------------------------------------------------------------- upfirdn2d values


def _filter(kind, gen):
    if kind == "1d":
        return torch.rand(4, dtype=D, generator=gen) + 0.1
    if kind == "1d3":
        return torch.rand(3, dtype=D, generator=gen) + 0.1
    if kind == "1d_long":  # >= 10 taps: the separable two-pass path
        return torch.rand(11, dtype=D, generator=gen) + 0.1
    if kind == "2d":
        return torch.rand(4, 4, dtype=D, generator=gen) - 0.3
    if kind == "2d_rect":
        return torch.rand(3, 5, dtype=D, generator=gen) - 0.3
    if kind == "none":
        return None
    raise AssertionError(kind)


@pytest.mark.parametrize("up,down,padding,fkind,flip,gain", [
    (1, 1, 0, "2d", False, 1),
    (1, 1, 2, "1d", False, 1),                 # blur, int padding
    (2, 1, (2, 1, 2, 1), "1d", False, 4),      # upsample2d's padding for a 4-tap filter
    (1, 2, (1, 1), "1d", False, 1),            # downsample2d
    (4, 1, (3, 2, 1, 4), "2d_rect", True, 2),  # up 4, asymmetric
    (1, 4, (0, 3, 2, 1), "2d_rect", False, 1), # down 4, asymmetric
    (2, 2, 1, "2d", False, 1),                 # up and down together
    ((2, 1), (1, 2), (1, 0, 3, 2), "2d", True, 0.5),  # per-axis factors
    ((1, 4), 1, (2, 2, 0, 1), "1d", False, 1),
    (1, 1, (-1, 2, 3, -2), "2d", False, 1),    # negative padding = crop
    (2, 1, (-2, -1, 1, -3), "2d_rect", False, 1),
    (1, 2, (-1, -2, -3, 0), "1d3", True, 1),
    (2, 1, (6, 5, 7, 4), "1d", False, 1),      # padding beyond the transposed conv's reach
    (1, 1, (5, 0, 0, 6), "2d", False, 1),
    (2, 2, (3, 2, 2, 3), "1d_long", False, 2), # separable passes
    (1, 2, (5, 4), "1d_long", True, 1),
    (2, 1, 0, "none", False, 3),               # f=None: identity filter
    (1, 1, (-9, 11, -7, 9), "1d3", False, 1),  # crops remove the whole input: zeros
    (2, 1, (1, 0, 6, -12), "1d3", False, 1),   # ... after upsampling
])
def test_upfirdn2d_matches_definition(up, down, padding, fkind, flip, gain):
    gen = torch.Generator().manual_seed(hash((str(up), str(down), str(padding), fkind)) % 2**31)
    x = torch.randn(2, 3, 7, 9, dtype=D, generator=gen)
    f = _filter(fkind, gen)
    got = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    want = naive_upfirdn2d(x, f, up, down, padding, flip, gain)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_upfirdn2d_random_sweep():
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    done = 0
    while done < 60:
        h, w = rng.randint(1, 9), rng.randint(1, 9)
        up = (rng.choice([1, 2, 4]), rng.choice([1, 2, 4])) if rng.random() < 0.5 else rng.choice([1, 2, 4])
        down = (rng.choice([1, 2, 4]), rng.choice([1, 2, 4])) if rng.random() < 0.5 else rng.choice([1, 2, 4])
        form = rng.choice(["int", "pair", "quad"])
        rp = lambda: rng.randint(-6, 7)  # noqa: E731
        padding = {"int": rp(), "pair": (rp(), rp()), "quad": (rp(), rp(), rp(), rp())}[form]
        f = _filter(rng.choice(["1d", "1d3", "1d_long", "2d", "2d_rect"]), gen)
        fw, fh = (f.shape[0], f.shape[0]) if f.ndim == 1 else (f.shape[1], f.shape[0])
        ux, uy = _pair(up)
        x0, x1, y0, y1 = _pads(padding)
        if w * ux + x0 + x1 < fw or h * uy + y0 + y1 < fh:
            with pytest.raises(ValueError, match="smaller than the filter"):
                upfirdn2d(torch.zeros(1, 1, h, w, dtype=D), f, up=up, down=down, padding=padding)
            continue
        flip, gain = rng.random() < 0.5, rng.choice([1, 2.5])
        x = torch.randn(2, 2, h, w, dtype=D, generator=gen)
        got = upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
        want = naive_upfirdn2d(x, f, up, down, padding, flip, gain)
        assert got.shape == want.shape, (h, w, up, down, padding, tuple(f.shape))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        done += 1


def test_noncontiguous_inputs_give_the_same_result():
    gen = torch.Generator().manual_seed(1)
    f = setup_filter([1, 3, 3, 1]).to(D)
    base = torch.randn(2, 6, 10, 8, dtype=D, generator=gen)
    views = {
        "transposed": base.transpose(2, 3),
        "channel slice": base[:, ::2],
        "spatial slice": base[:, :, 1:8:2, 1:],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expanded": base[:1].expand(3, -1, -1, -1),
    }
    for name, v in views.items():
        for kwargs in (dict(up=2, padding=(2, 1, 2, 1)), dict(down=2, padding=1), dict(padding=(2, 1, 1, 2))):
            got = upfirdn2d(v, f, **kwargs)
            want = naive_upfirdn2d(v.contiguous(), f, **kwargs)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{name} {kwargs}")


def test_float32_and_filter_dtype_follow_x():
    x = torch.randn(1, 2, 6, 6)
    f = setup_filter([1, 3, 3, 1], gain=4)
    y = upsample2d(x, f)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.to(D), naive_upfirdn2d(x, f, 2, 1, (2, 1, 2, 1), False, 4), rtol=1e-5, atol=1e-6)
    assert upfirdn2d(x.to(D), f).dtype == D


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("taps", [[1], [1, 1], [1, 2, 1], [1, 3, 3, 1], [1, 4, 6, 4, 1]])
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_resampling_helpers_have_nvlabs_shapes_and_values(taps, factor):
    gen = torch.Generator().manual_seed(len(taps) * 10 + factor)
    f = setup_filter(taps).to(D)
    k = len(taps)
    x = torch.randn(1, 2, 8, 12, dtype=D, generator=gen)

    up = upsample2d(x, f, up=factor)
    assert up.shape[2:] == (8 * factor, 12 * factor)
    pu = ((k + factor - 1) // 2, (k - factor) // 2)
    torch.testing.assert_close(up, naive_upfirdn2d(x, f, factor, 1, pu + pu, False, factor * factor))

    down = downsample2d(x, f, down=factor)
    assert down.shape[2:] == (8 // factor, 12 // factor)
    pd = ((k - factor + 1) // 2, (k - factor) // 2)
    torch.testing.assert_close(down, naive_upfirdn2d(x, f, 1, factor, pd + pd))

    blur = filter2d(x, f, padding=factor - 1)
    assert blur.shape[2:] == (8 + 2 * (factor - 1), 12 + 2 * (factor - 1))
    pb = (factor - 1 + k // 2, factor - 1 + (k - 1) // 2)
    torch.testing.assert_close(blur, naive_upfirdn2d(x, f, 1, 1, pb + pb))


def test_helpers_take_per_axis_factors_and_padding_forms():
    x = torch.randn(1, 1, 6, 10, dtype=D)
    f = setup_filter([1, 2, 1]).to(D)
    assert upsample2d(x, f, up=(2, 4)).shape[2:] == (24, 20)
    assert downsample2d(x, f, down=(2, 1)).shape[2:] == (6, 5)
    assert filter2d(x, f, padding=(1, 2)).shape[2:] == (10, 12)
    assert filter2d(x, f, padding=(1, 0, -1, 2)).shape[2:] == (7, 11)


def test_upsample2d_keeps_a_constant_signal():
    x = torch.full((1, 1, 6, 6), 3.0, dtype=D)
    y = upsample2d(x, setup_filter([1, 3, 3, 1]).to(D))
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full((1, 1, 8, 8), 3.0, dtype=D))
    z = downsample2d(x, setup_filter([1, 3, 3, 1]).to(D))
    torch.testing.assert_close(z[:, :, 1:-1, 1:-1], torch.full((1, 1, 1, 1), 3.0, dtype=D))


def test_rosinality_convention_equals_symmetric_quad_padding():
    # rosinality upfirdn2d(x, k2d, up, down, pad=(p0, p1)) pads both axes with (p0, p1).
    x = torch.randn(1, 2, 5, 5, dtype=D)
    k = torch.outer(torch.tensor([1.0, 3, 3, 1], dtype=D), torch.tensor([1.0, 3, 3, 1], dtype=D))
    k = k / k.sum() * 4
    got = upfirdn2d(x, k, up=2, padding=(2, 1, 2, 1))
    torch.testing.assert_close(got, naive_upfirdn2d(x, k, 2, 1, (2, 1, 2, 1)))


def test_setup_filter():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = setup_filter(taps)
    torch.testing.assert_close(f, torch.outer(taps, taps) / 64)
    assert taps.tolist() == [1, 3, 3, 1]  # input untouched
    assert setup_filter([1] * 8).shape == (8,)  # NVlabs: 1-D stays separable from 8 taps
    assert setup_filter([1, 2, 1], separable=True).shape == (3,)
    torch.testing.assert_close(setup_filter([1, 2], normalize=False, flip_filter=True),
                               torch.tensor([[4.0, 2], [2, 1]]))
    torch.testing.assert_close(setup_filter([1, 1], gain=4), torch.full((2, 2), 1.0))
    torch.testing.assert_close(setup_filter([1, 1], gain=4, separable=True), torch.full((2,), 1.0))
    torch.testing.assert_close(setup_filter(None), torch.ones(1, 1))
    assert setup_filter(torch.ones(3, dtype=D)).dtype == D
    assert setup_filter([1, 2, 1]).dtype == torch.float32
    with pytest.raises(ValueError):
        setup_filter(torch.ones(2, 2), separable=True)
    with pytest.raises(ValueError):
        setup_filter(torch.ones(2, 2, 2))


def test_upfirdn2d_rejects_bad_arguments():
    x = torch.zeros(1, 1, 4, 4)
    f = setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match="4-D"):
        upfirdn2d(torch.zeros(4, 4), f)
    with pytest.raises(ValueError, match="up"):
        upfirdn2d(x, f, up=0)
    with pytest.raises(ValueError, match="down"):
        upfirdn2d(x, f, down=(2, 2, 2))
    with pytest.raises(ValueError, match="padding"):
        upfirdn2d(x, f, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        upfirdn2d(x, f, padding=1.5)
    with pytest.raises(ValueError, match="smaller than the filter"):
        upfirdn2d(x, f, padding=-1)
    with pytest.raises(ValueError, match="filter"):
        upfirdn2d(x, torch.ones(2, 2, 2))


# ----------------------------------------------------------------------------- upfirdn2d gradients


@pytest.mark.parametrize("up,down,padding,fkind", [
    (2, 1, (2, 1, 2, 1), "1d"),         # upsample2d
    (1, 2, 1, "1d"),                    # downsample2d
    (1, 1, (2, 1, 1, 2), "2d_rect"),    # blur, asymmetric
    (2, 2, (-1, 2, 3, 0), "2d"),        # up+down, crop
    ((4, 1), (1, 2), (1, 0, 0, 2), "1d3"),
    (1, 1, (5, 4, 6, 5), "1d_long"),    # separable passes
    (2, 1, (7, 6, 5, 4), "1d"),         # zeros beyond the transposed conv's reach
    (2, 1, (-9, 11, 0, 1), "1d3"),      # a crop removes the whole input
])
def test_upfirdn2d_first_and_second_order_gradients(up, down, padding, fkind):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 4, dtype=D, generator=gen, requires_grad=True)
    f = _filter(fkind, gen)
    fn = lambda v: upfirdn2d(v, f, up=up, down=down, padding=padding, gain=1.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_gradient_wrt_filter():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 5, dtype=D, generator=gen, requires_grad=True)
    f = torch.rand(3, 2, dtype=D, generator=gen, requires_grad=True)
    for up, down in ((1, 1), (2, 1), (1, 2)):
        fn = lambda v, g: upfirdn2d(v, g, up=up, down=down, padding=(1, 2, 0, 1))  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, f))
        assert torch.autograd.gradgradcheck(fn, (x, f))


def test_r1_style_double_backward_through_resampling_chain():
    # D(x) = sum(downsample(blur(x))**2); R1 penalty = |dD/dx|^2, differentiated again.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, dtype=D, generator=gen, requires_grad=True)
    f = setup_filter([1, 3, 3, 1]).to(D)

    def r1(v):
        out = (downsample2d(filter2d(upsample2d(v, f), f, padding=1), f) ** 2).sum()
        (g,) = torch.autograd.grad(out, v, create_graph=True)
        return g.square().sum()

    def r1_naive(v):
        u = naive_upfirdn2d(v, f, 2, 1, (2, 1, 2, 1), False, 4)
        u = naive_upfirdn2d(u, f, 1, 1, (3, 2, 3, 2))
        out = (naive_upfirdn2d(u, f, 1, 2, (1, 1, 1, 1)) ** 2).sum()
        (g,) = torch.autograd.grad(out, v, create_graph=True)
        return g.square().sum()

    (a,) = torch.autograd.grad(r1(x), x)
    (b,) = torch.autograd.grad(r1_naive(x), x)
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


# ----------------------------------------------------------------------------- fused_bias_act


@pytest.mark.parametrize("act", sorted(NAIVE_ACTS))
def test_bias_act_each_activation_with_defaults(act):
    gen = torch.Generator().manual_seed(6)
    b = torch.randn(5, dtype=D, generator=gen)
    x = away_from_kinks((3, 5, 4, 2), b, gen=gen)
    alpha, gain = DEFAULTS[act]
    assert ACTIVATIONS[act].def_gain == pytest.approx(gain)
    got = fused_bias_act(x, b, act=act)  # alpha=None, gain=None: the activation's defaults
    torch.testing.assert_close(got, naive_bias_act(x, b, 1, act, alpha, gain, None), rtol=1e-13, atol=1e-13)
    got = fused_bias_act(x, b, act=act, alpha=0.3, gain=-0.7, clamp=0.4)
    torch.testing.assert_close(got, naive_bias_act(x, b, 1, act, 0.3, -0.7, 0.4), rtol=1e-13, atol=1e-13)


def test_bias_act_defaults_are_rosinality_fused_leaky_relu():
    x, b = torch.randn(4, 6, 3, 3, dtype=D), torch.randn(6, dtype=D)
    want = torch.nn.functional.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    torch.testing.assert_close(fused_bias_act(x, b), want)
    torch.testing.assert_close(fused_bias_act(x, b, alpha=0.2, gain=math.sqrt(2)), want)


@pytest.mark.parametrize("dim,shape", [(0, (4, 3, 2)), (2, (2, 3, 4, 5)), (-1, (3, 2, 6)), (1, (7, 3))])
@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_bias_act_dim_and_no_bias(dim, shape, act):
    gen = torch.Generator().manual_seed(7)
    b = torch.randn(shape[dim], dtype=D, generator=gen)
    x = torch.randn(shape, dtype=D, generator=gen)
    nd = dim % len(shape)
    torch.testing.assert_close(fused_bias_act(x, b, dim=dim, act=act, gain=1.3),
                               naive_bias_act(x, b, nd, act, 0.2, 1.3, None))
    torch.testing.assert_close(fused_bias_act(x, None, dim=dim, act=act, gain=1.3),
                               naive_bias_act(x, None, nd, act, 0.2, 1.3, None))


def test_bias_act_leaves_inputs_untouched_and_accepts_views():
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(4, 6, 5, dtype=D, generator=gen)
    for x in (base.transpose(0, 1), base[:, ::2], base.contiguous()):
        keep = x.clone()
        for act, gain in (("lrelu", None), ("lrelu", 1.0), ("relu", 1.0), ("relu", 2.0),
                          ("linear", 1.0), ("linear", 3.0)):
            d = 1 if x.shape[1] == 4 else 0
            bb = torch.randn(x.shape[d], dtype=D, generator=gen)
            got = fused_bias_act(x, bb, dim=d, act=act, gain=gain)
            fused_bias_act(x, None, dim=d, act=act, gain=gain)
            g = DEFAULTS[act][1] if gain is None else gain
            torch.testing.assert_close(got, naive_bias_act(x, bb, d, act, 0.2, g, None))
            assert torch.equal(x, keep)
    assert fused_bias_act(base, None, act="linear", gain=1) is base  # nothing to do


def test_bias_act_clamp_and_bias_dtype():
    x = torch.linspace(-3, 3, 13).view(1, 13)
    y = fused_bias_act(x, torch.zeros(13, dtype=D), act="linear", gain=2, clamp=1.5)
    assert y.dtype == torch.float32
    assert y.max() == 1.5 and y.min() == -1.5
    assert torch.equal(fused_bias_act(x, clamp=0), torch.zeros_like(x))


@pytest.mark.parametrize("act", sorted(NAIVE_ACTS))
def test_bias_act_first_and_second_order_gradients(act):
    gen = torch.Generator().manual_seed(9)
    b = torch.randn(3, dtype=D, generator=gen, requires_grad=True)
    x = away_from_kinks((2, 3, 2, 2), b.detach(), gen=gen).requires_grad_()
    assert torch.autograd.gradcheck(lambda v, c: fused_bias_act(v, c, act=act), (x, b))
    assert torch.autograd.gradgradcheck(lambda v, c: fused_bias_act(v, c, act=act), (x, b))
    assert torch.autograd.gradgradcheck(lambda v, c: fused_bias_act(v, c, act=act, gain=0.6, alpha=0.1), (x, b))
    assert torch.autograd.gradgradcheck(lambda v: fused_bias_act(v, None, dim=2, act=act, gain=1.7), (x,))


def test_bias_act_gradients_with_clamp():
    gen = torch.Generator().manual_seed(10)
    b = torch.randn(3, dtype=D, generator=gen, requires_grad=True)
    # pre-clamp outputs lrelu(v) * sqrt(2): keep v away from 0 and from +-clamp / sqrt(2), -clamp / (0.2 sqrt(2))
    c = 0.9
    kinks = (0.0, c / math.sqrt(2), -c / (0.2 * math.sqrt(2)))
    x = away_from_kinks((2, 3, 3), b.detach(), kinks=kinks, gen=gen).requires_grad_()
    fn = lambda v, bb: fused_bias_act(v, bb, clamp=c)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_bias_act_after_a_linear_map_under_torch_compile():
    """Inductor turns add(b, mm(x, w), alpha=g) into an addmm and silently drops alpha (pytorch#167313):
    the op's compiled form must still scale by the gain (every EqualLinear with an activation is this)."""
    gen = torch.Generator().manual_seed(11)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((4, 24), (8, 24), (8,)))
    fn = lambda v, m, c: fused_bias_act(torch.nn.functional.linear(v, m), c)  # noqa: E731
    torch.testing.assert_close(torch.compile(fn)(x, w, b), fn(x, w, b))


def test_bias_act_rejects_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown act"):
        fused_bias_act(x, act="gelu2")
    with pytest.raises(ValueError, match="length"):
        fused_bias_act(x, torch.zeros(2))
    with pytest.raises(ValueError, match="dim"):
        fused_bias_act(x, torch.zeros(3), dim=2)
    with pytest.raises(ValueError, match="clamp"):
        fused_bias_act(x, clamp=-1)


def test_register_activation():
    name = "test_cube"
    try:
        ops.register_activation(name, lambda v, a: v ** 3, def_gain=0.5)
        x = torch.randn(2, 3, dtype=D)
        torch.testing.assert_close(fused_bias_act(x, act=name), 0.5 * x ** 3)
        assert not ACTIVATIONS[name].cuda
        with pytest.raises(ValueError, match="already"):
            ops.register_activation(name, lambda v, a: v)
    finally:
        ACTIVATIONS.pop(name, None)


# ----------------------------------------------------------------------------- implementation switch


def test_impl_ref_and_env_var_select_reference(monkeypatch):
    x = torch.randn(1, 2, 4, 4)
    f = setup_filter([1, 2, 1])
    monkeypatch.delenv("CARTOON_STYLEGAN_OPS", raising=False)
    assert backend.use_cuda(x, "ref") is False
    want_up, want_ba = upfirdn2d(x, f, up=2, padding=1), fused_bias_act(x)
    torch.testing.assert_close(upfirdn2d(x, f, up=2, padding=1, impl="ref"), want_up)
    torch.testing.assert_close(fused_bias_act(x, impl="ref"), want_ba)
    monkeypatch.setenv("CARTOON_STYLEGAN_OPS", "ref")
    assert backend.use_cuda(x, None) is False
    torch.testing.assert_close(upfirdn2d(x, f, up=2, padding=1), want_up)
    torch.testing.assert_close(fused_bias_act(x), want_ba)


def test_bad_impl_name_raises_value_error(monkeypatch):
    x = torch.randn(1, 2, 4, 4)
    f = setup_filter([1, 2, 1])
    monkeypatch.delenv("CARTOON_STYLEGAN_OPS", raising=False)
    for call in (lambda i: upfirdn2d(x, f, impl=i), lambda i: fused_bias_act(x, impl=i),
                 lambda i: upsample2d(x, f, impl=i), lambda i: downsample2d(x, f, impl=i),
                 lambda i: filter2d(x, f, impl=i)):
        with pytest.raises(ValueError, match="fast"):
            call("fast")
    monkeypatch.setenv("CARTOON_STYLEGAN_OPS", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        upfirdn2d(x, f)
    with pytest.raises(ValueError, match="bogus"):
        fused_bias_act(x)


def test_cuda_dispatch_gets_normalised_arguments(monkeypatch):
    calls = []
    fake = types.ModuleType("cartoon_stylegan.ops.cuda_impl")
    fake.fused_bias_act_cuda = lambda *a: calls.append(("bias_act", a)) or "cuda-ba"
    fake.upfirdn2d_cuda = lambda *a: calls.append(("upfirdn2d", a)) or "cuda-up"
    monkeypatch.setitem(sys.modules, "cartoon_stylegan.ops.cuda_impl", fake)
    seen_impl = []
    monkeypatch.setattr(backend, "use_cuda", lambda x, impl=None: seen_impl.append(impl) or impl == "cuda")

    x = torch.randn(1, 2, 4, 4, dtype=D)
    b = torch.zeros(2)
    assert fused_bias_act(x, b, act="relu", impl="cuda") == "cuda-ba"
    _, (cx, cb, dim, act, alpha, gain, clamp) = calls.pop()
    assert cx is x and cb.dtype == D and (dim, act, alpha, gain, clamp) == (1, "relu", 0.0, math.sqrt(2), None)
    fused_bias_act(x, b, dim=-3, clamp=2, impl="cuda")
    assert calls.pop()[1][2:] == (1, "lrelu", 0.2, math.sqrt(2), 2.0)

    f = torch.ones(4, dtype=D)  # float64 filter: the kernels get float32
    assert upsample2d(x, f, impl="cuda") == "cuda-up"
    _, (cx, cf, *rest) = calls.pop()
    assert cx is x and cf.dtype == torch.float32 and cf.shape == (4,)
    assert rest == [2, 2, 1, 1, 2, 1, 2, 1, False, 4.0]
    upfirdn2d(x, None, up=(1, 2), down=(2, 1), padding=(1, 2), flip_filter=1, gain=2, impl="cuda")
    _, (cx, cf, *rest) = calls.pop()
    assert cf.shape == (1, 1) and rest == [1, 2, 2, 1, 1, 1, 2, 2, True, 2.0]

    # impl="ref" never reaches the kernels; acts without a kernel stay on the reference.
    s2 = math.sqrt(2)
    torch.testing.assert_close(fused_bias_act(x, b, impl="ref"), naive_bias_act(x, b, 1, "lrelu", 0.2, s2, None))
    torch.testing.assert_close(fused_bias_act(x, b, act="swish", impl="cuda"),
                               naive_bias_act(x, b, 1, "swish", 0, s2, None))
    assert not calls
    assert seen_impl[-2:] == ["ref", "cuda"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reference_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 9, 7, dtype=D, generator=gen)
    f = setup_filter([1, 3, 3, 1]).to(D)
    for kwargs in (dict(up=2, padding=(2, 1, 2, 1)), dict(down=2, padding=(1, 2)), dict(padding=-1)):
        got = upfirdn2d(x.cuda(), f.cuda(), impl="ref", **kwargs).cpu()
        torch.testing.assert_close(got, upfirdn2d(x, f, **kwargs))
    b = torch.randn(3, dtype=D)
    torch.testing.assert_close(fused_bias_act(x.cuda(), b.cuda(), impl="ref").cpu(), fused_bias_act(x, b))


def test_public_names():
    assert set(ops.__all__) >= {"fused_bias_act", "upfirdn2d", "setup_filter", "upsample2d", "downsample2d",
                                "filter2d", "ACTIVATIONS", "build_ops", "OpsBuildError"}
    assert set(ACTIVATIONS) >= {"linear", "relu", "lrelu", "tanh", "sigmoid"}
    assert all(ACTIVATIONS[a].cuda for a in ("linear", "relu", "lrelu", "tanh", "sigmoid"))
    assert issubclass(ops.OpsBuildError, RuntimeError)


def test_one_activation_table_with_the_kernel_ids_of_ops_h():
    import re
    from pathlib import Path

    header = (Path(ops.__file__).parent / "csrc" / "ops.h").read_text()
    enum = re.search(r"enum Act : int \{([^}]*)\}", header).group(1)
    ids = {name.lower(): int(v) for name, v in re.findall(r"k(\w+) = (\d+)", enum)}
    assert {n: a.cuda_id for n, a in ACTIVATIONS.items() if a.cuda} == ids
    assert {n for n, a in ACTIVATIONS.items() if a.cuda and a.has_second_derivative} == {"tanh", "sigmoid"}
    src = (Path(ops.__file__).parent / "cuda_impl.py").read_text()
    assert "ACTIVATIONS: dict" not in src and "_CUDA_ACTS" not in (Path(ops.__file__).parent / "bias_act.py").read_text()
