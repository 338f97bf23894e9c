"""The paired comparison statistics on constructed data: a known effect, known nulls, Holm by hand,
TOST, the one-seed cases, and the mixed model against plain formulas."""
import math

import numpy as np
import pytest
from scipy import stats

from cartoon_stylegan.metrics.stats import adjust_family, compare_variants, holm, paired_difference


def _pair(rng, seeds, latents, effect=0.0, sd_seed=0.05, sd_latent=0.03, sd_resid=0.05):
    """Two variants' per-latent values: a shared latent difficulty (it cancels in the pair), one
    training-run offset per variant and seed, a latent x variant term and residual noise."""
    shared = rng.normal(0, 0.2, latents)
    a = (0.5 + effect + shared[None] + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_latent, latents)[None]
         + rng.normal(0, sd_resid, (seeds, latents)))
    b = 0.5 + shared[None] + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_resid, (seeds, latents))
    return a, b


def test_holm_step_down_by_hand():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06, monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None is not part of the family (m = 2 here) and stays None; adjusted p's are capped at 1
    assert holm([0.02, None, 0.6]) == [pytest.approx(0.04), None, pytest.approx(0.6)]
    assert holm([0.7, 0.8]) == [1.0, 1.0]
    assert holm([]) == []


def test_known_effect_is_detected():
    rng = np.random.default_rng(7)
    a, b = _pair(rng, seeds=6, latents=32, effect=0.25)
    d = paired_difference(a, b, margin=0.02)
    assert d.p < 0.005 and d.ci[0] > 0 and d.ci[0] < 0.25 < d.ci[1]
    assert d.n_seeds == 6 and d.n_latents == 32 and d.df == 5
    (row,) = adjust_family([d])
    assert row.verdict == "different" and row.p_holm == d.p


def test_known_nulls_are_not_called_different_at_more_than_the_nominal_rate():
    """50 constructed nulls (fixed RNG): <= 10 % false positives at alpha 0.05, while a t-test that
    pools the latents of the same data (ignoring that they share a training run) is fooled often."""
    rng = np.random.default_rng(2024)
    ours = pooled = 0
    for _ in range(50):
        a, b = _pair(rng, seeds=4, latents=32)
        ours += paired_difference(a, b).p < 0.05
        pooled += stats.ttest_1samp((a - b).ravel(), 0.0).pvalue < 0.05
    assert ours <= 5
    assert pooled >= 20


def test_interval_covers_the_true_difference_at_about_the_stated_level():
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(200):
        a, b = _pair(rng, seeds=3, latents=16, effect=0.1)
        lo, hi = paired_difference(a, b).ci
        hits += lo < 0.1 < hi
    assert 0.92 <= hits / 200 <= 0.995


def test_one_value_per_seed_is_the_paired_t_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(280, 2, 5), rng.normal(281, 2, 5)
    d = paired_difference(a, b, margin=1.0)
    want = stats.ttest_rel(a, b)
    assert d.p == pytest.approx(want.pvalue, rel=1e-10) and d.df == 4
    assert d.mean == pytest.approx(float(np.mean(a - b)))
    half = stats.t.ppf(0.975, 4) * np.std(a - b, ddof=1) / math.sqrt(5)
    assert d.ci == pytest.approx((d.mean - half, d.mean + half))
    # TOST: the larger one-sided p of H0 mean <= -margin and H0 mean >= margin
    se = np.std(a - b, ddof=1) / math.sqrt(5)
    want_tost = max(stats.t.sf((d.mean + 1) / se, 4), stats.t.cdf((d.mean - 1) / se, 4))
    assert d.p_tost == pytest.approx(want_tost, rel=1e-10)


def test_one_seed():
    one = paired_difference(np.array([[280.0]]), np.array([[283.0]]))
    assert one.p is None and one.scope == "1 seed, one value per run" and one.mean == -3.0
    (row,) = adjust_family([one])
    assert row.verdict == "not testable"
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.1, (1, 40)), rng.normal(0.5, 0.1, (1, 40))
    lat = paired_difference(a, b)
    assert lat.p == pytest.approx(stats.ttest_1samp(a[0] - b[0], 0.0).pvalue, rel=1e-10)
    assert lat.scope.startswith("1 seed")


def test_mixed_model_variance_against_plain_formulas():
    rng = np.random.default_rng(5)
    s, n = 3, 6
    d = rng.normal(0, 1, (s, n)) + rng.normal(0, 1, (s, 1)) + rng.normal(0, 2, (1, n))
    grand = sum(map(sum, d.tolist())) / (s * n)
    rows = [sum(r) / n for r in d.tolist()]
    cols = [sum(d[i][j] for i in range(s)) / s for j in range(n)]
    ms_s = n * sum((r - grand) ** 2 for r in rows) / (s - 1)
    ms_l = s * sum((c - grand) ** 2 for c in cols) / (n - 1)
    ms_e = sum((d[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(s) for j in range(n)) / ((s - 1) * (n - 1))
    assert ms_l > ms_e  # the latent term is there (sd 2)
    got = paired_difference(d, np.zeros_like(d))
    assert got.se == pytest.approx(math.sqrt((ms_s + ms_l - ms_e) / (s * n)), rel=1e-12)
    assert got.components == pytest.approx({"seed": max(0.0, (ms_s - ms_e) / n), "latent": (ms_l - ms_e) / s,
                                            "resid": ms_e})
    # no latent term: the interval is that of the seed means (one t-test over S means)
    flat = rng.normal(0, 1, (s, 1)) + rng.normal(0, 0.01, (s, n))
    flat -= flat.mean(0, keepdims=True) - flat.mean()  # every latent's mean the same: MS_L = 0
    got = paired_difference(flat, np.zeros_like(flat))
    assert got.se == pytest.approx(np.std(flat.mean(1), ddof=1) / math.sqrt(s), rel=1e-9)


def test_equivalence_needs_the_interval_inside_the_margin():
    rng = np.random.default_rng(9)
    a, b = _pair(rng, seeds=5, latents=32, sd_seed=0.002, sd_latent=0.002, sd_resid=0.01)
    close = paired_difference(a, b, margin=0.02)
    wide = paired_difference(a, b, margin=0.001)
    none = paired_difference(a, b)
    rows = adjust_family([close, wide, none])
    assert [r.verdict for r in rows] == ["equivalent", "inconclusive", "inconclusive"]
    assert none.p_tost is None and none.p_tost_holm is None
    # a real difference smaller than the margin: equivalent, flagged nonzero
    a, b = _pair(np.random.default_rng(1), seeds=5, latents=32, effect=0.005, sd_seed=0.0005, sd_latent=0.0005,
                 sd_resid=0.001)
    (row,) = adjust_family([paired_difference(a, b, margin=0.02)])
    assert row.verdict == "equivalent" and row.nonzero and row.ci[0] > 0


def test_identical_runs_and_missing_values():
    x = np.full((3, 4), 0.7)
    same = paired_difference(x, x.copy(), margin=0.01)
    assert same.p == 1.0 and same.p_tost == 0.0 and same.ci == (0.0, 0.0)
    a = np.array([[1.0], [2.0], [np.nan], [4.0]])
    b = np.array([[0.5], [1.0], [1.0], [3.0]])
    d = paired_difference(a, b)  # the seed without a value is left out
    assert d.n_seeds == 3 and d.p == pytest.approx(stats.ttest_rel([1, 2, 4], [0.5, 1, 3]).pvalue)


def test_compare_variants_pairs_on_common_seeds_and_refuses_unpaired_shapes():
    table = {"a": {"0": [1.0], "1": [2.0], "2": [3.0]}, "b": {"0": [0.0], "1": [1.5], "3": [9.0]},
             "c": {"0": [1.0], "1": [2.0]}}
    rows = compare_variants(table, metric="fid", margin=1.0)
    assert [(r.a, r.b) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert rows[0].n_seeds == 2 and rows[0].mean == pytest.approx(0.75)
    with pytest.raises(ValueError, match="do not pair"):
        compare_variants({"a": {"0": [1.0, 2.0]}, "b": {"0": [1.0]}}, metric="structure_ratio", margin=0.1)
