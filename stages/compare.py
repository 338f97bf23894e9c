"""`python -m pipeline compare`: the fine-tuning variants side by side, read back from MLflow.

Runs that differ only by seed (``finetune.seeds``) are aggregated: mean +- sample standard
deviation and n per variant. Then every pair of variants is tested on every metric of
:data:`TESTED` (:mod:`cartoon_stylegan.metrics.stats`): a linear mixed model on the paired
differences -- over seeds x latents where eval wrote the per-latent structure values
(``eval/per_latent/``; the latents are the same in every run), over seeds for FID, KID,
precision and recall (one value per run) -- Holm-adjusted across all pairs x metrics, with 95 %
confidence intervals of each difference, and "equivalent" only from an equivalence test (TOST)
against the metric's margin (``compare.margins.*``). With one seed the one-value metrics are
reported as not testable. The table is printed and written as JSON beside the bar chart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline import artifacts, tracking
from pipeline.config import spec
from stages.eval import PER_LATENT_DIR


@dataclass
class MarginsConfig:
    """Equivalence margins: the largest difference that does not matter, in the metric's own units."""
    fid: float = spec(1.0, min=0.0, help="FID points (the smallest gap usually read as real at 50k samples)")
    kid_mean: float = spec(0.001, min=0.0, help="KID (1.0 on the table's x1e3 scale)")
    precision: float = spec(0.02, min=0.0, help="precision (a fraction)")
    recall: float = spec(0.02, min=0.0, help="recall (a fraction)")
    structure_ratio: float = spec(0.02, min=0.0, help="structure ratio (1.0 = no structure kept)")
    structure_rank: float = spec(0.5, min=0.0, help="mean rank of the true source (1 = best)")
    identity_ratio: float = spec(0.02, min=0.0, help="identity ratio (1.0 = the face is anyone's)")


@dataclass
class CompareConfig:
    alpha: float = spec(0.05, min=0.0, max=0.5, help="family-wise error rate of the paired tests (Holm across "
                        "all pairs x metrics), for 'different' and for 'equivalent'")
    margins: MarginsConfig = spec(factory=MarginsConfig, help="equivalence margin per metric (0: no equivalence "
                                  "test for it); set them before looking at the results")


# (column title, metric key, lower is better?, scale)
COLUMNS = [
    ("FID", "eval/fid", True, 1.0),
    ("KID x1e3", "eval/kid_mean", True, 1e3),
    ("precision", "eval/precision", False, 1.0),
    ("recall", "eval/recall", False, 1.0),
    ("structure", "eval/structure_ratio", True, 1.0),
    ("src rank", "eval/structure_rank", True, 1.0),
    ("identity", "eval/identity_ratio", True, 1.0),
    ("train min", "train/minutes", True, 1.0),
]
# the metrics tested pairwise (metric key without "eval/"), and those with per-latent values in eval/per_latent/
TESTED = ("fid", "kid_mean", "precision", "recall", "structure_ratio", "structure_rank", "identity_ratio")
PER_LATENT = ("structure_ratio", "structure_rank", "identity_ratio")
OPTIONAL = ("identity_ratio",)  # absent from an eval without the faces extra (or with eval.identity_n 0)
LEVEL = 0.95


def collect(runs) -> dict[str, dict[str, dict]]:
    """{variant: {seed: metrics}}: the latest fine-tune run of each (variant, seed)."""
    rows: dict[str, dict[str, dict]] = {}
    for r in runs:  # oldest first: later runs win
        tags = r["tags"]
        if tags.get("stage") == "finetune" and tags.get("variant"):
            seed = tags.get("seed", "?")
            rows.setdefault(tags["variant"], {})[seed] = {**r["metrics"], "_run_id": r["run_id"]}
    return rows


def summarise(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std (nan for n < 2), n) of the finite values."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def aggregate(rows: dict[str, dict[str, dict]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{variant: {metric key: (mean, std, n)}} over the variant's seeds."""
    return {v: {key: summarise([m.get(key, math.nan) for m in seeds.values()]) for _, key, _, _ in COLUMNS}
            for v, seeds in rows.items()}


def _cell(mean, std, n, scale) -> str:
    if n == 0:
        return "-"
    if n == 1 or not math.isfinite(std):
        return f"{mean * scale:.3f}"
    return f"{mean * scale:.3f}±{std * scale:.3f}"


def format_table(rows: dict[str, dict[str, dict]]) -> str:
    agg = aggregate(rows)
    best = {}
    for _, key, low, _ in COLUMNS:
        means = [a[key][0] for a in agg.values() if a[key][2]]
        if means:
            best[key] = min(means) if low else max(means)
    head = f"{'variant':22s}{'n':>3s}" + "".join(f"{c:>17s}" for c, _, _, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, a in agg.items():
        n = max(x[2] for x in a.values())
        cells = []
        for _, key, _, scale in COLUMNS:
            mark = "*" if a[key][2] and best.get(key) == a[key][0] and len(agg) > 1 else " "
            cells.append(f"{_cell(*a[key], scale):>16s}{mark}")
        lines.append(f"{name:22s}{n:>3d}" + "".join(cells))
    lines.append("mean±std over seeds (n = seeds). * best mean in column. structure: matched/mismatched "
                 "low-pass distance to the source generator (1.0 = no structure kept); src rank: mean rank "
                 "of the true source image (1 = best).")
    return "\n".join(lines)


_COLUMN = {key.split("/", 1)[1]: (title, low, scale) for title, key, low, scale in COLUMNS}


def load_per_latent(folder: Path, rows: dict[str, dict[str, dict]]) -> tuple[dict, list[str]]:
    """{variant: {seed: {metric: [values]}}} from eval's per-latent files (``eval/per_latent/*.json``) of
    the runs in ``rows`` (matched by MLflow run id, else by variant and seed), and notes on what was
    left out and why. All files used share their latents (seed and count), or none is used."""
    import json

    folder = Path(folder)
    if not folder.is_dir():
        return {}, [f"no per-latent structure values ({folder} missing: an eval from before they were written; "
                    f"rerun eval): structure tested over seeds only"]
    by_id = {m["_run_id"]: (v, seed) for v, seeds in rows.items() for seed, m in seeds.items()}
    out: dict[str, dict[str, dict]] = {}
    notes, latents = [], set()
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            key = by_id.get(rec.get("run_id")) or (rec["variant"], str(rec["seed"]))
            values = {m: [float(x) for x in rec["values"][m]] for m in PER_LATENT
                      if m not in OPTIONAL or m in rec["values"]}
            sizes = {m: int(rec["identity_n"]) if m.startswith("identity") else int(rec["n"]) for m in values}
            latent = (int(rec["latent_seed"]), int(rec["n"]), str(rec.get("method")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            notes.append(f"{path.name}: unreadable per-latent file ({type(e).__name__}: {e}); left out")
            continue
        if key[0] not in rows or key[1] not in rows[key[0]]:
            continue  # a run compare does not show (another experiment's, or superseded)
        if any(len(v) != sizes[m] for m, v in values.items()):
            notes.append(f"{path.name}: holds {sorted({len(v) for v in values.values()})} values, says n="
                         f"{sorted(set(sizes.values()))}; left out")
            continue
        out.setdefault(key[0], {})[key[1]] = values
        latents.add(latent)
    if len(latents) > 1:
        return {}, notes + [f"per-latent files from different latents (seed, n, method: {sorted(latents)}): they do "
                            f"not pair; structure tested over seeds only"]
    return out, notes


def metric_tables(rows: dict[str, dict[str, dict]], per_latent: dict) -> tuple[dict, dict]:
    """{metric: {variant: {seed: values}}} for every metric of TESTED, and {metric: what a value is}:
    per latent where every run has its per-latent values, else one value per run."""
    tables, unit = {}, {}
    for metric in TESTED:
        runs = [(v, seed) for v, seeds in rows.items() for seed in seeds]
        latent = metric in PER_LATENT and runs and all(metric in per_latent.get(v, {}).get(seed, {}) for v, seed in runs)
        if latent:
            tables[metric] = {v: {seed: per_latent[v][seed][metric] for seed in seeds} for v, seeds in rows.items()}
            unit[metric] = "seeds x latents"
        else:
            tables[metric] = {v: {seed: [m.get(f"eval/{metric}", math.nan)] for seed, m in seeds.items()}
                              for v, seeds in rows.items()}
            unit[metric] = "seeds"
    return tables, unit


def pairwise_tests(rows: dict[str, dict[str, dict]], per_latent: dict, settings=None) -> tuple[list, dict]:
    """Every pair x every metric of TESTED, Holm-adjusted as one family; (rows, {metric: unit})."""
    from cartoon_stylegan.metrics.stats import adjust_family, compare_variants

    settings = settings or CompareConfig()
    tables, unit = metric_tables(rows, per_latent)
    family = []
    for metric, table in tables.items():
        if not any(math.isfinite(x) for seeds in table.values() for vals in seeds.values() for x in vals):
            continue  # a metric eval did not compute (eval.metrics)
        family += compare_variants(table, metric=metric, margin=getattr(settings.margins, metric), level=LEVEL)
    return adjust_family(family, alpha=settings.alpha), unit


def _better(d, low: bool) -> str:
    return d.a if (d.mean < 0) == low else d.b


def format_tests(family, settings=None) -> str:
    """The table of every pair: difference, 95 % CI, Holm-adjusted p, TOST p and the verdict."""
    from cartoon_stylegan.metrics.stats import METHOD

    settings = settings or CompareConfig()
    if not family:
        return "paired tests: fewer than two variants, nothing to compare"
    lines = [f"paired tests of every pair (A - B; {METHOD}; alpha {settings.alpha}):",
             f"{'metric':11s}{'A':>20s}{'B':>20s}{'A - B':>10s}{'95% CI':>22s}{'p Holm':>9s}{'TOST Holm':>10s}"
             f"{'margin':>8s}  verdict"]
    lines.append("-" * len(lines[-1]) + "-" * 20)
    untestable = {}
    for d in family:
        title, low, scale = _COLUMN[d.metric]
        if d.p is None:
            untestable.setdefault(d.metric, set()).add(d.scope)
            continue
        ci = f"[{d.ci[0] * scale:+.3f}, {d.ci[1] * scale:+.3f}]"
        tost = "-" if d.p_tost_holm is None else f"{d.p_tost_holm:.3f}"
        verdict = d.verdict
        if d.verdict == "different":
            verdict += f" ({_better(d, low)} better)"
        elif d.verdict == "equivalent" and d.nonzero:
            verdict += " (nonzero, inside the margin)"
        lines.append(f"{title:11s}{d.a:>20s}{d.b:>20s}{d.mean * scale:>+10.3f}{ci:>22s}{d.p_holm:>9.3f}{tost:>10s}"
                     f"{d.margin * scale:>8.3g}  {verdict}")
    scopes = {}
    for d in family:
        if d.p is not None:
            scopes.setdefault(d.metric, set()).add(d.scope)
    if scopes:
        lines.append("over: " + "; ".join(f"{_COLUMN[m][0]}: {', '.join(sorted(scopes[m]))}" for m in scopes)
                     + f". Scales as in the table above; p Holm: two-sided, H0 no difference; TOST Holm: H0 "
                       f"|difference| >= margin (equivalent = the {1 - 2 * settings.alpha:.0%} interval inside "
                       f"the margin, compare.margins.*); family: {sum(d.p is not None for d in family)} tests.")
    for metric, scopes in untestable.items():
        lines.append(f"{_COLUMN[metric][0]}: not testable ({'; '.join(sorted(scopes))})")
    return "\n".join(lines)


def tests_record(family, unit: dict, settings=None) -> dict:
    """The paired tests as JSON-able data."""
    from cartoon_stylegan.metrics.stats import METHOD
    from pipeline.config import to_dict

    def plain(x):  # JSON has no NaN: null
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x

    settings = settings or CompareConfig()
    return plain({"method": METHOD, "level": LEVEL, "alpha": settings.alpha, "margins": to_dict(settings.margins),
            "over": unit, "family_size": sum(d.p is not None for d in family),
            "tests": [{**d.to_dict(), "better": (_better(d, _COLUMN[d.metric][1]) if d.verdict == "different" else None)}
                      for d in family]})


def bar_chart(rows: dict[str, dict[str, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    cols = [c for c in COLUMNS if any(a[c[1]][2] for a in agg.values())]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(3.2 * max(1, len(cols)), 3.6), squeeze=False)
    names = list(agg)
    for ax, (title, key, low, scale) in zip(axes[0], cols):
        means = [agg[n][key][0] * scale for n in names]
        errs = [(agg[n][key][1] * scale if math.isfinite(agg[n][key][1]) else 0.0) for n in names]
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), [f"{n}\n(n={max(x[2] for x in agg[n].values())})" for n in names],
                      rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{title} ({'lower' if low else 'higher'} is better)", fontsize=9)
    fig.suptitle("mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(cfg, experiment=None, out=None) -> int:
    runs = tracking.read_runs(cfg, experiment)
    rows = collect(runs)
    if not rows:
        print(f"no fine-tune variant runs in experiment {experiment or cfg.experiment!r}; "
              f"run `python -m pipeline run all` first")
        return 1
    print(format_table(rows))
    settings = getattr(cfg, "compare", None) or CompareConfig()
    folder = artifacts.run_root(cfg) / (experiment or cfg.experiment) / "eval" / PER_LATENT_DIR
    per_latent, notes = load_per_latent(folder, rows)
    family, unit = pairwise_tests(rows, per_latent, settings)
    print("")
    print(format_tests(family, settings))
    for note in notes:
        print(f"note: {note}")
    path = Path(out) if out else artifacts.experiment_dir(cfg) / "compare.png"
    record = path.with_suffix(".json")
    artifacts.write_json(record, tests_record(family, unit, settings))
    print(f"tests: {record}")
    bar_chart(rows, path)
    print(f"bar chart: {path}")
    return 0
