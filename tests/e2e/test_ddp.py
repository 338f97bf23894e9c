"""Real 2-process DDP on CPU (gloo) through the launcher: `pipeline run finetune launch.num_processes=2`
(pretrain, then one FreezeSG variant, each launched).

pipeline/launch.py runs `accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1
(`accelerate launch --cpu --num_processes 2` would silently start one process). Each rank runs
pipeline/worker.py over the test registry tests/e2e/ddp_registry.py (the shipped stages, the training ones
wrapped): with DDP_TEST_DUMP=<dir>, each rank writes <dir>/<stage>/rank<k>.json with the hashes of the
networks it trained.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from e2e_helpers import TINY_DATA_MODEL, cli, mlflow_runs, read_json, stage_runs, stage_state, state_hash

pytestmark = pytest.mark.slow

EXP = "ddp"
BATCH, WORLD = 8, 2
STEPS, FT_STEPS = 16, 4
KIMG = STEPS * BATCH * WORLD / 1000  # the budget counts images over all ranks
FT_KIMG = FT_STEPS * BATCH * WORLD / 1000
VARIANT = "freezesg"  # frozen G blocks + source styles: DDP over a partly frozen model with G_source
ARGS = [f"experiment={EXP}", *TINY_DATA_MODEL, "data.target.count=32", "launch.num_processes=2",
        f"pretrain.kimg={KIMG}", f"pretrain.batch={BATCH}", "pretrain.tick_kimg=0.032", "pretrain.sample_kimg=1",
        "pretrain.snapshot_kimg=0.128", "pretrain.grid=[2,2]",
        f"finetune.kimg={FT_KIMG}", f"finetune.batch={BATCH}", "finetune.tick_kimg=0.032",
        "finetune.sample_kimg=1", "finetune.snapshot_kimg=1", "finetune.grid=[2,2]",
        f"finetune.run_variants=[{VARIANT}]"]
G_UP_TO_8 = ("input.", "conv1.", "to_rgb1.", "convs.0.", "convs.1.", "to_rgbs.0.")  # FreezeSG: the mapping trains


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    dump = root / "debug-dump"
    here = str(Path(__file__).resolve().parent)
    env = {"DDP_TEST_DUMP": str(dump), "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    out = cli("run", "finetune", "--registry", "ddp_registry", *ARGS, run_root=root, extra_env=env, timeout=600).stdout
    (root / "run.log").write_text(out)
    return root, dump, out


def _rank_hashes(dump, stage):
    ranks = [read_json(dump / stage / f"rank{k}.json") for k in range(WORLD)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == WORLD for r in ranks)
    return [r["hashes"] for r in ranks]


def test_two_ranks_train_identical_weights(ddp_run):
    from cartoon_stylegan import checkpoint

    root, dump, out = ddp_run
    assert out.count("--multi_gpu --num_processes 2") == 2  # pretrain and finetune, both launched
    for stage in ("pretrain", "finetune"):
        assert read_json(root / EXP / stage / "result.json")["world_size"] == WORLD
    res = stage_state(root, EXP, "pretrain")["result"]
    assert res["step"] == STEPS and res["kimg"] == pytest.approx(KIMG)
    ft = stage_state(root, EXP, "finetune")["result"]
    assert list(ft) == [VARIANT] and ft[VARIANT]["step"] == FT_STEPS

    h0, h1 = _rank_hashes(dump, "pretrain")
    assert set(h0) == {"pretrain/g", "pretrain/d", "pretrain/g_ema"}
    assert h0 == h1, "the ranks ended pretraining with different weights"
    # and what rank 0 saved is what both ranks hold
    src = checkpoint.load_transfer(root / EXP / "pretrain" / "checkpoints" / "network-final.pt")
    assert {k: state_hash(src[k]) for k in ("g", "d", "g_ema")} == {k: h0[f"pretrain/{k}"] for k in ("g", "d", "g_ema")}

    f0, f1 = _rank_hashes(dump, "finetune")
    assert set(f0) == {f"finetune/{VARIANT}/{k}" for k in ("g", "d", "g_ema")}
    assert f0 == f1, "the ranks ended fine-tuning with different weights"
    tuned = checkpoint.load_transfer(root / EXP / "finetune" / VARIANT / "checkpoints" / "network-final.pt")
    assert {k: state_hash(tuned[k]) for k in ("g", "d", "g_ema")} == {
        k: f0[f"finetune/{VARIANT}/{k}"] for k in ("g", "d", "g_ema")}
    for key in ("g", "g_ema"):  # frozen under DDP too (a fine-tune starts G and G_ema from the source's G_ema)
        a, b = dict(src["g_ema"].named_parameters()), dict(tuned[key].named_parameters())
        for n in a:  # default config: use_noise false, so the noise strengths never train either
            fixed = n.startswith(G_UP_TO_8) or n.endswith(".noise.weight")
            assert torch.equal(a[n], b[n]) == fixed, f"{key}.{n}"


def test_mlflow_logs_from_rank_0_only(ddp_run):
    root, _, _ = ddp_run
    client, runs = mlflow_runs(root, EXP)
    assert len(runs) == 5  # the parent, shard, pretrain, finetune and its one variant
    for stage in ("pretrain", "finetune"):
        mine = stage_runs(runs, stage)
        assert len(mine) == 1 and mine[0].info.status == "FINISHED"
        assert mine[0].info.run_id == stage_state(root, EXP, stage)["mlflow_run_id"]
    variant = [r for r in runs if r.data.tags.get("variant") == VARIANT]
    assert len(variant) == 1 and variant[0].info.status == "FINISHED"
    for run, steps in ((stage_runs(runs, "pretrain")[0], STEPS), (variant[0], FT_STEPS)):
        for key in ("Loss/G", "Progress/kimg"):
            logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            # one value per tick (every 32 images = 2 steps of 2 x 8), none twice
            assert sorted(logged) == list(range(2, steps + 1, 2)), (key, logged)


def _image_keys(loader, n_batches):
    keys = []
    for _ in range(n_batches):
        for img in next(loader):
            keys.append(hashlib.sha256(img.numpy().tobytes()).hexdigest())
    return keys


def test_ranks_read_disjoint_samples(ddp_run):
    """The loader split the ranks used (same arguments as stages/training.py), on the run's shards."""
    from cartoon_stylegan.data import make_loader
    from stages import load_config

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
    steps = 64  # the first checkpoint comes at step 8: the signal lands while the ranks train
    args = [f"experiment={exp}", *[a for a in ARGS if not a.startswith(("experiment=", "pretrain.kimg="))],
            f"pretrain.kimg={steps * BATCH * WORLD / 1000}"]
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
