"""A training stage survives a hard kill (SIGKILL: nothing written on the way out) and a graceful
stop (SIGUSR1: checkpoint, exit 3): the next `pipeline run` continues from the last checkpoint,
in the same MLflow stage run, and finishes the budget.
"""
from __future__ import annotations

import re
import signal
import time

import pytest

from e2e_helpers import (
    TINY_DATA_MODEL,
    cli,
    kill_group,
    mlflow_runs,
    read_json,
    resume_files,
    stage_runs,
    stage_state,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow

BATCH, KIMG = 8, 1.0
FULL_STEPS = int(KIMG * 1000) // BATCH  # 125
TICK_STEPS = 8


def _args(exp):
    # snapshots every 16 steps from early on; the budget leaves > 100 steps after the first one,
    # so the signal always lands while the loop is still training
    return [f"experiment={exp}", *TINY_DATA_MODEL, "data.target.count=16",
            f"pretrain.kimg={KIMG}", f"pretrain.batch={BATCH}", f"pretrain.tick_kimg={TICK_STEPS * BATCH / 1000}",
            "pretrain.snapshot_kimg=0.128", "pretrain.sample_kimg=1", "pretrain.keep_checkpoints=50", "pretrain.grid=[2,2]"]


def _step_of(path) -> int:
    return int(re.search(r"resume-(\d+)\.pt$", str(path)).group(1)) // BATCH


def _progress_history(run_root, exp, run_id):
    client, _ = mlflow_runs(run_root, exp)
    return client.get_metric_history(run_id, "Progress/kimg")


def _check_finished_after_resume(root, exp, run_id, start_step, restarted_ms, out):
    st = stage_state(root, exp, "pretrain")
    assert st["status"] == "done"
    assert st["mlflow_run_id"] == run_id, "the resumed attempt must log into the same MLflow run"
    res = st["result"]
    assert res["start_step"] == start_step and res["resumed_from"].endswith(f"resume-{start_step * BATCH:09d}.pt")
    assert res["step"] == FULL_STEPS and res["kimg"] == pytest.approx(KIMG)
    assert (root / exp / "pretrain" / "checkpoints" / "network-final.pt").is_file()
    assert f"[pretrain] continuing MLflow run {run_id}" in out
    assert f"resume-{start_step * BATCH:09d}.pt" in out  # "[pretrain] resuming from ..."

    _, runs = mlflow_runs(root, exp)
    pre = stage_runs(runs, "pretrain")
    assert [r.info.run_id for r in pre] == [run_id] and pre[0].info.status == "FINISHED"
    hist = _progress_history(root, exp, run_id)
    first = [m for m in hist if m.timestamp < restarted_ms]
    second = [m for m in hist if m.timestamp >= restarted_ms]
    assert first, "the interrupted attempt logged nothing into the stage run"
    # the second attempt reports exactly the ticks after the checkpoint it resumed from (and the end),
    # each once: it did not start again at step 0
    steps2 = sorted(m.step for m in second)
    want = sorted({s for s in range(start_step + 1, FULL_STEPS + 1) if s % TICK_STEPS == 0} | {FULL_STEPS})
    assert steps2 == want, (start_step, steps2)
    assert max(m.value for m in second) == pytest.approx(KIMG)


def test_sigkill_then_rerun_continues_from_last_checkpoint(tmp_path):
    root, exp = tmp_path / "runs", "kill"
    ckpt_dir = root / exp / "pretrain" / "checkpoints"
    log = tmp_path / "attempt1.log"
    proc = start("run", "pretrain", *_args(exp), run_root=root, log=log)
    try:
        wait_for(lambda: resume_files(ckpt_dir), timeout=300, proc=proc, log=log, what="a resume checkpoint")
        kill_group(proc, signal.SIGKILL)  # the whole process group, no chance to write anything
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)

    st = stage_state(root, exp, "pretrain")
    assert st["status"] == "running"  # a hard kill leaves the state as it was
    run_id = st["mlflow_run_id"]
    assert not (ckpt_dir / "network-final.pt").exists()
    last = resume_files(ckpt_dir)[-1]
    start_step = _step_of(last)
    assert 0 < start_step < FULL_STEPS

    restarted_ms = time.time() * 1000
    out = cli("run", "pretrain", *_args(exp), run_root=root).stdout
    assert "[shard] up to date" in out
    assert "[pretrain] running (previous run running)" in out
    _check_finished_after_resume(root, exp, run_id, start_step, restarted_ms, out)
    # the killed attempt's `pipeline run` run is closed by the rerun, not left RUNNING forever
    assert "MLflow: marked" in out and "of a killed earlier `pipeline run` KILLED" in out
    _, runs = mlflow_runs(root, exp)
    tops = sorted((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    assert [r.info.status for r in tops] == ["KILLED", "FINISHED"]


def test_sigusr1_stops_with_checkpoint_exit_3_then_rerun_finishes(tmp_path):
    root, exp = tmp_path / "runs", "usr1"
    ckpt_dir = root / exp / "pretrain" / "checkpoints"
    log = tmp_path / "attempt1.log"
    proc = start("run", "pretrain", *_args(exp), run_root=root, log=log)
    try:
        wait_for(lambda: resume_files(ckpt_dir), timeout=300, proc=proc, log=log, what="a resume checkpoint")
        proc.send_signal(signal.SIGUSR1)  # what SLURM sends before the time limit
        rc = proc.wait(timeout=120)
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 3, text[-4000:]
    assert "received SIGUSR1" in text and "[pretrain] stopped:" in text

    st = stage_state(root, exp, "pretrain")
    assert st["status"] == "stopped"
    m = re.search(r"stopped at [\d.]+ kimg \(step (\d+)\); checkpoint (\S+)", st["error"])
    assert m, st["error"]
    stop_step, ckpt = int(m.group(1)), m.group(2)
    assert 0 < stop_step < FULL_STEPS
    assert resume_files(ckpt_dir)[-1].name == f"resume-{stop_step * BATCH:09d}.pt" and ckpt.endswith(
        f"resume-{stop_step * BATCH:09d}.pt")  # written on the way out, at the step it stopped
    assert not (ckpt_dir / "network-final.pt").exists()
    assert not (root / exp / "pretrain" / ".stop-request").exists()
    run_id = st["mlflow_run_id"]
    client, runs = mlflow_runs(root, exp)
    pre = client.get_run(run_id)
    assert pre.info.status == "KILLED"
    assert client.get_run(pre.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    listing = cli("list", *_args(exp), run_root=root).stdout
    assert any(ln.split()[:2] == ["pretrain", "stopped"] for ln in listing.splitlines()), listing

    restarted_ms = time.time() * 1000
    out = cli("run", "pretrain", *_args(exp), run_root=root).stdout
    assert "[pretrain] running (previous run stopped)" in out
    _check_finished_after_resume(root, exp, run_id, stop_step, restarted_ms, out)
    assert read_json(root / exp / "pretrain" / "result.json")["status"] == "done"
