"""EMA half-life arithmetic and freezing; ADA pipeline properties and the p controller."""
import math

import pytest
import torch
import torch.nn.functional as F

from cartoon_stylegan.training.ada import AdaptiveAugment, AugmentPipe, translate2d, make_augment_pipe
from cartoon_stylegan.training.ema import EMA, ema_beta


class _Net(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.a = torch.nn.Parameter(torch.full((3,), float(value)))
        self.b = torch.nn.Parameter(torch.full((2,), float(value)))
        self.register_buffer("buf", torch.full((2,), float(value)))


# ----------------------------------------------------------------------------- EMA

def test_ema_half_life():
    # Half-life of 8 images, 4 images per update: after 2 updates the start weighs 1/2.
    ema_net, src = _Net(0.0), _Net(1.0)
    ema = EMA(ema_net, ema_kimg=0.008, rampup=None)
    assert ema_beta(4, 4, 0.008, None) == pytest.approx(0.5 ** 0.5)
    for k in range(2):
        ema.update(src, batch_total=4, images_seen=4 * (k + 1))
    assert ema_net.a.detach() == pytest.approx([0.5] * 3)
    for k in range(2, 4):
        ema.update(src, batch_total=4, images_seen=4 * (k + 1))
    assert ema_net.a.detach() == pytest.approx([0.75] * 3)
    assert ema_net.buf.tolist() == [1.0, 1.0]  # buffers are copied
    assert ema.num_updates == 4


def test_ema_rampup_caps_half_life():
    # rampup 0.5: after 8 images the half-life is at most 4 images.
    assert ema_beta(4, 8, 10.0, 0.5) == pytest.approx(0.5 ** (4 / 4))
    assert ema_beta(4, 10**9, 10.0, 0.5) == pytest.approx(0.5 ** (4 / 10000))
    assert ema_beta(4, 0, 10.0, 0.05) == pytest.approx(0.0)


def test_ema_leaves_unlisted_params_bit_identical_and_round_trips():
    ema_net, src = _Net(0.25), _Net(1.0)
    before = ema_net.b.detach().clone()
    ema = EMA(ema_net, param_names=["a"], buffer_names=[], ema_kimg=0.004, rampup=None)
    for k in range(3):
        ema.update(src, batch_total=4, images_seen=4 * (k + 1))
    assert torch.equal(ema_net.b.detach(), before)
    assert ema_net.buf.tolist() == [0.25, 0.25]
    assert ema_net.a[0].item() != 0.25
    state = ema.state_dict()
    other = EMA(_Net(0.0), param_names=["a"], buffer_names=[])
    other.load_state_dict(state)
    assert other.num_updates == 3 and other.ema_kimg == 0.004 and other.rampup is None
    with pytest.raises(ValueError):
        EMA(_Net(0.0), param_names=["a", "b"]).load_state_dict(state)
    with pytest.raises(KeyError):
        EMA(_Net(0.0), param_names=["nope"])


# ----------------------------------------------------------------------------- ADA pipe

def _smooth_images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size // 4, size // 4, generator=g)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def test_p_zero_is_identity():
    x = _smooth_images()
    pipe = make_augment_pipe("bgc", p=0.0)
    assert pipe(x, torch.Generator().manual_seed(0)) is x


def test_identity_and_blits_are_exact():
    x = _smooth_images()
    # The geometric path with an identity matrix reproduces the input.
    pipe = AugmentPipe(**{k: 0 for k in ("xflip", "rotate90", "scale", "rotate", "aniso", "xfrac", "brightness",
                                         "contrast", "lumaflip", "hue", "saturation")}, xint=1, xint_max=0.0, p=1.0)
    torch.testing.assert_close(pipe(x, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)
    # An integer translation by 3 px moves the pixels (the uncovered border is reflected).
    y = pipe._warp(x, translate2d(torch.full((2,), -3.0), torch.zeros(2), torch.zeros(2)))
    torch.testing.assert_close(y[..., 3:], x[..., :-3], atol=1e-5, rtol=0)
    # x-flip / 90-degree rotations: each sample is left as is (exactly) or becomes the
    # flipped / rotated image up to the resampling filter (the asymmetric wavelet filter
    # is exact only for translations; NVlabs' pipeline behaves the same).
    def close(a, b):
        return (a - b).abs().mean().item() < 0.05

    flip = AugmentPipe(**{k: 0 for k in ("rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                                         "contrast", "lumaflip", "hue", "saturation")}, xflip=1, p=1.0)
    out = flip(torch.cat([x] * 8), torch.Generator().manual_seed(1))
    flipped = [close(o, x[i % 2].flip(-1)) for i, o in enumerate(out)]
    kept = [torch.allclose(o, x[i % 2], atol=1e-5) for i, o in enumerate(out)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    rot = AugmentPipe(**{k: 0 for k in ("xflip", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                                        "contrast", "lumaflip", "hue", "saturation")}, rotate90=1, p=1.0)
    out = rot(torch.cat([x[:1]] * 8), torch.Generator().manual_seed(2))
    rots = [x[0].rot90(k, dims=(1, 2)) for k in range(4)]
    hits = [[close(o, r) for r in rots] for o in out]
    assert all(sum(h) == 1 for h in hits) and len({h.index(True) for h in hits}) > 1


@pytest.mark.parametrize("preset", ["bgc", "geom", "color"])
def test_p_one_keeps_shape_finite_differentiable_and_deterministic(preset):
    x = _smooth_images(4).requires_grad_(True)
    pipe = make_augment_pipe(preset, p=1.0)
    y = pipe(x, torch.Generator().manual_seed(3))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    y2 = pipe(x.detach(), torch.Generator().manual_seed(3))
    assert torch.equal(y.detach(), y2)


def test_augment_supports_double_backward_for_r1():
    # R1 through the augmentation: d/dw || d (w . aug(x)) / dx ||^2 must exist and be finite.
    x = _smooth_images(4).requires_grad_(True)
    w = torch.randn(4, 3, 16, 16, requires_grad=True)
    pipe = make_augment_pipe("bgc", p=1.0)
    y = pipe(x, torch.Generator().manual_seed(4))
    (gx,) = torch.autograd.grad((y * w).square().sum(), x, create_graph=True)
    gx.square().sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_augment_preset_registry():
    with pytest.raises(KeyError):
        make_augment_pipe("nope")
    blit = make_augment_pipe("blit")
    assert blit.xflip == 1 and blit.scale == 0 and blit.hue == 0


# ----------------------------------------------------------------------------- ADA controller

def test_ada_p_moves_towards_target_and_clamps():
    pipe = make_augment_pipe("bgc", p=0.0)
    ada = AdaptiveAugment(pipe, target=0.6, ada_kimg=0.1, interval=2)  # 100 images: 0 -> 1
    for _ in range(2):  # D is sure reals are real (r_t = 1 > 0.6): overfitting, p grows
        ada.accumulate(torch.ones(4, 1))
        ada.tune(batch_total=4)
    assert ada.rt == 1.0
    assert ada.p == pytest.approx(4 * 2 / 100)
    for _ in range(4):  # r_t = -1 < 0.6: p shrinks, and is clamped at 0
        ada.accumulate(-torch.ones(4, 1))
        ada.tune(batch_total=4)
    assert ada.p == 0.0
    for _ in range(200):  # and clamped at 1
        ada.accumulate(torch.ones(4, 1))
        ada.tune(batch_total=4)
    assert ada.p == 1.0


def test_ada_state_round_trip_mid_interval():
    ada = AdaptiveAugment(make_augment_pipe("bgc", p=0.3), target=0.6, ada_kimg=0.1, interval=4)
    ada.accumulate(torch.tensor([[1.0], [1.0], [-1.0], [1.0]]))
    ada.tune(4)
    state = ada.state_dict()
    other = AdaptiveAugment(make_augment_pipe("bgc"), target=0.6, ada_kimg=0.1, interval=4)
    other.load_state_dict(state)
    for a in (ada, other):
        for _ in range(3):
            a.accumulate(torch.ones(4, 1))
            a.tune(4)
    assert ada.p == other.p and ada.rt == other.rt == pytest.approx(14 / 16)
    with pytest.raises(ValueError):
        AdaptiveAugment(make_augment_pipe(), target=1.5)
    assert math.isfinite(ada.p)
