"""Generator / Discriminator: rosinality layout, arithmetic, options, gradients."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.networks.layers import ModulatedConv2d
from rosinality_layout import his_discriminator_table, his_generator_table

TINY_G = dict(size=16, style_dim=32, n_mlp=2, channel_max=16)
TINY_D = dict(size=16, channel_max=16)


def tiny_g(seed=0, noise_weight=None, **kw):
    torch.manual_seed(seed)
    g = Generator(**{**TINY_G, **kw}).eval()
    with torch.no_grad():   # non-zero biases / noise strengths so every term is exercised
        for name, p in g.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                p.normal_(0, 0.3)
            if noise_weight is not None and name.endswith("noise.weight"):
                p.fill_(noise_weight)
    return g


def tiny_d(seed=0, **kw):
    torch.manual_seed(seed)
    d = Discriminator(**{**TINY_D, **kw}).eval()
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return d


# ------------------------------------------------------------------------------------------
# rosinality's layout, derived from his architecture rules (model.py), independently of the
# implementation under test: tests/rosinality_layout.py (shared with the export tests).
@pytest.mark.parametrize("size,cm", [(32, 2), (64, 2), (256, 1)])
def test_state_dict_layout_is_rosinalitys(size, cm):
    with torch.device("meta"):          # full config-f widths, no memory
        g = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=cm)
        d = Discriminator(size, channel_multiplier=cm)
    got_g = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    got_d = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert got_g == his_generator_table(size, 512, 8, cm)
    assert got_d == his_discriminator_table(size, cm)
    assert g.n_latent == 2 * int(math.log2(size)) - 2
    assert g.num_layers == (int(math.log2(size)) - 2) * 2 + 1


def test_channel_max_caps_every_width():
    g = Generator(32, style_dim=32, n_mlp=1, channel_max=16)
    d = Discriminator(32, channel_max=16)
    assert set(g.channels.values()) == set(d.channels.values()) == {16}
    for m in (g, d):
        for k, v in m.state_dict().items():
            if k.endswith("conv.weight") or (k.endswith(".weight") and v.ndim == 4):
                assert max(v.shape[:3]) <= 17, (k, v.shape)     # 16, or 16 + the stddev feature


def test_config_round_trip_is_json():
    g, d = tiny_g(), tiny_d()
    cfg_g, cfg_d = json.loads(json.dumps(g.config)), json.loads(json.dumps(d.config))
    g2, d2 = Generator.from_config(cfg_g), Discriminator.from_config(cfg_d)
    assert g2.config == g.config and d2.config == d.config
    assert {k: v.shape for k, v in g2.state_dict().items()} == {k: v.shape for k, v in g.state_dict().items()}
    with pytest.raises(ValueError, match="unknown keys"):
        Generator.from_config({**cfg_g, "latent": 3})


# ------------------------------------------------------------------------------------------
# A naive per-sample reference of rosinality's arithmetic (explicit zero insertion and
# explicit padding + flipped-kernel convolution for upfirdn2d), to check the fused/grouped
# implementation and the ops' padding conventions.
def naive_upfirdn(x, k, up, down, p0, p1):
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (p0, p1, p0, p1))
    kk = torch.flip(k, [0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kk, groups=c)[:, :, ::down, ::down]


def naive_lrelu(x, b):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + b.view(shape), 0.2) * math.sqrt(2)


def naive_linear(m, x):
    y = x @ (m.weight * m.scale).t()
    b = m.bias * m.lr_mul
    return naive_lrelu(y, b) if m.activation else y + b


def naive_modconv(mc, x, style):
    outs = []
    for i in range(x.shape[0]):
        s = naive_linear(mc.modulation, style[i:i + 1])[0]
        w = mc.scale * mc.weight[0] * s.view(1, -1, 1, 1)
        if mc.demodulate:
            w = w / torch.sqrt(w.pow(2).sum([1, 2, 3], keepdim=True) + 1e-8)
        xi = x[i:i + 1]
        if mc.upsample:
            # transposed conv, stride 2 == zero insertion + full padding + flipped, transposed kernel
            k = w.shape[-1]
            z = naive_upfirdn(xi, torch.tensor([[1.0]]), 2, 1, 0, 0)[:, :, : 2 * xi.shape[2] - 1, : 2 * xi.shape[3] - 1]
            z = F.pad(z, (k - 1,) * 4)
            o = F.conv2d(z, torch.flip(w, [2, 3]))
            o = naive_upfirdn(o, mc.blur.kernel, 1, 1, 1, 1)
        else:
            o = F.conv2d(xi, w, padding=mc.kernel_size // 2)
        outs.append(o)
    return torch.cat(outs)


def naive_generator(g, z, noise):
    w = z * torch.rsqrt((z ** 2).mean(1, keepdim=True) + 1e-8)
    for m in list(g.style)[1:]:
        w = naive_linear(m, w)

    def styled(layer, x, nz):
        x = naive_modconv(layer.conv, x, w) + layer.noise.weight * nz
        return naive_lrelu(x, layer.activate.bias)

    x = g.input.input.repeat(z.shape[0], 1, 1, 1)
    x = styled(g.conv1, x, noise[0])
    skip = naive_modconv(g.to_rgb1.conv, x, w) + g.to_rgb1.bias
    for j, rgb in enumerate(g.to_rgbs):
        x = styled(g.convs[2 * j], x, noise[2 * j + 1])
        x = styled(g.convs[2 * j + 1], x, noise[2 * j + 2])
        skip = naive_modconv(rgb.conv, x, w) + rgb.bias + naive_upfirdn(skip, rgb.upsample.kernel, 2, 1, 2, 1)
    return skip


def naive_convlayer(seq, x):
    mods = list(seq)
    if hasattr(mods[0], "kernel"):
        x = naive_upfirdn(x, mods[0].kernel, 1, 1, 2 if mods[1].weight.shape[-1] == 3 else 1,
                          2 if mods[1].weight.shape[-1] == 3 else 1)
        mods = mods[1:]
        stride = 2
    else:
        stride = 1
    conv = mods[0]
    pad = 0 if stride == 2 else conv.weight.shape[-1] // 2
    x = F.conv2d(x, conv.weight * conv.scale, conv.bias, stride=stride, padding=pad)
    return naive_lrelu(x, mods[1].bias) if len(mods) > 1 else x


def naive_discriminator(d, img):
    x = naive_convlayer(d.convs[0], img)
    for blk in list(d.convs)[1:]:
        x = (naive_convlayer(blk.conv2, naive_convlayer(blk.conv1, x)) + naive_convlayer(blk.skip, x)) / math.sqrt(2)
    n, c, h, w = x.shape
    g = min(n, 4)
    y = x.view(g, n // g, 1, c, h, w)
    y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
    x = torch.cat([x, y.repeat(g, 1, h, w)], 1)
    x = naive_convlayer(d.final_conv, x).reshape(n, -1)
    return naive_linear(d.final_linear[1], naive_linear(d.final_linear[0], x))


@pytest.mark.parametrize("fused", [True, False, None], ids=["fused", "unfused", "auto"])
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_generator_matches_naive_reference(fused, train_mode):
    g = tiny_g()
    g.train(train_mode)
    for m in g.modules():
        if isinstance(m, ModulatedConv2d):
            m.fused = fused
    z = torch.randn(3, 32)
    noise = g.make_noise(3)
    with torch.no_grad():
        want = naive_generator(g, z, noise)
        got = g(z, noise=noise)
    assert got.shape == (3, 3, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_discriminator_matches_naive_reference():
    d = tiny_d()
    img = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(d(img), naive_discriminator(d, img), rtol=1e-4, atol=1e-5)


def test_same_seed_same_init_and_const_noise():
    a, b = tiny_g(seed=3), tiny_g(seed=3)
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(z, noise_mode="const"), b(z, noise_mode="const"), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
def test_noise_modes():
    g = tiny_g(noise_weight=1.0)
    z = torch.randn(2, 32)
    with torch.no_grad():
        c1, c2 = g(z, noise_mode="const"), g(z, noise_mode="const")
        n1, n2 = g(z, noise_mode="none"), g(z, noise_mode="none")
        r1, r2 = g(z), g(z)
        zeros = [torch.zeros(1, 1, r, r) for r in map(g.noise_resolution, range(g.num_layers))]
        explicit_zero = g(z, noise=zeros, noise_mode="random")
        buffers = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
        explicit_const = g(z, noise=buffers)
    assert torch.equal(c1, c2) and torch.equal(n1, n2)
    assert not torch.allclose(r1, r2)
    assert not torch.allclose(c1, n1)
    torch.testing.assert_close(explicit_zero, n1)
    torch.testing.assert_close(explicit_const, c1)
    with pytest.raises(ValueError, match="noise_mode"):
        g(z, noise_mode="fixed")
    with pytest.raises(ValueError, match="noise\\[1\\]"):
        g(z, noise=[None, torch.zeros(1, 1, 4, 4)] + [None] * (g.num_layers - 2))


def test_use_noise_false_reads_no_noise_and_keeps_the_layout():
    g, off = tiny_g(noise_weight=1.0), tiny_g(noise_weight=1.0, use_noise=False)
    assert g.state_dict().keys() == off.state_dict().keys()  # rosinality's names stay
    z = torch.randn(2, 32)
    with torch.no_grad():
        want = g(z, noise_mode="none")
        for mode in ("random", "const", "none"):
            torch.testing.assert_close(off(z, noise_mode=mode), want, rtol=0, atol=0)
        given = [torch.randn(2, 1, r, r) for r in map(g.noise_resolution, range(g.num_layers))]
        torch.testing.assert_close(off(z, noise=given), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="noise\\[1\\]"):  # a wrong shape is still refused
        off(z, noise=[None, torch.zeros(1, 1, 4, 4)] + [None] * (g.num_layers - 2))
    noise_weights = {n for n, _ in g.named_parameters() if n.endswith("noise.weight")}
    assert len(noise_weights) == g.num_layers
    assert off.unused_parameter_names() == noise_weights and g.unused_parameter_names() == set()
    assert off.config["use_noise"] is False and Generator.from_config(off.config).use_noise is False


def test_style_mixing_in_make_wplus():
    g = tiny_g()
    z1, z2 = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        w1, w2 = g.mapping(z1), g.mapping(z2)
        lat = g.make_wplus(w1, w2, 3)
        assert torch.equal(lat[:, :3], w1[:, None].expand(-1, 3, -1))
        assert torch.equal(lat[:, 3:], w2[:, None].expand(-1, g.n_latent - 3, -1))
        # random crossover in [1, L-1]
        torch.manual_seed(0)
        seen = set()
        for _ in range(20):
            lat = g.make_wplus(w1, w2)
            from_first = [bool(torch.equal(lat[:, i], w1)) for i in range(g.n_latent)]
            k = from_first.index(False)
            assert 1 <= k <= g.n_latent - 1 and all(from_first[:k]) and not any(from_first[k:])
            seen.add(k)
        assert len(seen) > 1
    with pytest.raises(ValueError, match="crossover"):
        g.make_wplus(w1, None, 2)


def test_forward_takes_z_w_or_wplus():
    g = tiny_g()
    z = torch.randn(2, 32)
    with torch.no_grad():
        w = g.mapping(z)
        img_z, ex = g(z, noise_mode="const", return_latents=True)
        assert torch.equal(ex["latents"], w[:, None].expand(-1, g.n_latent, -1))
        assert torch.equal(g(w, input_is="w", noise_mode="const"), img_z)
        assert torch.equal(g(ex["latents"], input_is="wplus", noise_mode="const"), img_z)
    import inspect
    params = inspect.signature(Generator.forward).parameters
    assert not {"truncation", "mix_latents", "wplus_prefix", "wplus_prefix_len"} & set(params)  # sampling.Sampler


def test_n_wplus_up_to_matches_the_layers_that_read_them():
    g = tiny_g()
    assert [g.n_wplus_up_to(r) for r in (4, 8, 16)] == [2, 4, 6]
    wp = g.make_wplus(g.mapping(torch.randn(2, 32))).detach().clone()
    for res, idx in ((4, 0), (8, 1)):
        k = g.n_wplus_up_to(res)
        wp2 = wp.clone()
        wp2[:, k:] += 1.0                       # touch only entries above res
        with torch.no_grad():
            _, a = g.synthesis(wp, noise_mode="const", return_rgbs=True)
            _, b = g.synthesis(wp2, noise_mode="const", return_rgbs=True)
        assert torch.equal(a["rgbs"][idx], b["rgbs"][idx])       # up to res: unchanged
        assert not torch.allclose(a["rgbs"][idx + 1], b["rgbs"][idx + 1])


def test_rgbs_and_features():
    g = tiny_g()
    z = torch.randn(2, 32)
    with torch.no_grad():
        img, ex = g(z, noise_mode="const", return_rgbs=True, return_features=True)
    assert [tuple(r.shape) for r in ex["rgbs"]] == [(2, 3, r, r) for r in (4, 8, 16)]
    assert [tuple(f.shape) for f in ex["features"]] == [(2, g.channels[r], r, r) for r in (4, 8, 16)]
    assert torch.equal(ex["rgbs"][-1], img)


def test_activation_swap_state_continues_the_same_run():
    g = tiny_g()
    wp = g.make_wplus(g.mapping(torch.randn(2, 32))).detach()
    noise = g.make_noise(2)
    with torch.no_grad():
        full = g.synthesis(wp, noise=noise)
        for res in (4, 8, 16):
            low, ex = g.synthesis(wp, noise=noise, stop_res=res)
            assert ex["state"][0] == res and low.shape == (2, 3, res, res)
            cont = g.synthesis(wp, noise=noise, start=ex["state"])
            torch.testing.assert_close(cont, full, rtol=0, atol=0)
        # another generator with the same widths continues the state; one with other widths refuses
        other = tiny_g(seed=5)
        _, ex = g.synthesis(wp, noise=noise, stop_res=8)
        swapped, ex2 = other.synthesis(wp, noise=noise, start=ex["state"], return_rgbs=True)
        assert swapped.shape == full.shape and not torch.allclose(swapped, full)
        assert len(ex2["rgbs"]) == 1
        wide = tiny_g(channel_max=32)
        with pytest.raises(ValueError, match="start features"):
            wide.synthesis(wp, start=ex["state"])
        with pytest.raises(ValueError, match="stop_res"):
            g.synthesis(wp, start=ex["state"], stop_res=4)


def test_layer_resolution():
    g, d = tiny_g(size=32), tiny_d(size=32)
    LR = Generator.layer_resolution
    assert LR("style.3.weight") == "mapping"
    assert LR("input.input") == LR("conv1.conv.weight") == LR("to_rgb1.bias") == LR("noises.noise_0") == 4
    assert LR("convs.0.conv.weight") == LR("convs.1.noise.weight") == LR("to_rgbs.0.bias") == 8
    assert LR("noises.noise_1") == LR("noises.noise_2") == 8 and LR("noises.noise_3") == 16
    assert LR("convs.10.conv.weight") == 256 and LR("convs.1.conv.weight") == 8   # no substring matching
    for name, t in g.state_dict().items():
        r = LR(name)
        if name.startswith("noises."):
            assert t.shape[-1] == r
    with pytest.raises(ValueError):
        LR("convs.conv.weight")
    assert d.layer_resolution("convs.0.0.weight") == 32
    assert d.layer_resolution("convs.1.conv1.0.weight") == 32
    assert d.layer_resolution("convs.2.skip.0.kernel") == 16
    assert d.layer_resolution("convs.3.conv2.1.weight") == 8
    assert d.layer_resolution("final_linear.1.bias") == d.layer_resolution("final_conv.0.weight") == "head"
    assert {d.layer_resolution(k) for k in d.state_dict()} == {32, 16, 8, "head"}
    with pytest.raises(ValueError):
        d.layer_resolution("convs.9.conv1.0.weight")


def test_shape_errors_name_the_boundary():
    g, d = tiny_g(), tiny_d()
    with pytest.raises(ValueError, match="mapping z"):
        g.mapping(torch.randn(2, 31))
    with pytest.raises(ValueError, match="wplus"):
        g(torch.randn(2, 32), input_is="wplus")
    with pytest.raises(ValueError, match="Discriminator input"):
        d(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="stddev group"):
        d(torch.randn(6, 3, 16, 16))


def test_discriminator_output_shape():
    d = tiny_d()
    for n in (1, 2, 4, 8):
        assert d(torch.randn(n, 3, 16, 16)).shape == (n, 1)


def test_second_order_gradients_through_g_and_d():
    g, d = tiny_g(), tiny_d()
    g.train(), d.train()
    # path-length style: grad of the image w.r.t. W+, then backward through it
    z = torch.randn(2, 32)
    img, ex = g(z, return_latents=True)
    (grad,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ex["latents"], create_graph=True)
    grad.square().sum().backward()
    assert g.convs[0].conv.weight.grad is not None and g.convs[0].conv.weight.grad.abs().sum() > 0
    assert g.style[1].weight.grad is not None
    # R1 style: grad of D(real) w.r.t. real, then backward through it
    real = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
    grad.square().sum().backward()
    assert d.convs[1].conv1[0].weight.grad.abs().sum() > 0
    assert d.final_linear[0].weight.grad.abs().sum() > 0


def test_with_lr_mlp_keeps_the_function():
    torch.manual_seed(0)
    G = Generator(16, style_dim=16, n_mlp=2, channel_max=16, lr_mlp=0.01).double()
    H = G.with_lr_mlp(0.1)
    assert H.lr_mlp == 0.1 and H.config == {**G.config, "lr_mlp": 0.1}
    assert torch.allclose(H.style[1].weight, G.style[1].weight * 0.1)
    z = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(H(z, noise_mode="const"), G(z, noise_mode="const"), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="lr_mlp must be > 0"):
        G.with_lr_mlp(0)
