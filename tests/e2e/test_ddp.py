"""Real 2-process DDP on CPU (gloo) through the launcher: `pipeline run pretrain launch.num_processes=2`.

pipeline/launch.py runs `accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1
(`accelerate launch --cpu --num_processes 2` would silently start one process). Each rank runs
pipeline/worker.py; with CARTOON_STYLEGAN_DEBUG_DUMP set, each writes rank<k>.json with the
hashes of the networks it trained.
"""
from __future__ import annotations

import hashlib
import os

import pytest

from e2e_helpers import TINY_DATA_MODEL, cli, mlflow_runs, read_json, stage_runs, stage_state, state_hash

pytestmark = pytest.mark.slow

EXP = "ddp"
BATCH, WORLD = 8, 2
STEPS = 16
KIMG = STEPS * BATCH * WORLD / 1000  # the budget counts images over all ranks
ARGS = [f"experiment={EXP}", *TINY_DATA_MODEL, "data.target.count=16", "launch.num_processes=2",
        f"train.kimg={KIMG}", f"train.batch={BATCH}", "train.tick_kimg=0.032", "train.sample_kimg=1",
        "train.snapshot_kimg=0.128", "train.grid=[2,2]"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    dump = root / "debug-dump"
    out = cli("run", "pretrain", *ARGS, run_root=root, extra_env={"CARTOON_STYLEGAN_DEBUG_DUMP": str(dump)},
              timeout=600).stdout
    return root, dump, out


def test_two_ranks_train_identical_weights(ddp_run):
    from cartoon_stylegan import checkpoint

    root, dump, out = ddp_run
    assert "--multi_gpu --num_processes 2" in out
    assert read_json(root / EXP / "pretrain" / "result.json")["world_size"] == WORLD
    res = stage_state(root, EXP, "pretrain")["result"]
    assert res["step"] == STEPS and res["kimg"] == pytest.approx(KIMG)

    ranks = [read_json(dump / f"rank{k}.json") for k in range(WORLD)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == WORLD for r in ranks)
    h0, h1 = ranks[0]["hashes"], ranks[1]["hashes"]
    assert set(h0) == {"pretrain/g", "pretrain/d", "pretrain/g_ema"}
    assert h0 == h1, "the ranks ended with different weights"
    # and what rank 0 saved is what both ranks hold
    nets = checkpoint.load_transfer(root / EXP / "pretrain" / "checkpoints" / "network-final.pt")
    assert {k: state_hash(nets[k]) for k in ("g", "d", "g_ema")} == {
        k: h0[f"pretrain/{k}"] for k in ("g", "d", "g_ema")}


def test_mlflow_logs_from_rank_0_only(ddp_run):
    root, _, _ = ddp_run
    client, runs = mlflow_runs(root, EXP)
    pre = stage_runs(runs, "pretrain")
    assert len(pre) == 1 and pre[0].info.status == "FINISHED"
    assert pre[0].info.run_id == stage_state(root, EXP, "pretrain")["mlflow_run_id"]
    assert len(runs) == 3  # the parent, shard, pretrain
    for key in ("Loss/G", "Progress/kimg"):
        steps = [m.step for m in client.get_metric_history(pre[0].info.run_id, key)]
        assert len(steps) == len(set(steps)) == STEPS * BATCH * WORLD // 32, (key, steps)  # a tick per 32 images


def _image_keys(loader, n_batches):
    keys = []
    for _ in range(n_batches):
        for img in next(loader):
            keys.append(hashlib.sha256(img.numpy().tobytes()).hexdigest())
    return keys


def test_ranks_read_disjoint_samples(ddp_run):
    """The loader split the ranks used (same arguments as stages/training_common.py), on the run's shards."""
    from cartoon_stylegan.data import make_loader
    from pipeline.config import load_config

    root, _, _ = ddp_run
    cfg = load_config(None, [*ARGS, f"run_root={root}"])
    shard_dir = root / EXP / "shard" / "source"
    n = read_json(shard_dir / "manifest.json")["count"]
    per_rank = n // WORLD
    # as trained: shuffling on; over two epochs the ranks still never share an image
    seen = []
    for rank in range(WORLD):
        loader = make_loader(shard_dir, batch_size=BATCH, rank=rank, world_size=WORLD, seed=cfg.seed * 1_000_003,
                             num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer, xflip=False)
        seen.append(_image_keys(loader, 2 * per_rank // BATCH))
    assert seen[0][:BATCH] != seen[1][:BATCH]
    assert not set(seen[0]) & set(seen[1])
    assert all(len(set(s)) <= per_rank for s in seen)
    # without the shuffle buffer, one epoch of each rank is exactly its half of the data set
    halves = [set(_image_keys(make_loader(shard_dir, batch_size=BATCH, rank=rank, world_size=WORLD, seed=0,
                                          shuffle_buffer=0, xflip=False), per_rank // BATCH))
              for rank in range(WORLD)]
    assert len(halves[0]) == len(halves[1]) == per_rank
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == n


def test_sigusr1_stops_both_ranks_at_one_step_then_resumes(tmp_path):
    """SIGUSR1 to the runner (what SLURM sends): it tells the ranks through the stop file; they agree on
    the step, rank 0 writes one checkpoint, the runner exits 3; the rerun continues from it."""
    import re
    import signal
    import time

    from e2e_helpers import resume_files, start, wait_for

    root, exp = tmp_path / "runs", "ddp-stop"
    steps = 128
    args = [f"experiment={exp}", *[a for a in ARGS if not a.startswith(("experiment=", "train.kimg="))],
            f"train.kimg={steps * BATCH * WORLD / 1000}"]
    ckpt_dir = root / exp / "pretrain" / "checkpoints"
    log = tmp_path / "attempt1.log"
    proc = start("run", "pretrain", *args, run_root=root, log=log)
    try:
        wait_for(lambda: resume_files(ckpt_dir), timeout=300, proc=proc, log=log, what="a resume checkpoint")
        proc.send_signal(signal.SIGUSR1)  # the runner only, not its process group
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 3, text[-4000:]
    out = read_json(root / exp / "pretrain" / "result.json")
    assert out["status"] == "stopped" and out["world_size"] == WORLD
    st = stage_state(root, exp, "pretrain")
    assert st["status"] == "stopped"
    stop_step = int(re.search(r"\(step (\d+)\)", st["error"]).group(1))
    assert 0 < stop_step < steps
    assert resume_files(ckpt_dir)[-1].name == f"resume-{stop_step * BATCH * WORLD:09d}.pt"
    client, runs = mlflow_runs(root, exp)
    assert client.get_run(st["mlflow_run_id"]).info.status == "KILLED"

    restarted_ms = time.time() * 1000
    out = cli("run", "pretrain", *args, run_root=root).stdout
    st2 = stage_state(root, exp, "pretrain")
    assert st2["status"] == "done" and st2["mlflow_run_id"] == st["mlflow_run_id"]
    assert st2["result"]["start_step"] == stop_step and st2["result"]["step"] == steps
    assert f"continuing MLflow run {st['mlflow_run_id']}" in out
    hist = client.get_metric_history(st["mlflow_run_id"], "Progress/kimg")
    second = sorted(m.step for m in hist if m.timestamp >= restarted_ms)
    assert second and second[0] > stop_step and second[-1] == steps
    all_steps = [m.step for m in hist]
    assert len(all_steps) == len(set(all_steps))  # checkpoint at the stop step: no tick logged twice
