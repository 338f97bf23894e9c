"""sampling: the one home of FreezeSG's W+ prefix and of the truncation centre; every consumer agrees with it."""
import numpy as np
import pytest
import torch

from cartoon_stylegan.imageutil import to_uint8
from cartoon_stylegan.metrics import GeneratorDataset, structure_distance
from cartoon_stylegan.metrics.structure import sample_pairs
from cartoon_stylegan.networks import Generator
from cartoon_stylegan.sampling import PREFIX_META_KEY, Sampler, as_sampler, truncation_center
from cartoon_stylegan.swap import swap_grid

K = 4  # W+ entries of the layers <= 8 px


def _g(seed, size=16):
    torch.manual_seed(seed)
    return Generator(size, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16).eval()


@pytest.fixture(scope="module")
def pair():
    return _g(0), _g(1)


def _truncated_wplus(G, z, psi, z2=None, crossover=None):
    with torch.no_grad():
        ws = [G.mapping(v) if v is not None else None for v in (z, z2)]
        if psi != 1:
            c = truncation_center(G)
            ws = [c + psi * (w - c) if w is not None else None for w in ws]
        return G.make_wplus(ws[0], ws[1], crossover)


@pytest.mark.parametrize("psi", [1.0, 0.6])
@pytest.mark.parametrize("mix", [None, 2, 5])  # crossover inside / after the prefix
def test_prefix_comes_from_the_source_mapping_and_the_rest_from_the_target(pair, psi, mix):
    G_src, G = pair
    z, z2 = torch.randn(3, 32), torch.randn(3, 32)
    z_2 = None if mix is None else z2
    wp = Sampler(G, source=G_src, prefix_len=K, truncation=psi).wplus(z, z_2, mix)
    src, tgt = _truncated_wplus(G_src, z, psi, z_2, mix), _truncated_wplus(G, z, psi, z_2, mix)
    assert wp.shape == (3, G.n_latent, 32)
    assert torch.equal(wp[:, :K], src[:, :K]) and torch.equal(wp[:, K:], tgt[:, K:])
    assert torch.equal(Sampler(G, truncation=psi).wplus(z, z_2, mix), tgt)  # no prefix: the target's own


def test_random_crossover_is_shared_by_source_and_target(pair):
    G_src, G = pair
    s = Sampler(G, source=G_src, prefix_len=K)
    z, z2 = torch.randn(2, 32), torch.randn(2, 32)
    torch.manual_seed(3)
    wp = s.wplus(z, z2)
    torch.manual_seed(3)
    cross = int(torch.randint(1, G.n_latent, ()).item())
    assert torch.equal(wp, s.wplus(z, z2, cross))


def test_prefix_has_no_graph_and_target_part_keeps_it(pair):
    G_src, G = pair
    G = _g(1).train()  # a generator whose mapping trains
    wp = Sampler(G, source=G_src, prefix_len=K).wplus(torch.randn(2, 32))
    wp.sum().backward()
    assert all(p.grad is not None for p in G.style.parameters())
    assert all(p.grad is None for p in G_src.parameters())


def test_images_are_the_synthesis_of_the_wplus(pair):
    G_src, G = pair
    s = Sampler(G, source=G_src, prefix_len=K)
    z = torch.randn(2, 32)
    with torch.no_grad():
        img, ex = s(z, noise_mode="const", return_latents=True)
        assert torch.equal(ex["latents"], s.wplus(z))
        assert torch.equal(img, G.synthesis(s.wplus(z), noise_mode="const"))


def test_truncation_center_is_cached_until_the_mapping_changes():
    G = _g(2)
    c = truncation_center(G)
    assert c.shape == (1, 32) and not c.requires_grad
    assert truncation_center(G) is c
    with torch.no_grad():
        z = torch.randn(4096, 32, generator=torch.Generator().manual_seed(7919))
        torch.testing.assert_close(c, G.mapping(z).mean(0, keepdim=True), rtol=0, atol=0)
    with torch.no_grad():
        G.style[1].weight.add_(0.1)
    c2 = truncation_center(G)
    assert c2 is not c and not torch.equal(c2, c)
    at_centre = Sampler(G, truncation=0.0).wplus(torch.randn(3, 32))
    torch.testing.assert_close(at_centre, c2[:, None].expand(3, G.n_latent, -1), rtol=0, atol=0)


def test_for_variant_reads_the_checkpoint_meta(pair):
    G_src, G = pair
    s = Sampler.for_variant(G, G_src, {PREFIX_META_KEY: K, "step": 3}, truncation=0.5)
    assert (s.prefix_len, s.source, s.truncation) == (K, G_src, 0.5)
    assert Sampler.for_variant(G, None, {}).prefix_len == 0
    assert Sampler.for_variant(G, G_src, s.meta()).prefix_len == K
    with pytest.raises(ValueError, match="source"):
        Sampler(G, prefix_len=2)
    with pytest.raises(ValueError, match="prefix_len"):
        Sampler(G, source=G_src, prefix_len=G.n_latent + 1)
    assert as_sampler(G).G is G and as_sampler(s) is s and as_sampler(s, truncation=0.7).truncation == 0.7


# ---------------------------------------------------------------------------------- consumers agree
@pytest.fixture(scope="module")
def variant(pair):
    G_src, G = pair
    return Sampler(G, source=G_src, prefix_len=K, truncation=0.7)


def test_generator_dataset_samples_through_the_sampler(variant):
    ds = GeneratorDataset(variant, 5, seed=11, batch=5, noise_mode="const")
    z = torch.randn(5, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = to_uint8(variant(z, noise_mode="const"))
    assert torch.equal(torch.stack([ds[i] for i in range(5)]), want)


def test_structure_pairs_sample_through_the_samplers(pair, variant):
    G_src, _ = pair
    src = Sampler(G_src, truncation=0.7)
    a, b = sample_pairs(src, variant, n=6, seed=4, batch=4)
    z = torch.randn(6, 32, generator=torch.Generator().manual_seed(4))
    noise = [getattr(G_src.noises, f"noise_{i}") for i in range(G_src.num_layers)]  # the source's, for both
    with torch.no_grad():
        assert torch.equal(a, to_uint8(src(z, noise=noise)))
        assert torch.equal(b, to_uint8(variant(z, noise=noise)))
    same = structure_distance(variant, variant, n=8, seed=0)
    assert same["matched"] == pytest.approx(0.0, abs=1e-5)


def test_swap_grid_target_row_is_the_variant_sample(pair, variant):
    G_src, G = pair
    seeds = [5, 6, 7]
    grid, labels = swap_grid(G_src, variant, seeds=seeds, resolutions=[8], truncation=0.5, upscale=1, pad=0)
    size = G.size
    margin = grid.shape[1] - len(seeds) * size
    z = torch.stack([torch.randn(32, generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        rows = [Sampler(G_src, truncation=0.5)(z), variant.replace(truncation=0.5)(z)]
    for i, img in enumerate(rows):  # rows "source", "target"
        want = to_uint8(img).permute(0, 2, 3, 1).numpy()
        got = grid[i * size:(i + 1) * size, margin:].reshape(size, len(seeds), size, 3).transpose(1, 0, 2, 3)
        assert np.array_equal(got, want), labels[i]
