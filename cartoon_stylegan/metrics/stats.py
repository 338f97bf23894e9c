"""Comparing fine-tuning variants: paired differences, Holm's adjustment, equivalence (TOST).

Design. Every variant is trained once per seed (``finetune.seeds``) and evaluated on the same
latents (eval draws them from one seed), so the data of a metric is a table ``x[variant][seed]``
of per-latent values (the structure distance: one value per latent, the same latents in every
run) or of one value per run (FID, KID, precision, recall). Two variants A and B are compared
on the seeds both have, by the paired differences ``d[s, i] = A[s, i] - B[s, i]`` (the same
training seed index, the same latent).

Model (a linear mixed model, not a bootstrap). Latents are *crossed* with seeds (latent i is
the same z in every run), so the differences follow

    d[s, i] = mu + u_s + v_i + e[s, i],   u ~ N(0, s2_seed), v ~ N(0, s2_latent), e ~ N(0, s2_resid)

with mu the difference the methods make. For this balanced design the moment (ANOVA) estimates
are closed-form: with the mean squares of seeds, latents and residual (MS_S, MS_L, MS_E),

    mu_hat = mean(d),   Var(mu_hat) = (MS_S + max(0, MS_L - MS_E)) / (S n)

(= s2_seed / S + s2_latent / n + s2_resid / (S n) when both components are positive), and a
t reference distribution with S - 1 degrees of freedom (those of the seed term, which holds
most of the variance: "containment" df). With one value per run (n = 1) this is the paired
t-test over seeds. The seed term never pools into the residual: a latent-level test treats the
latents of one trained pair as replicates of the training run and calls seed-to-seed noise a
difference.

Why this and not a bootstrap (resampling seeds, then latents within seed) -- measured on
constructed nulls (two variants, seed-level noise sd 0.05 per run, latent x variant sd 0.03,
residual sd 0.05, 32 latents; 1000 draws each, rejections at 0.05):

=======  =================  ======================  ===========================
seeds    this model         hierarchical bootstrap  t-test pooling the latents
=======  =================  ======================  ===========================
2        0.018              0.380                   0.664
3        0.048              0.226                   0.634
4        0.043              0.183                   0.651
6        0.040              0.125                   0.623
=======  =================  ======================  ===========================

With 2..6 seeds the bootstrap has at most S^S resamples of the seeds and its percentile
interval is far too narrow. Satterthwaite's df instead of S - 1 rejected 6-8 % at 3 seeds
(the plug-in df grow exactly when the seed mean square is small by chance); S - 1 is
conservative when the latent x variant term is large (0.009 at sd 0.1).

One seed (S = 1): FID-like metrics are *not testable* (one value per variant); per-latent
metrics are tested over the latents of the one trained pair (t-test, n - 1 df), which speaks
for those two trained models, not for the methods (``scope`` says so).

Tests and verdicts over a family (all pairs x metrics): the two-sided p of H0: mu = 0, and
the TOST p of H0: |mu| >= margin (the larger of the two one-sided p's), each Holm-adjusted
across the family. ``different``: adjusted p < alpha; ``equivalent``: adjusted TOST p < alpha
(when both hold the difference is real but inside the margin: ``equivalent``, flagged
``nonzero``); else ``inconclusive``. Intervals: ``level`` (95 %) confidence intervals of mu,
not adjusted for multiplicity.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["METHOD", "Difference", "paired_difference", "holm", "compare_variants", "adjust_family"]

METHOD = ("linear mixed model on the paired differences, crossed random effects of seed and latent "
          "(balanced moment estimates, t with seeds - 1 df; one value per seed: paired t-test); "
          "Holm across all pairs x metrics; equivalence by TOST against the metric's margin")


@dataclass
class Difference:
    """One comparison A - B of one metric (see the module docstring)."""
    metric: str
    a: str
    b: str
    mean: float = math.nan
    se: float = math.nan
    df: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    p: float | None = None
    p_tost: float | None = None
    margin: float = math.nan
    n_seeds: int = 0
    n_latents: int = 1
    scope: str = ""
    components: dict = field(default_factory=dict)
    p_holm: float | None = None
    p_tost_holm: float | None = None
    verdict: str = "not testable"
    nonzero: bool = False

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ci"] = list(self.ci)
        return out


def _mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """(MS_seed, MS_latent, MS_resid) of a complete S x n table (S, n >= 2)."""
    s, n = d.shape
    grand = d.mean()
    rows, cols = d.mean(1), d.mean(0)
    ms_s = n * float(((rows - grand) ** 2).sum()) / (s - 1)
    ms_l = s * float(((cols - grand) ** 2).sum()) / (n - 1)
    resid = d - rows[:, None] - cols[None, :] + grand
    ms_e = float((resid ** 2).sum()) / ((s - 1) * (n - 1))
    return ms_s, ms_l, ms_e


def _mixed(d: np.ndarray) -> tuple[float, float, float, str, dict]:
    """(mean, se, df, scope, variance components) of the paired differences d (S x n)."""
    s, n = d.shape
    mean = float(d.mean())
    if s >= 2 and n == 1:
        x = d[:, 0]
        return mean, math.sqrt(float(x.var(ddof=1)) / s), s - 1.0, f"{s} seeds", {"seed": float(x.var(ddof=1))}
    if s == 1:  # the latents of one trained pair
        x = d[0]
        return (mean, math.sqrt(float(x.var(ddof=1)) / n), n - 1.0, "1 seed: this trained pair's latents only",
                {"latent+resid": float(x.var(ddof=1))})
    ms_s, ms_l, ms_e = _mean_squares(d)
    latent_part = max(0.0, ms_l - ms_e)
    var = (ms_s + latent_part) / (s * n)
    components = {"seed": max(0.0, (ms_s - ms_e) / n), "latent": latent_part / s, "resid": ms_e}
    return mean, math.sqrt(var), s - 1.0, f"{s} seeds x {n} latents", components


def paired_difference(a: np.ndarray, b: np.ndarray, *, metric: str = "", names: tuple[str, str] = ("A", "B"),
                      margin: float = math.nan, level: float = 0.95) -> Difference:
    """A - B from two S x n tables (row s: the same seed in both; column i: the same latent; n = 1
    for one value per run). Seeds without a finite value are left out, then latents with a
    non-finite value in any remaining seed."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired_difference: {metric or 'metric'}: shapes {a.shape} and {b.shape} do not pair")
    d = a - b
    d = d[np.isfinite(d).any(1)]
    d = d[:, np.isfinite(d).all(0)]
    out = Difference(metric=metric, a=names[0], b=names[1], margin=float(margin), n_seeds=d.shape[0],
                     n_latents=d.shape[1])
    if d.size == 0:
        out.scope = "no paired values"
        return out
    if d.shape == (1, 1) or d.shape[0] == 0:
        out.mean = float(d.mean())
        out.scope = "1 seed, one value per run"
        return out
    mean, se, df, scope, components = _mixed(d)
    out.mean, out.se, out.df, out.scope, out.components = mean, se, df, scope, components
    if se == 0:  # every difference the same
        out.ci = (mean, mean)
        out.p = 1.0 if mean == 0 else 0.0
        if math.isfinite(margin) and margin > 0:
            out.p_tost = 0.0 if abs(mean) < margin else 1.0
        return out
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    out.ci = (mean - half, mean + half)
    out.p = float(2 * stats.t.sf(abs(mean) / se, df))
    if math.isfinite(margin) and margin > 0:
        out.p_tost = float(max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df)))
    return out


def holm(p: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count in the family)."""
    idx = [i for i, v in enumerate(p) if v is not None and math.isfinite(v)]
    m = len(idx)
    out: list[float | None] = [None] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def compare_variants(table: Mapping[str, Mapping[str, np.ndarray]], *, metric: str, margin: float,
                     level: float = 0.95) -> list[Difference]:
    """Every pair (in the table's order) of ``table[variant][seed] -> values`` (1-d: per latent, or
    one value), on the seeds both variants have. Unadjusted; see :func:`adjust_family`."""
    names = list(table)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = [s for s in table[a] if s in table[b]]
            rows_a = [np.atleast_1d(np.asarray(table[a][s], dtype=np.float64)) for s in seeds]
            rows_b = [np.atleast_1d(np.asarray(table[b][s], dtype=np.float64)) for s in seeds]
            if len({r.shape for r in rows_a + rows_b}) > 1:
                raise ValueError(f"{metric}: {a} vs {b}: the runs hold different numbers of values "
                                 f"({sorted({r.size for r in rows_a + rows_b})}); they do not pair")
            shape = (len(seeds), rows_a[0].size if rows_a else 0)
            out.append(paired_difference(np.reshape(rows_a, shape), np.reshape(rows_b, shape), metric=metric,
                                         names=(a, b), margin=margin, level=level))
    return out


def adjust_family(rows: list[Difference], alpha: float = 0.05) -> list[Difference]:
    """Holm-adjust both p's across ``rows`` (the whole family) and set each verdict, in place."""
    for r, p, q in zip(rows, holm([r.p for r in rows]), holm([r.p_tost for r in rows])):
        r.p_holm, r.p_tost_holm = p, q
        if p is None:
            r.verdict = "not testable"
            continue
        r.nonzero = p < alpha
        if q is not None and q < alpha:
            r.verdict = "equivalent"
        else:
            r.verdict = "different" if p < alpha else "inconclusive"
    return rows
