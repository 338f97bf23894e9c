"""The fine-tune grid's wall time on a SLURM cluster: one job (the runs in turn) vs a job array.

    python benchmarks/grid_wall.py --partition debug [--variants freezed,freezesg] [--seeds 0,1] [--kimg 0.064]

Shards and pretrains a tiny source here once (configs/default.yaml at 16 px), copies that run root
twice, and fine-tunes the same grid (variants x seeds) on the partition both ways, with the same
request per job/task (``--gpus-per-node=0``/GPUs as the partition derives, the CPUs of one node):

  one job   ``sbatch --wait slurm/finetune.sh CONFIG ...``: every run of the grid in turn
  array     ``python -m pipeline submit finetune ...``: one task per run, as many at once as fit

Wall time: from the submission to the end of the last run (the stage's points' records). Prints a
table. Needs a cluster (tests/slurm/local_cluster.sh start --nodes 2 makes a local one).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.resolution=16", "data.source.count=128", "data.target.count=64", "shard.workers=1",
        "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2", "pretrain.kimg=0.128", "pretrain.batch=8",
        "pretrain.tick_kimg=0.032", "pretrain.sample_kimg=1", "pretrain.snapshot_kimg=1", "pretrain.grid=[4,2]",
        "finetune.batch=8", "finetune.tick_kimg=0.032", "finetune.sample_kimg=1", "finetune.snapshot_kimg=1",
        "finetune.grid=[4,2]", "tracking.enabled=false"]


def pipeline(*args, timeout=1800) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline {' '.join(args[:2])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def last_end(root: Path, points: list[str]) -> float:
    recs = [json.loads((root / "default" / "finetune" / "points" / p / "point.json").read_text()) for p in points]
    bad = [p for p, r in zip(points, recs) if r.get("status") != "done"]
    if bad:
        raise SystemExit(f"runs not done: {', '.join(bad)}")
    return max(r["finished"] for r in recs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partition", required=True)
    ap.add_argument("--variants", default="freezed,freezesg")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--kimg", default="0.064")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args()
    from pipeline import slurm
    from pipeline.slurm import resources as sr

    work = Path(args.dir or tempfile.mkdtemp(prefix="grid-wall-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    shutil.copyfile(REPO / "configs" / "default.yaml", config)
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    grid = [f"finetune.run_variants=[{','.join(variants)}]", f"finetune.seeds=[{','.join(map(str, seeds))}]",
            f"finetune.kimg={args.kimg}", f"slurm.partition={args.partition}"]
    points = [f"{v}-seed{k}" for v in variants for k in seeds]
    base = work / "base"
    t0 = time.time()
    pipeline("run", "pretrain", "--config", str(config), f"run_root={base}", *TINY, *grid)
    print(f"source pretrained here in {time.time() - t0:.0f} s; grid: {len(points)} runs of {args.kimg} kimg")

    part = sr.pick_partition(sr.partitions(), args.partition)
    script = REPO / "slurm" / "finetune.sh"
    req = sr.derive("finetune", {"gpu": True, "cpus": 2, "procs": 1}, _scfg(args.partition), part,
                    sr.script_defaults(script))
    print(part.describe())
    print(f"each job / task: {req.describe()}")
    rows = []

    root = work / "one-job"
    shutil.copytree(base, root)
    t0 = time.time()
    proc = subprocess.run(["sbatch", "--wait", "--parsable", *req.args(), f"--output={work}/one-job-%j.out",
                           "--export=ALL,CARTOON_PYTHON=" + sys.executable, str(script), str(config),
                           f"run_root={root}", *TINY, *grid], cwd=work, capture_output=True, text=True, timeout=7200)
    job = slurm.parse_parsable(proc.stdout)
    if slurm.job_state(job) != "COMPLETED":
        raise SystemExit(f"one-job {job}: {slurm.job_state(job)}\n{proc.stderr}")
    rows.append(("one job, runs in turn", 1, last_end(root, points) - t0))

    root = work / "array"
    shutil.copytree(base, root)
    t0 = time.time()
    pipeline("submit", "finetune", "--config", str(config), f"run_root={root}", *TINY, *grid,
             "slurm.array=[finetune]")
    rec = slurm.read_job_record(root / "default" / "finetune")
    states = {p: slurm.wait_for_job(f"{rec['job_id']}_{i}", timeout=7200, poll=1) for p, i in rec["array"].items()}
    if set(states.values()) != {"COMPLETED"}:
        raise SystemExit(f"array {rec['job_id']}: {states}")
    rows.append(("job array, one task per run", len(points), last_end(root, points) - t0))

    print(f"\n| {len(points)} runs x {args.kimg} kimg, partition {args.partition} | jobs | wall (submit to last run's end) |")
    print("|---|---|---|")
    for name, n, wall in rows:
        print(f"| {name} | {n} | {wall:.1f} s |")
    print(f"\narray / one job: {rows[1][2] / rows[0][2]:.2f}")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _scfg(partition):
    from pipeline.settings import SlurmConfig

    return SlurmConfig(partition=partition)


if __name__ == "__main__":
    sys.exit(main())
