"""Per-rank entry of a launched stage: `accelerate launch -m pipeline.worker --stage S --config F`.

The runner process owns the DAG state and the stage's MLflow run; each rank here builds the
Accelerator and runs the stage, rank 0 logs into the given run and writes result.json.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import traceback
from pathlib import Path

from pipeline import dag, tracking
from pipeline.artifacts import StagePaths, write_json
from pipeline.config import load_config
from pipeline.context import StageContext
from pipeline.launch import make_accelerator


DEBUG_DUMP_ENV = "CARTOON_STYLEGAN_DEBUG_DUMP"


def _debug_dump(ctx, acc) -> None:
    """With CARTOON_STYLEGAN_DEBUG_DUMP=<dir>, each rank writes <dir>/<stage>/rank<k>.json: its rank, the
    world size and a SHA-256 of every network it trained (tests/e2e/test_ddp.py checks that the ranks agree)."""
    out_dir = os.environ.get(DEBUG_DUMP_ENV)
    if not out_dir:
        return
    import torch

    hashes = {}
    for label, nets in ctx.trained.items():
        for key, net in nets.items():
            if not isinstance(net, torch.nn.Module):  # a loaded checkpoint's "meta"
                continue
            h = hashlib.sha256()
            for name, t in sorted(net.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            hashes[f"{label}/{key}"] = h.hexdigest()
    write_json(Path(out_dir) / ctx.stage / f"rank{acc.process_index}.json",
               {"rank": acc.process_index, "world_size": acc.num_processes, "hashes": hashes})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.worker")
    ap.add_argument("--stage", required=True, choices=list(dag.STAGES))
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-id", default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    acc = make_accelerator(cfg)
    paths = StagePaths(cfg, args.stage)
    logger = tracking.NullLogger()
    if acc.is_main_process and args.run_id:
        logger = tracking.Tracker(cfg).attach(args.run_id)
    ctx = StageContext(cfg, args.stage, logger, accelerator=acc, is_main=acc.is_main_process)
    try:
        result = dag.load_stage_module(args.stage).run(ctx)
        out, rc = {"status": "done", "result": result}, 0
        _debug_dump(ctx, acc)
    except dag.StageStopped as e:
        # exit 0: a non-zero rank would make the launcher (and srun --kill-on-bad-exit) kill the
        # other ranks, maybe while rank 0 still writes; "stopped" travels in result.json
        out, rc = {"status": "stopped", "message": str(e)}, 0
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        out, rc = {"status": "failed", "error": f"{type(e).__name__}: {e}"}, dag.EXIT_FAILED
    if acc.is_main_process:
        write_json(paths.result_file, {**out, "world_size": acc.num_processes})
    if rc == 0:
        acc.wait_for_everyone()
    acc.end_training()
    return rc


if __name__ == "__main__":
    sys.exit(main())
