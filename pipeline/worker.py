"""Per-rank entry of a launched stage: `accelerate launch -m pipeline.worker --registry R --stage S --config F`.

The runner process owns the DAG state and the stage's MLflow run; each rank here builds the
Accelerator and runs the stage, rank 0 logs into the given run and writes result.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from pipeline import dag, registry as registries, tracking
from pipeline.artifacts import StagePaths, write_json
from pipeline.config import load_config
from pipeline.context import StageContext
from pipeline.launch import die_with_parent, make_accelerator, one_process_group


def main(argv=None) -> int:
    parent = os.getppid()
    die_with_parent()  # the launcher started this rank in a session of its own: go when it goes
    if os.getppid() != parent:  # it died before the line above took effect
        return 1
    ap = argparse.ArgumentParser(prog="python -m pipeline.worker")
    ap.add_argument("--registry", default=registries.DEFAULT_REGISTRY)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--fingerprint", default="")
    ap.add_argument("--run-id", default=None)
    ap.add_argument("--point", default=None, help="the grid point to run (a grid stage)")
    args = ap.parse_args(argv)
    reg = registries.load(args.registry)
    stage = reg[args.stage]
    cfg = load_config(args.config, registry=reg)
    acc = make_accelerator(cfg)
    paths = StagePaths(cfg, args.stage)
    logger = tracking.NullLogger()
    if acc.is_main_process and args.run_id:
        logger = tracking.Tracker(cfg).attach(args.run_id)
    ctx = StageContext(cfg, args.stage, logger, accelerator=acc, is_main=acc.is_main_process,
                       fingerprint=args.fingerprint, paths=reg.paths, point=args.point)
    try:
        with one_process_group(cfg, stage):  # a parallel grid point in one plain process: DeepSpeed's group
            result = stage.run(ctx)
        out, rc = {"status": "done", "result": result}, 0
    except dag.StageStopped as e:
        # exit 0: a non-zero rank would make the launcher (and srun --kill-on-bad-exit) kill the
        # other ranks, maybe while rank 0 still writes; "stopped" travels in result.json
        out, rc = {"status": "stopped", "message": str(e)}, 0
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        out, rc = {"status": "failed", "error": f"{type(e).__name__}: {e}"}, dag.EXIT_FAILED
    if acc.is_main_process:
        write_json(paths.point_file(args.point, "result.json"), {**out, "world_size": acc.num_processes})
    if rc == 0:
        acc.wait_for_everyone()
    acc.end_training()
    return rc


if __name__ == "__main__":
    sys.exit(main())
