"""The structure distance per latent: the values behind eval's figures, paired across variants by latent."""
import numpy as np
import pytest
import torch

from cartoon_stylegan.metrics import structure_distance, structure_scores
from cartoon_stylegan.networks import Generator


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(base, size=16, mode="bilinear") * 255).to(torch.uint8)


def test_per_latent_values_average_to_the_scores():
    src, tgt = _images(12, 0), _images(12, 1)
    tgt[:6] = src[:6]  # half the pairs kept
    s = structure_scores(src, tgt)
    per = s["per_latent"]
    assert all(len(v) == 12 for v in per.values())
    assert np.mean(per["matched"]) == pytest.approx(s["matched"], rel=1e-5)
    assert np.mean(per["ratio"]) == pytest.approx(s["ratio"], rel=1e-5)
    assert np.mean(per["mean_rank"]) == pytest.approx(s["mean_rank"], rel=1e-12)
    # latent i is pair i: the kept pairs are the close ones (not 0: each set is centred on its own mean)
    assert max(per["matched"][:6]) < min(per["matched"][6:])
    assert per["mean_rank"][:6] == [1.0] * 6


def test_the_same_latents_for_every_variant():
    """Eval scores every variant on the latents of one seed: the source's side is the same, so latent i
    pairs across variants."""
    torch.manual_seed(0)
    src = Generator(16, style_dim=16, n_mlp=1, channel_max=8)
    variants = [Generator(16, style_dim=16, n_mlp=1, channel_max=8) for _ in range(2)]
    a, b = (structure_distance(src, v, n=6, seed=3, batch=4)["per_latent"]["matched"] for v in variants)
    same = structure_distance(src, src, n=6, seed=3, batch=4)["per_latent"]["matched"]
    assert max(same) < 1e-5 and a != b
    again = structure_distance(src, variants[0], n=6, seed=3, batch=4)["per_latent"]["matched"]
    assert again == a


def test_structure_at_each_resolution_tells_low_from_high_frequency_agreement():
    """A variant that shares only the source's coarse layout agrees at 4-8 px and not at full
    resolution; an identical one agrees everywhere; an unrelated one nowhere (ratio ~ 1)."""
    import torch

    from cartoon_stylegan.metrics.structure import structure_by_resolution

    g = torch.Generator().manual_seed(0)
    src = torch.rand(32, 3, 32, 32, generator=g) * 2 - 1
    coarse = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(src, 8), scale_factor=8, mode="nearest")
    detail = torch.rand(32, 3, 32, 32, generator=g) * 2 - 1
    tgt = (coarse + (detail - torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(detail, 8),
                                                              scale_factor=8, mode="nearest"))).clamp(-1, 1)
    res = (4, 8, 16, 32)
    same = structure_by_resolution(src, src, res)
    assert all(same[r]["ratio"] < 1e-6 and same[r]["mean_rank"] == 1 for r in res)
    layout = structure_by_resolution(src, tgt, res)
    assert layout[4]["ratio"] < 0.2 and layout[32]["ratio"] > 0.6 and layout[32]["ratio"] > 3 * layout[4]["ratio"]
    other = structure_by_resolution(src, src[torch.randperm(32, generator=g)], res)
    assert all(0.7 < other[r]["ratio"] < 1.3 for r in res)
