"""Layer swapping: weight swap, activation swap, the labelled grid."""
from __future__ import annotations

import pytest
import torch

from cartoon_stylegan.networks import Generator
from cartoon_stylegan.swap import activation_swap, row_labels, source_share, swap_grid, weight_swap

SIZE = 16


def tiny(seed, size=SIZE):
    torch.manual_seed(seed)
    return Generator(size, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=32)


@pytest.fixture(scope="module")
def pair():
    return tiny(0), tiny(1)


@pytest.fixture(scope="module")
def z():
    return torch.randn(3, 32, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def test_weight_swap_at_final_resolution_is_the_source(pair, z):
    g_src, g_tgt = pair
    g = weight_swap(g_src, g_tgt, SIZE)
    assert torch.equal(g(z, noise_mode="const"), g_src(z, noise_mode="const"))
    for name, t in g.state_dict().items():
        assert torch.equal(t, g_src.state_dict()[name]), name


@torch.no_grad()
def test_weight_swap_below_the_first_block_is_the_target(pair, z):
    g_src, g_tgt = pair
    g = weight_swap(g_src, g_tgt, 2, mapping="target")
    assert torch.equal(g(z, noise_mode="const"), g_tgt(z, noise_mode="const"))
    # mapping="source" keeps the source's mapping network: the target's synthesis with the source's w
    h = weight_swap(g_src, g_tgt, 2, mapping="source")
    wp = g_src.make_wplus(g_src.mapping(z))
    assert torch.equal(h(z, noise_mode="const"), g_tgt.synthesis(wp, noise_mode="const"))


@torch.no_grad()
def test_weight_swap_takes_layers_by_resolution(pair):
    g_src, g_tgt = pair
    g = weight_swap(g_src, g_tgt, 8, mapping="target")
    sd, ss, st = g.state_dict(), g_src.state_dict(), g_tgt.state_dict()
    for name in sd:
        r = Generator.layer_resolution(name)
        want = st if r == "mapping" or r > 8 else ss
        assert torch.equal(sd[name], want[name]), name
    assert any(Generator.layer_resolution(n) == 16 for n in sd)     # both sides are exercised
    # a copy: editing it leaves the inputs alone
    before = g_src.conv1.conv.weight.clone()
    g.conv1.conv.weight.add_(1.0)
    assert torch.equal(g_src.conv1.conv.weight, before)


@torch.no_grad()
def test_weight_swap_blend(pair, z):
    g_src, g_tgt = pair
    g = weight_swap(g_src, g_tgt, 8, blend_width=0.5)
    sd, ss, st = g.state_dict(), g_src.state_dict(), g_tgt.state_dict()
    for name in ("conv1.conv.weight", "convs.0.conv.weight", "convs.2.conv.weight", "to_rgbs.1.bias"):
        a = source_share(Generator.layer_resolution(name), 8, 0.5)
        torch.testing.assert_close(sd[name], a * ss[name] + (1 - a) * st[name])
    assert 0.5 < source_share(8, 8, 0.5) < 1 and 0 < source_share(16, 8, 0.5) < 0.5
    assert source_share(4, 8, 0.5) > source_share(8, 8, 0.5)
    assert torch.equal(sd["noises.noise_0"], ss["noises.noise_0"])       # noise is never averaged
    assert torch.equal(sd["noises.noise_4"], st["noises.noise_4"])
    tiny_blend = weight_swap(g_src, g_tgt, 8, blend_width=1e-3)(z, noise_mode="const")
    torch.testing.assert_close(tiny_blend, weight_swap(g_src, g_tgt, 8)(z, noise_mode="const"))


def _swapped_by_hooks(g_src, g_tgt, wp, res):
    """Reference: the target's synthesis with a forward hook that replaces the output of the layer
    ending block ``res`` (conv1 at 4 px, convs[2j+1] above) by the source's (the reference code's
    swap_layer_tensor). Everything else -- the RGB skip path included -- stays the target's."""
    def last_conv(g):
        return g.conv1 if res == 4 else g.convs[2 * (res.bit_length() - 1 - 3) + 1]

    saved = {}
    h = last_conv(g_src).register_forward_hook(lambda m, i, o: saved.setdefault("x", o))
    g_src.synthesis(wp, noise_mode="const")
    h.remove()
    h = last_conv(g_tgt).register_forward_hook(lambda m, i, o: saved["x"])
    try:
        return g_tgt.synthesis(wp, noise_mode="const")
    finally:
        h.remove()


@torch.no_grad()
def test_activation_swap_replaces_features_and_keeps_the_target_rgb_path(pair, z):
    g_src, g_tgt = pair
    wp = g_src.make_wplus(g_src.mapping(z))
    src_img = g_src.synthesis(wp, noise_mode="const")
    tgt_img = g_tgt.synthesis(wp, noise_mode="const")
    assert torch.equal(activation_swap(g_src, g_tgt, wp, 2), tgt_img)
    for r in (4, 8, SIZE):
        img = activation_swap(g_src, g_tgt, wp, r)
        assert img.shape == src_img.shape
        torch.testing.assert_close(img, _swapped_by_hooks(g_src, g_tgt, wp, r), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(img, src_img) and not torch.allclose(img, tgt_img)
    # not a weight swap: there the low-resolution RGB path is the source's too
    by_weights = weight_swap(g_src, g_tgt, 8).synthesis(wp, noise_mode="const")
    assert not torch.allclose(activation_swap(g_src, g_tgt, wp, 8), by_weights, atol=1e-4)


def test_swap_rejects_bad_arguments(pair):
    g_src, g_tgt = pair
    with pytest.raises(ValueError):
        weight_swap(g_src, tiny(2, size=32), 8)
    with pytest.raises(ValueError):
        weight_swap(g_src, g_tgt, 12)
    with pytest.raises(ValueError):
        weight_swap(g_src, g_tgt, 32)
    with pytest.raises(ValueError):
        weight_swap(g_src, g_tgt, 8, mapping="both")
    with pytest.raises(ValueError):
        swap_grid(g_src, g_tgt, seeds=[0], kind="pixels")


@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_swap_grid_shape_and_labels(pair, kind):
    g_src, g_tgt = pair
    seeds, res = [0, 1, 2], [4, 8, 16]
    img, labels = swap_grid(g_src, g_tgt, seeds=seeds, resolutions=res, kind=kind, truncation=0.7,
                            upscale=2, pad=2)
    expected = [f"{kind}: src<={r}px" if kind == "weight" else f"act: src feat @{r}px" for r in res]
    assert labels == row_labels(res, kind) == ["source", "target"] + expected
    tile = SIZE * 2
    n_rows = 2 + len(res)
    assert img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] == n_rows * (tile + 2) - 2
    grid_w = len(seeds) * (tile + 2) - 2
    margin = img.shape[1] - grid_w
    assert margin > 20                                                     # room for the labels
    assert (img[:, : margin - 2] < 128).any()                               # some text was drawn
    row = lambda i: img[i * (tile + 2): i * (tile + 2) + tile, margin:]    # noqa: E731
    if kind == "weight":  # the last weight-swap row (source layers everywhere, source mapping) is the source
        assert (row(0).astype(int) - row(n_rows - 1).astype(int)).__abs__().max() <= 1
    assert (row(0).astype(int) - row(1).astype(int)).__abs__().max() > 10


def test_swap_grid_default_resolutions_and_random_noise(pair):
    g_src, g_tgt = pair
    img, labels = swap_grid(g_src, g_tgt, seeds=[3, 4], truncation=1.0, noise_mode="random")
    assert labels[2:] == [f"weight: src<={r}px" for r in (4, 8, 16)]
    again, _ = swap_grid(g_src, g_tgt, seeds=[3, 4], truncation=1.0, noise_mode="random")
    assert (img == again).all()
