"""`python -m pipeline compare`: the fine-tuning variants side by side, read back from MLflow."""
from __future__ import annotations

import math
from pathlib import Path

from pipeline import artifacts, tracking

# (column title, metric key, lower is better?)
COLUMNS = [
    ("FID", "eval/fid", True),
    ("KID x1e3", "eval/kid_mean", True),
    ("precision", "eval/precision", False),
    ("recall", "eval/recall", False),
    ("structure", "eval/structure_ratio", True),
    ("src rank", "eval/structure_rank", True),
    ("train min", "train/minutes", True),
]


def collect(runs) -> dict[str, dict]:
    """Latest finished fine-tune variant run per variant name -> its metrics."""
    rows = {}
    for r in runs:  # oldest first: later runs win
        if r["tags"].get("stage") == "finetune" and r["tags"].get("variant"):
            rows[r["tags"]["variant"]] = {**r["metrics"], "_run_id": r["run_id"]}
    return rows


def format_table(rows: dict[str, dict]) -> str:
    head = f"{'variant':22s}" + "".join(f"{c:>11s}" for c, _, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    best = {}
    for _, key, low in COLUMNS:
        vals = [m[key] for m in rows.values() if key in m and math.isfinite(m[key])]
        if vals:
            best[key] = min(vals) if low else max(vals)
    for name, m in rows.items():
        cells = []
        for _, key, _ in COLUMNS:
            if key not in m:
                cells.append(f"{'-':>11s}")
                continue
            v = m[key] * (1e3 if key == "eval/kid_mean" else 1)
            mark = "*" if best.get(key) == m[key] and len(rows) > 1 else " "
            cells.append(f"{v:>10.3f}{mark}")
        lines.append(f"{name:22s}" + "".join(cells))
    lines.append("* best in column. structure: matched/mismatched low-pass distance to the source "
                 "generator (1.0 = no structure kept); src rank: mean rank of the true source image (1 = best).")
    return "\n".join(lines)


def bar_chart(rows: dict[str, dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(t, k, low) for t, k, low in COLUMNS if any(k in m for m in rows.values())]
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(3.2 * max(1, len(cols)), 3.4), squeeze=False)
    names = list(rows)
    for ax, (title, key, low) in zip(axes[0], cols):
        vals = [rows[n].get(key, float("nan")) * (1e3 if key == "eval/kid_mean" else 1) for n in names]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{title} ({'lower' if low else 'higher'} is better)", fontsize=9)
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
