"""The GPU acceptance command rehearsed on the CPU (benchmarks/gpu_acceptance.sh --cpu-rehearsal):
every step runs with tiny sizes, the CUDA-only ones say so, and the report is written, so the
GPU minutes go to measuring, not to debugging the script."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_cpu_rehearsal_runs_every_step(tmp_path):
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_acceptance.sh"), "--cpu-rehearsal", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    report = (tmp_path / "gpu-cpu-rehearsal.md").read_text()
    rows = dict(re.findall(r"^\| (\d[ab]?) \| [^|]+ \| ([^|]+?) \|", report, re.M))
    assert set(rows) == {"1", "2a", "2b", "3", "4", "5", "6"}, report
    assert rows["2b"] == rows["3"] == "skipped: no CUDA"
    for step in ("1", "2a", "4", "5", "6"):  # the DAG ran with mlflow/torch-fidelity blocked from import
        assert rows[step] == "ok", report
    assert "shard done, pretrain done, finetune done, swap done" in report
    step_rows = dict(re.findall(r"^\| (ours:[\w:]+|nvlabs) \| [^|]*\| [^|]*\| [^|]*\| [^|]*\| ([^|]+?) \|", report, re.M))
    assert step_rows["ours:ref:fp32"] == "ok" and step_rows["ours:cuda:bf16"] == "skipped: no CUDA"
    # NVlabs' code is there after --prepare (an ignored folder); without it the row says what to do
    peer = REPO / ".peer" / "stylegan2-ada-pytorch"
    assert step_rows["nvlabs"] == "ok" if peer.is_dir() else "--prepare" in step_rows["nvlabs"]
    assert "Result: all checks passed" in report


def test_rehearsal_only_reruns_the_named_steps(tmp_path):
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_acceptance.sh"), "--cpu-rehearsal", "--only", "6",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = (tmp_path / "gpu-cpu-rehearsal.md").read_text()
    assert re.search(r"^\| 6 \| [^|]+ \| ok \|", report, re.M)
    assert re.search(r"^\| 5 \| [^|]+ \| not run: --only \|", report, re.M)
