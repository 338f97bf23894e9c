"""`python -m pipeline compare`: the fine-tuning variants side by side, read back from MLflow.

Runs that differ only by seed (``finetune.seeds``) are aggregated: mean +- sample standard
deviation and n per variant. Each variant is also compared with the baseline (``freezed``) seed
by seed: the mean paired difference, its standard deviation and a paired t-test, so that a
difference is called out only when it is larger than the seed-to-seed noise.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline import artifacts, tracking

# (column title, metric key, lower is better?, scale)
COLUMNS = [
    ("FID", "eval/fid", True, 1.0),
    ("KID x1e3", "eval/kid_mean", True, 1e3),
    ("precision", "eval/precision", False, 1.0),
    ("recall", "eval/recall", False, 1.0),
    ("structure", "eval/structure_ratio", True, 1.0),
    ("src rank", "eval/structure_rank", True, 1.0),
    ("train min", "train/minutes", True, 1.0),
]
BASELINE = "freezed"
ALPHA = 0.05


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


def paired(rows: dict[str, dict[str, dict]], variant: str, key: str, baseline: str = BASELINE) -> dict | None:
    """Variant minus baseline over the seeds both have: mean difference, std, n and the two-sided
    p-value of a paired t-test (None when fewer than two paired seeds)."""
    if baseline not in rows or variant == baseline:
        return None
    common = sorted(set(rows[variant]) & set(rows[baseline]))
    diffs = [rows[variant][s][key] - rows[baseline][s][key] for s in common
             if key in rows[variant][s] and key in rows[baseline][s]]
    mean, std, n = summarise(diffs)
    if n < 2:
        return {"mean": mean, "std": std, "n": n, "p": None}
    if std == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        from scipy import stats

        p = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), df=n - 1))
    return {"mean": mean, "std": std, "n": n, "p": p}


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
    n_paired = max((len(set(rows[v]) & set(rows.get(BASELINE, {}))) for v in rows if v != BASELINE), default=0)
    if BASELINE in rows and n_paired < 2:
        lines.append(f"(paired comparison against {BASELINE}: needs >= 2 seeds per variant, finetune.seeds)")
    elif BASELINE in rows:
        lines.append("")
        lines.append(f"paired against {BASELINE} (same seeds; variant - {BASELINE}; paired t-test):")
        for name in rows:
            if name == BASELINE:
                continue
            parts = []
            for title, key, low, scale in COLUMNS[:6]:
                d = paired(rows, name, key)
                if d is None or d["n"] == 0:
                    continue
                if d["p"] is None:
                    verdict = f"n={d['n']}: no test"
                elif d["p"] < ALPHA:
                    better = (d["mean"] < 0) == low
                    verdict = f"{'better' if better else 'worse'}, p={d['p']:.3f}"
                else:
                    verdict = f"within noise, p={d['p']:.2f}"
                parts.append(f"{title} {d['mean'] * scale:+.3f} ({verdict})")
            lines.append(f"  {name:20s} " + "; ".join(parts))
    return "\n".join(lines)


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
    path = Path(out) if out else artifacts.experiment_dir(cfg) / "compare.png"
    bar_chart(rows, path)
    print(f"bar chart: {path}")
    return 0
