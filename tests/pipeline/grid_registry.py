"""A toy registry with a grid stage, for the runner's grid tests: no torch, no stages package.

    prep ──> grid (one point per name in grid.points) ──> after

Each point writes ``grid/<point>.json`` (pid, start and end time, CUDA_VISIBLE_DEVICES) after
sleeping ``grid.sleep`` seconds; a point fails while a file ``<run_root>/fail-<point>`` exists, and
stops (as a training point does on a signal) while ``<run_root>/stop-<point>`` exists; with
``grid.metrics`` it logs that many steps to MLflow (its own run and the stage's).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import dag
from pipeline.artifacts import read_json, run_root, write_json
from pipeline.registry import Registry, Stage
from toolbox.settings import setting


@dataclass
class GridConfig:
    points: list[str] = setting(factory=lambda: ["p0", "p1", "p2"], help="the grid's points")
    sleep: float = setting(0.0, min=0.0, help="seconds each point takes")
    metrics: int = setting(0, min=0, help="metric batches each point logs (its own MLflow run and the stage's)")
    tag: str = field(default="x", metadata={"help": "changes the fingerprint"})


def _prep(ctx):
    write_json(ctx.paths.stage_dir / "out.json", {"prep": True})
    return {"prep": True}


def _point(ctx):
    p = ctx.point
    root = run_root(ctx.cfg)
    t0 = time.time()
    time.sleep(ctx.cfg.grid.sleep)
    if ctx.cfg.grid.metrics:
        own = ctx.child_logger(f"grid/{p}", tags={"point": p})
        for step in range(ctx.cfg.grid.metrics):
            ctx.log_metrics({f"{p}/a": step, f"{p}/b": -step}, step)
            ctx.log_metrics({"a": step, "b": -step}, step, logger=own)
        own.finish()
    if (root / f"fail-{p}").exists():
        raise RuntimeError(f"point {p} told to fail")
    if (root / f"stop-{p}").exists():
        raise dag.StageStopped(f"{p} stopped")
    out = {"point": p, "pid": os.getpid(), "start": t0, "end": time.time(),
           "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "tag": ctx.cfg.grid.tag}
    write_json(ctx.paths.stage_dir / f"{p}.json", out)
    return out


def _after(ctx):
    res = read_json(Path(ctx.paths.of("grid").result_file))["result"]
    out = {"points": sorted(res)}
    write_json(ctx.paths.stage_dir / "out.json", out)
    return out


REGISTRY = Registry(stages=[
    Stage("prep", _prep, makes="prep/out.json"),
    Stage("grid", _point, config=GridConfig, needs=("prep",), reads=("grid",), distributed=True,
          points=lambda cfg: list(cfg.grid.points), makes="grid/<point>.json"),
    Stage("after", _after, needs=("grid",), makes="after/out.json"),
])
