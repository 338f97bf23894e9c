"""The shipped registry with its training stages wrapped to record what each rank trained.

Used by tests/e2e/test_ddp.py through the real CLI (``--registry ddp_registry``, with
tests/e2e on PYTHONPATH): every rank (a launched worker process) writes
``$DDP_TEST_DUMP/<stage>/rank<k>.json`` with its rank, the world size and a SHA-256 of
every network it trained, so the test can check that the ranks agree. The hook lives
here, in the test, not in the pipeline.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cartoon_stylegan.training as training
from e2e_helpers import state_hash
from pipeline.artifacts import write_json
from stages import REGISTRY as SHIPPED

DUMP_ENV = "DDP_TEST_DUMP"


def _recording(stage):
    def run(ctx):
        hashes = {}
        real_train = training.train

        def train(accelerator, **kw):
            result = real_train(accelerator, **kw)
            label = Path(kw["ckpt_dir"]).parent.relative_to(ctx.paths.stage_dir.parent).as_posix()
            for key in ("G", "D", "G_ema"):
                hashes[f"{label}/{key.lower()}"] = state_hash(kw[key])
            return result

        training.train = train
        try:
            result = stage.run(ctx)
        finally:
            training.train = real_train
        acc = ctx.accelerator
        write_json(Path(os.environ[DUMP_ENV]) / ctx.stage / f"rank{acc.process_index}.json",
                   {"rank": acc.process_index, "world_size": acc.num_processes, "hashes": hashes})
        return result
    return run


REGISTRY = dataclasses.replace(SHIPPED, stages=[
    dataclasses.replace(st, run=_recording(st)) if st.distributed else st for st in SHIPPED.stages])
