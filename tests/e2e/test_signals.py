"""SIGTERM during a non-training stage: it stops after the current item, says so truthfully, exits 3."""
from __future__ import annotations

import signal

import pytest
from e2e_helpers import kill_group, stage_state, start, wait_for

pytestmark = pytest.mark.slow  # trains (the whole DAG or a training stage): not in make test-fast


def test_sigterm_stops_the_shard_stage(tmp_path):
    root, log = tmp_path / "runs", tmp_path / "shard.log"
    args = ["experiment=sig", "tracking.enabled=false", "data.resolution=16", "data.source.count=400000",
            "data.target.count=64", "shard.workers=1"]
    proc = start("run", "shard", *args, run_root=root, log=log)
    try:
        wait_for(lambda: "shard source" in log.read_text(), timeout=120, proc=proc, log=log, what="sharding to start")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    text = log.read_text()
    assert rc == 3, text[-3000:]
    assert "received SIGTERM: stopping shard after the current item" in text
    assert "checkpointing" not in text
    st = stage_state(root, "sig", "shard")
    assert st["status"] == "stopped" and "shards this set again from the start" in st["error"]
    assert not list((root / "sig" / "shard" / "source").glob("*.tar.tmp*"))
