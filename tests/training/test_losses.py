"""Losses against plain float64 formulas, R1 against finite differences, structure loss."""
import copy
import math

import pytest
import torch

from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.training.losses import (
    StructureLoss,
    d_logistic_loss,
    d_r1_loss,
    g_nonsaturating_loss,
    g_path_regularize,
    structure_loss,
)


def _softplus64(x):
    return [math.log1p(math.exp(v)) for v in x]


def test_logistic_losses_match_float64_formulas():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(7, 1, generator=g) * 3
    fake = torch.randn(7, 1, generator=g) * 3
    r, f = real.double().flatten().tolist(), fake.double().flatten().tolist()
    want_d = sum(_softplus64([-v for v in r])) / 7 + sum(_softplus64(f)) / 7
    want_g = sum(_softplus64([-v for v in f])) / 7
    assert d_logistic_loss(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    assert g_nonsaturating_loss(fake).item() == pytest.approx(want_g, rel=1e-6)


def test_r1_matches_finite_differences():
    torch.manual_seed(0)
    D = Discriminator(8, channel_max=8).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    r1 = d_r1_loss(D(xr), xr)
    # Central differences of sum(D(x)) w.r.t. every pixel.
    eps, flat = 1e-6, x.flatten()
    grad = torch.zeros_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[i] = eps
            grad[i] = (D((flat + e).view_as(x)).sum() - D((flat - e).view_as(x)).sum()) / (2 * eps)
    want = grad.view(4, -1).square().sum(1).mean()
    assert r1.item() == pytest.approx(want.item(), rel=1e-5)


def test_r1_gradient_wrt_d_parameters_is_correct():
    # The R1 step back-propagates through grad_x D(x) (double backward): check d R1 / d theta
    # against finite differences for a few of D's parameter tensors.
    torch.manual_seed(1)
    D = Discriminator(8, channel_max=4).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    params = dict(D.named_parameters())
    for name in ("final_linear.1.weight", "convs.1.conv2.1.weight"):
        def r1_of(p, name=name):
            xr = x.clone().requires_grad_(True)
            out = torch.func.functional_call(D, {**params, name: p}, (xr,))
            return d_r1_loss(out, xr)

        p0 = params[name].detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(r1_of, (p0,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_path_length_formula_and_finite_on_generator():
    # Linear "generator": img = sum_l W+_l @ M, so J^T y = (y M^T) per W+ entry.
    g = torch.Generator().manual_seed(0)
    n, L, d, h = 3, 4, 5, 4
    M = torch.randn(d, h * h, dtype=torch.float64, generator=g)
    lat = torch.randn(n, L, d, dtype=torch.float64, generator=g, requires_grad=True)
    img = (lat.sum(1) @ M).view(n, 1, h, h)
    y = torch.randn(n, 1, h, h, dtype=torch.float64, generator=g)
    pen, mean, lengths = g_path_regularize(img, lat, 0.5, decay=0.1, noise=y)
    jty = (y.view(n, -1) / h) @ M.t()  # (n, d), the same for every W+ entry
    want_len = jty.square().sum(1).sqrt()
    torch.testing.assert_close(lengths, want_len)
    want_mean = 0.5 + 0.1 * (want_len.mean() - 0.5)
    assert mean.item() == pytest.approx(want_mean.item())
    assert pen.item() == pytest.approx((want_len - want_mean).square().mean().item())
    assert not mean.requires_grad

    torch.manual_seed(0)
    G = Generator(16, style_dim=32, n_mlp=2, channel_max=16)
    img, ex = G(torch.randn(2, 32), return_latents=True)
    pen, mean, lengths = g_path_regularize(img, ex["latents"], torch.zeros(()))
    assert torch.isfinite(pen) and torch.isfinite(mean) and lengths.shape == (2,)
    pen.backward()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)


def test_structure_loss_function():
    a = [torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 8, 8)]
    b = [torch.ones(2, 3, 4, 4) * 3, torch.zeros(2, 3, 8, 8)]
    assert structure_loss(a, a).item() == 0
    assert structure_loss(a, b).item() == pytest.approx((4 + 0) / 2)
    with pytest.raises(ValueError):
        structure_loss(a, b[:1])
    with pytest.raises(ValueError):
        StructureLoss(up_to=12)
    with pytest.raises(ValueError):
        StructureLoss(up_to=8, on="pixels")
    assert StructureLoss(up_to=32).n_blocks == 3  # the paper's 8, 16, 32 px
    with pytest.raises(ValueError):
        StructureLoss(up_to=4)


@pytest.mark.parametrize("on", ["rgb", "features"])
def test_structure_loss_zero_for_identical_and_gradient_only_to_target(on):
    torch.manual_seed(0)
    src = Generator(32, style_dim=32, n_mlp=2, channel_max=16).requires_grad_(False)
    tgt = copy.deepcopy(src).requires_grad_(True)
    sl = StructureLoss(up_to=8, weight=1.0, on=on)
    want = {"return_rgbs": on == "rgb", "return_features": on == "features"}
    wp = src.make_wplus(src.mapping(torch.randn(2, 32)))
    noise = src.make_noise(2)
    _, ex_t = tgt.synthesis(wp, noise=noise, **want)
    with torch.no_grad():
        _, ex_s = src.synthesis(wp, noise=noise, stop_res=8, **want)
    assert sl(ex_s, ex_t).item() == 0.0

    with torch.no_grad():  # perturb the target, then the loss is positive with grads on the target only
        for p in tgt.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    _, ex_t = tgt.synthesis(wp, noise=noise, **want)
    loss = sl(ex_s, ex_t)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is None for p in src.parameters())
    got = {n for n, p in tgt.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # Blocks above 8 px and the mapping network can not influence the 8 px output.
    assert got and all(tgt.layer_resolution(n) in (4, 8) for n in got)
    assert any(tgt.layer_resolution(n) == 8 for n in got)
