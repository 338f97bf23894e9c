"""The comparison experiment's table and figure: each variant, near and far, mean +- std over seeds.

    python benchmarks/comparison_figure.py --run-root runs --near comparison-near --far comparison-far \
        --out docs/demo/comparison-near-far.png

Reads ``<run root>/<experiment>/eval/metrics.json`` of each experiment (rows ``<variant>-seed<k>``),
prints a markdown table (FID, structure ratio, rank of the true source, style drift of the frozen
layers, identity ratio) and draws structure ratio against FID per run, one panel per experiment,
with each variant's mean and its spread over seeds (the figure people read before the table).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

COLS = [("FID", "fid", 1), ("structure", "structure_ratio", 3), ("rank", "structure_mean_rank", 1),
        ("drift", "style_drift_frozen", 2), ("identity", "identity_ratio", 3)]


def runs_of(metrics: dict) -> dict[str, list[dict]]:
    """{variant: [row of each seed]} from eval's metrics.json (rows named <variant>-seed<k>)."""
    out: dict[str, list[dict]] = {}
    for name, row in metrics.items():
        m = re.fullmatch(r"(.+)-seed(\d+)", name)
        if m:
            out.setdefault(m.group(1), []).append(row)
    return out


def cell(rows: list[dict], key: str, digits: int) -> str:
    vals = [r[key] for r in rows if key in r]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-root", default="runs")
    ap.add_argument("--near", default="comparison-near")
    ap.add_argument("--far", default="comparison-far", help="'' for none")
    ap.add_argument("--out", default=None, help="the figure (PNG); none: the table only")
    args = ap.parse_args()
    exps = {}
    for label, exp in (("near", args.near), ("far", args.far)):
        if not exp:  # --far "": one experiment only
            continue
        path = Path(args.run_root) / exp / "eval" / "metrics.json"
        if not path.is_file():
            print(f"error: {path} does not exist: run the experiment first (configs/comparison.yaml)", file=sys.stderr)
            return 2
        exps[label] = runs_of(json.loads(path.read_text()))
    variants = list(dict.fromkeys(v for e in exps.values() for v in e))
    seeds = {label: sorted({len(r) for r in e.values()}) for label, e in exps.items()}
    print(f"seeds per variant: {seeds}")
    head = " | ".join(f"{label} {t}" for label in exps for t, _, _ in COLS)
    print(f"| variant | {head} |\n|---|" + "---:|" * (len(COLS) * len(exps)))
    for v in variants:
        cells = [cell(exps[label].get(v, []), key, d) for label in exps for _, key, d in COLS]
        print(f"| {v} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(exps), figsize=(6 * len(exps), 4.6), sharey=False, squeeze=False)
        axes = axes[0]
        colours = plt.get_cmap("tab10")
        for ax, (label, e) in zip(axes, exps.items()):
            for i, v in enumerate(variants):
                rows = e.get(v, [])
                xs, ys = [r["structure_ratio"] for r in rows], [r["fid"] for r in rows]
                ax.scatter(xs, ys, color=colours(i), alpha=0.45, s=22)
                if len(xs) > 1:
                    ax.errorbar(statistics.mean(xs), statistics.mean(ys), xerr=statistics.stdev(xs),
                                yerr=statistics.stdev(ys), color=colours(i), marker="o", ms=7, capsize=3, label=v)
                elif xs:
                    ax.plot(xs, ys, "o", color=colours(i), ms=7, label=v)
            ax.set_title(f"{label}: {len(next(iter(e.values()), []))} seeds per variant")
            ax.set_xlabel("structure ratio (lower: more of the source's layout kept)")
            ax.set_ylabel("FID (lower is better)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
