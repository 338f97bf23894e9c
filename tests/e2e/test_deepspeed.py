"""DeepSpeed ZeRO with 2 real processes on CPU (gloo), started by `accelerate launch` as the DDP path is.

* backend_losses.py (launched): DDP, ZeRO-0, ZeRO-1 and ZeRO-2 from one seed agree step by step, and a
  stopped ZeRO-2 run resumes to the same weights as an uninterrupted one;
* `pipeline run finetune launch.backend=deepspeed launch.num_processes=2` (pretrain, then FreezeSG):
  world size 2, identical weights on both ranks, the optimizer state partitioned (from the files),
  the frozen tensors untouched;
* a SIGKILL mid-pretraining, and the rerun continues from the newest complete checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from e2e_helpers import PYTHON, REPO, TINY_DATA_MODEL, cli, env, free_port, read_json, stage_state, state_hash

pytestmark = pytest.mark.slow
pytest.importorskip("deepspeed")

HERE = Path(__file__).resolve().parent
EXP = "zero2"
BATCH, WORLD = 8, 2
STEPS, FT_STEPS = 16, 4
VARIANT = "freezesg"
ARGS = [f"experiment={EXP}", *TINY_DATA_MODEL, "data.target.count=32", "launch.num_processes=2",
        "launch.backend=deepspeed", "launch.deepspeed=zero2",
        f"pretrain.kimg={STEPS * BATCH * WORLD / 1000}", f"pretrain.batch={BATCH}", "pretrain.tick_kimg=0.032",
        "pretrain.sample_kimg=1", "pretrain.snapshot_kimg=0.128", "pretrain.grid=[2,2]",
        f"finetune.kimg={FT_STEPS * BATCH * WORLD / 1000}", f"finetune.batch={BATCH}", "finetune.tick_kimg=0.032",
        "finetune.sample_kimg=1", "finetune.snapshot_kimg=1", "finetune.grid=[2,2]",
        f"finetune.run_variants=[{VARIANT}]"]
G_UP_TO_8 = ("input.", "conv1.", "to_rgb1.", "convs.0.", "convs.1.", "to_rgbs.0.")


# ----------------------------------------------------------------------------- the backends agree

@pytest.fixture(scope="module")
def backend_losses(tmp_path_factory):
    out = tmp_path_factory.mktemp("backends") / "losses.json"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
           str(HERE / "backend_losses.py"), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env({"ACCELERATE_USE_CPU": "1"}), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    ranks = [json.loads((out.parent / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return json.loads(out.read_text()), ranks


def test_ddp_and_zero_0_1_2_train_the_same_gan(backend_losses):
    """Same seed, same data, every phase (R1, path length, mixing, ADA, FreezeSG, structure loss).

    Tolerance: 1e-6 relative on every logged loss of the 6 steps. Equal to the last bit is what this
    machine gives (and the weights hash equal too): with 2 ranks an all-reduce adds two numbers
    (a + b == b + a exactly) and halves the sum (exact in binary), and Adam over ZeRO's flat partition
    does the same elementwise arithmetic as over the separate tensors. They need not be bitwise
    equal elsewhere: with more ranks or NCCL's ring/tree reductions the summation order differs
    between DDP's buckets and ZeRO's, which changes the last bits, and GAN dynamics amplify that
    over many steps; hence a tolerance, over the first steps only.
    """
    res, ranks = backend_losses
    ddp = res["ddp"]["losses"]
    assert [row["step"] for row in ddp] == list(range(1, 7)) and res["ddp"]["world"] == WORLD
    assert {"Loss/R1", "Loss/PL", "Loss/structure"} <= {k for row in ddp for k in row}
    for name in ("zero0", "zero1", "zero2"):
        rows = res[name]["losses"]
        assert [r["step"] for r in rows] == [r["step"] for r in ddp]
        for a, b in zip(ddp, rows):
            for key in (k for k in a if k.startswith("Loss/")):
                assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-9), (name, a["step"], key, a[key], b[key])
        assert res[name]["last_checkpoint"].endswith(".ds")
    for r in ranks:  # both ranks hold the same networks after each run
        assert r == ranks[0]


def test_a_stopped_zero2_run_resumes_to_the_uninterrupted_weights(backend_losses):
    res, _ = backend_losses
    stopped, resumed = res["zero2-stopped"], res["zero2-resumed"]
    assert stopped["status"] == "stopped" and stopped["step"] == 3
    assert stopped["last_checkpoint"].endswith("resume-000000024.ds")  # 3 steps x 2 ranks x 4 (the script's batch)
    assert resumed["status"] == "done" and resumed["start_step"] == 3 and resumed["step"] == 6
    assert [r["step"] for r in resumed["losses"]] == [4, 5, 6]  # no step trained twice
    assert resumed["hash"] == res["zero2"]["hash"]  # G, D and G_ema bit for bit
    # and DDP the same (each rank resumes with its own running path-length mean)
    assert res["ddp-resumed"]["hash"] == res["ddp"]["hash"]


# ----------------------------------------------------------------------------- the pipeline under ZeRO-2

@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero2")
    dump = root / "debug-dump"
    extra = {"DDP_TEST_DUMP": str(dump), "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    out = cli("run", "finetune", "--registry", "ddp_registry", *ARGS, run_root=root, extra_env=extra, timeout=600).stdout
    (root / "run.log").write_text(out)
    return root, dump, out


def _adam_numel(path: Path) -> int:
    """exp_avg elements in one rank's ZeRO optimizer partition file."""
    state = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]["base_optimizer_state"]
    return sum(s["exp_avg"].numel() for s in state["state"].values())


def test_zero2_pipeline_two_ranks_partitioned_state_identical_weights(zero2_run):
    from cartoon_stylegan import checkpoint

    root, dump, out = zero2_run
    assert out.count("--multi_gpu --num_processes 2") == 2
    assert out.count("backend: deepspeed ZeRO-2 (2 processes") == 2
    for stage in ("pretrain", "finetune"):
        assert read_json(root / EXP / stage / "result.json")["world_size"] == WORLD
    assert stage_state(root, EXP, "pretrain")["result"]["step"] == STEPS
    assert stage_state(root, EXP, "finetune")["result"][VARIANT]["step"] == FT_STEPS

    for stage, label in (("pretrain", "pretrain"), ("finetune", f"finetune/{VARIANT}")):
        ranks = [read_json(dump / stage / f"rank{k}.json") for k in range(WORLD)]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == WORLD for r in ranks)
        assert ranks[0]["hashes"] == ranks[1]["hashes"], f"{stage}: the ranks ended with different weights"
        final = checkpoint.load_transfer(root / EXP / label / "checkpoints" / "network-final.pt")
        assert {k: state_hash(final[k]) for k in ("g", "d", "g_ema")} == {
            k: ranks[0]["hashes"][f"{label}/{k}"] for k in ("g", "d", "g_ema")}

    src = checkpoint.load_transfer(root / EXP / "pretrain" / "checkpoints" / "network-final.pt")
    tuned = checkpoint.load_transfer(root / EXP / "finetune" / VARIANT / "checkpoints" / "network-final.pt")
    frozen = {n for n, _ in src["g"].named_parameters() if n.startswith(G_UP_TO_8) or n.endswith(".noise.weight")}
    for key in ("g", "g_ema"):
        a, b = dict(src["g_ema"].named_parameters()), dict(tuned[key].named_parameters())
        for n in a:
            assert torch.equal(a[n], b[n]) == (n in frozen), f"{key}.{n}"

    # the optimizer state is split between the ranks: each file holds about half of the Adam moments,
    # together exactly the trainable parameters (plus alignment padding); frozen ones hold none
    for label, G in (("pretrain", src["g"]), (f"finetune/{VARIANT}", tuned["g"])):
        snaps = sorted((root / EXP / label / "checkpoints").glob("resume-*.ds"))
        assert snaps and not list((root / EXP / label / "checkpoints").glob(".partial-*"))
        # (use_noise is off in this config: the noise strengths never train, in pretraining either)
        fixed = frozen if label != "pretrain" else {n for n in frozen if n.endswith(".noise.weight")}
        trainable = sum(p.numel() for n, p in G.named_parameters() if n not in fixed)
        parts = [_adam_numel(snaps[-1] / "G" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt") for r in range(WORLD)]
        assert trainable <= sum(parts) <= trainable + 2 * WORLD * 16, (label, parts, trainable)
        assert all(0.45 < p / sum(parts) < 0.55 for p in parts), parts
        assert not list((snaps[-1] / "G").glob("zero_pp_rank_2_*"))


# ----------------------------------------------------------------------------- kill and resume

def test_sigkill_mid_pretraining_then_rerun_continues_from_the_newest_complete_checkpoint(tmp_path):
    from e2e_helpers import start, wait_for

    root, exp = tmp_path / "runs", "zero2-kill"
    steps = 400  # far more than trains before the kill
    base = [f"experiment={exp}", *[a for a in ARGS if not a.startswith(("experiment=", "pretrain.kimg="))],
            "pretrain.snapshot_kimg=0.064"]
    args = [*base, f"pretrain.kimg={steps * BATCH * WORLD / 1000}"]
    ckpt_dir = root / exp / "pretrain" / "checkpoints"
    log = tmp_path / "attempt1.log"
    proc = start("run", "pretrain", *args, run_root=root, log=log)
    try:
        wait_for(lambda: len(list(ckpt_dir.glob("resume-*.ds"))) >= 2, timeout=300, proc=proc, log=log,
                 what="two DeepSpeed checkpoints")
    finally:
        # the runner's group: the runner and the launcher; the ranks (sessions of their own) follow
        # their launcher (pipeline.launch.die_with_parent)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    time.sleep(2)
    alive = subprocess.run(["pgrep", "-f", f"pipeline.worker .*{exp}/pretrain"], capture_output=True, text=True)
    assert not alive.stdout.strip(), f"ranks outlived their launcher: {alive.stdout}"
    snaps = sorted(ckpt_dir.glob("resume-*.ds"))
    assert len(snaps) >= 2 and not (ckpt_dir / "network-final.pt").exists()
    newest = int(snaps[-1].name[len("resume-"):-len(".ds")]) // (BATCH * WORLD)
    assert 0 < newest < steps
    more = newest + 8  # a rerun with a smaller budget: the same model (kimg is not part of its lineage)
    out = cli("run", "pretrain", *base, f"pretrain.kimg={more * BATCH * WORLD / 1000}", run_root=root).stdout
    st = stage_state(root, exp, "pretrain")
    assert st["status"] == "done", out[-3000:]
    res = st["result"]
    # it continued from the newest complete checkpoint: no step before it trained twice
    assert res["resumed_from"] == str(snaps[-1]) and res["start_step"] == newest and res["step"] == more
    assert f"resuming from {snaps[-1]}" in out
    assert not list(ckpt_dir.glob(".partial-*"))


def test_one_process_in_the_runner_trains_with_zero2(tmp_path):
    """launch.num_processes=1: the stage runs in the runner's own process, which gives DeepSpeed its
    one-process group (pipeline.launch.one_process_group: the launcher side owns RANK / WORLD_SIZE /
    MASTER_*; the backend only joins it)."""
    root = tmp_path / "runs"
    args = ["experiment=zero2-one", *[a for a in ARGS if not a.startswith(("experiment=", "launch.num_processes=",
                                                                               "pretrain.kimg="))],
            "launch.num_processes=1", f"pretrain.kimg={4 * BATCH / 1000}"]
    out = cli("run", "pretrain", *args, run_root=root).stdout
    st = stage_state(root, "zero2-one", "pretrain")
    assert st["status"] == "done" and st["result"]["step"] == 4, out[-3000:]
    assert "launching:" not in out  # in the runner's process, no launcher
    assert (root / "zero2-one" / "pretrain" / "checkpoints" / "network-final.pt").is_file()
