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
