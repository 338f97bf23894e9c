"""Shared by the end-to-end tests: run the real CLI (`python -m pipeline ...`) in a subprocess.

Every test gets its own run_root (a tmp dir): its outputs, its state files and its MLflow
store (sqlite:///<run_root>/mlflow.db) are its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolbox import free_port

REPO = Path(__file__).resolve().parents[2]
_VENV_PY = REPO / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PY) if _VENV_PY.exists() else sys.executable

# A tiny model and data set: every stage of the DAG runs in seconds on one CPU core.
TINY_DATA_MODEL = [
    "data.resolution=16", "data.source.count=128", "data.target.count=64",
    "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2",
    "shard.workers=1",
]

RESUME_RE = re.compile(r"^resume-(\d{9,})\.pt$")


def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e.pop("MLFLOW_TRACKING_URI", None)  # the default store under run_root, never the user's server
    for k in [k for k in e if k.startswith("SLURM_")]:  # a test under sbatch must not look like a job step
        e.pop(k)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONUNBUFFERED"] = "1"
    e.update(extra or {})
    return e


def command(*args: str, run_root: Path) -> list[str]:
    return [PYTHON, "-m", "pipeline", *args, f"run_root={run_root}"]


def cli(*args: str, run_root: Path, timeout: float = 600, extra_env: dict | None = None,
        expect: int | None = 0) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ARGS run_root=...` to the end; stdout and stderr merged into .stdout."""
    proc = subprocess.run(command(*args, run_root=run_root), cwd=REPO, env=env(extra_env), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    if expect is not None and proc.returncode != expect:
        pytest.fail(f"`pipeline {' '.join(args)}` exited {proc.returncode}, expected {expect}:\n"
                    f"{proc.stdout[-6000:]}")
    return proc


def start(*args: str, run_root: Path, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    """Start `python -m pipeline ARGS` in its own process group (so a test can kill all of it)."""
    fh = open(log, "w")
    try:
        return subprocess.Popen(command(*args, run_root=run_root), cwd=REPO, env=env(extra_env),
                                stdout=fh, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        fh.close()  # the child holds its own descriptor


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_for(predicate, *, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None,
             what: str = "condition", poll: float = 0.02):
    """Poll ``predicate()`` until it returns something truthy; fail (with the log) on timeout or exit."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{_tail(log)}")
        time.sleep(poll)


def _tail(log: Path | None, n: int = 6000) -> str:
    return log.read_text()[-n:] if log is not None and log.exists() else "(no log)"


def resume_files(ckpt_dir: Path) -> list[Path]:
    """Complete resume checkpoints (atomic_save's temp files never match), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := RESUME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def stage_state(run_root: Path, experiment: str, stage: str) -> dict:
    return read_json(run_root / experiment / stage / "stage.json")


def mlflow_client(run_root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_root}/mlflow.db")


def mlflow_runs(run_root: Path, experiment: str):
    client = mlflow_client(run_root)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {run_root}/mlflow.db"
    return client, client.search_runs([exp.experiment_id], max_results=5000)


def stage_runs(runs, stage: str):
    """The stage's own runs (not its variants' nested runs)."""
    return [r for r in runs if r.data.tags.get("stage") == stage and "variant" not in r.data.tags]


def state_hash(module_or_state) -> str:
    """SHA-256 of a state dict (tests/e2e/ddp_registry.py dumps it per rank)."""
    sd = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    h = hashlib.sha256()
    for name, t in sorted(sd.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def assert_png(path: Path, min_side: int = 16):
    from PIL import Image

    assert path.is_file(), f"missing {path}"
    with Image.open(path) as im:
        assert im.format == "PNG", path
        assert min(im.size) >= min_side, (path, im.size)


# ---------------------------------------------------------------------------------- a real browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    """Debian's chromium (installed by .ci/run), or None."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")




def start_mlflow_ui(store_uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow ui` on 127.0.0.1 (a free port) over ``store_uri``; returns (process, base URL) once healthy."""
    import urllib.request

    port = free_port()
    mlflow = str(Path(PYTHON).parent / "mlflow")
    fh = open(log, "w")
    proc = subprocess.Popen([mlflow, "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env())
    fh.close()
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(healthy, timeout=120, proc=proc, log=log, what="mlflow ui", poll=0.5)
    return proc, url


def browse(url: str, tmp: Path, *, screenshot: Path | None = None, size=(1400, 1000)) -> str:
    """Load ``url`` in headless Chromium, let its scripts run (20 s of virtual time), return the DOM;
    with ``screenshot``, also write a PNG of the page."""
    base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
            "--virtual-time-budget=20000", f"--window-size={size[0]},{size[1]}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    return dom
