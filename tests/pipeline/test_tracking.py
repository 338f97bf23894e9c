"""MLflow through a real `mlflow server` on 127.0.0.1: a stage's run, params, metrics, artifacts."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.__main__ import main
from toolbox import free_port

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [str(MLFLOW) if MLFLOW.exists() else shutil.which("mlflow"), "server", "--host", "127.0.0.1",
           "--port", str(port), "--backend-store-uri", f"sqlite:///{root}/server.db",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(uri + "/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not come up in 90 s")
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_shard_stage_logs_through_http(mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    args = [f"run_root={tmp_path}", "experiment=http-test", "data.resolution=16",
            "data.source.count=24", "data.target.count=24", "shard.workers=1", "shard.max_per_shard=10"]
    assert main(["run", "shard", *args]) == 0
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("http-test")
    runs = client.search_runs([exp.experiment_id])
    stage = [r for r in runs if r.data.tags.get("stage") == "shard"]
    assert len(stage) == 1, [r.info.run_name for r in runs]
    run = stage[0]
    parent_id = run.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert run.info.status == "FINISHED"
    assert run.data.params["data.resolution"] == "16"
    assert run.data.params["shard.format"] == "png"
    assert run.data.metrics["source/written"] == 24.0
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"source", "target", "previews"} <= arts
    previews = {a.path for a in client.list_artifacts(run.info.run_id, "previews")}
    assert "previews/source-preview.png" in previews
    local = client.download_artifacts(run.info.run_id, "source/manifest.json", str(tmp_path / "dl"))
    assert '"count": 24' in Path(local).read_text()


def test_unreachable_server_fails_before_work(tmp_path, monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    rc = main(["run", "shard", f"run_root={tmp_path}", "experiment=x"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}" in err and "cannot be reached" in err
    assert not (tmp_path / "x").exists()


def test_close_orphans_marks_runs_of_a_dead_pipeline_process_killed(tmp_path):
    """A `pipeline run` killed with SIGKILL leaves its runs RUNNING; the next run closes them,
    and only those whose process is gone (same host)."""
    from pipeline.config import load_config
    from pipeline.registry import load
    from pipeline.tracking import Tracker

    cfg = load_config(None, [f"run_root={tmp_path}", "experiment=orphans"], registry=load("toy_registry"))
    tracker = Tracker(cfg)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tracker.parent("run all", tags={"pid": str(dead.pid)})   # overrides the live pid tag
    stage = orphan.child("pretrain", tags={"stage": "pretrain"})
    variant = stage.child("freezed", tags={"stage": "finetune", "variant": "freezed"}, nested=False)
    live = tracker.parent("run all")                                   # this process: alive
    live_stage = live.child("shard", tags={"stage": "shard"})
    finished = tracker.parent("run all", tags={"pid": str(dead.pid)})
    finished.finish("FINISHED")

    closed = tracker.close_orphans()
    status = {r: tracker.client.get_run(r).info.status for r in
              (orphan.run_id, stage.run_id, variant.run_id, live.run_id, live_stage.run_id, finished.run_id)}
    assert sorted(closed) == sorted([orphan.run_id, stage.run_id, variant.run_id])
    assert [status[r] for r in (orphan.run_id, stage.run_id, variant.run_id)] == ["KILLED"] * 3
    assert status[live.run_id] == status[live_stage.run_id] == "RUNNING"
    assert status[finished.run_id] == "FINISHED"
    assert tracker.close_orphans() == []


def _toy_cfg(root, *over):
    from pipeline.config import load_config
    from pipeline.registry import load

    return load_config(None, [f"run_root={root}", "experiment=trk", *over], registry=load("toy_registry"))


def test_uri_is_checked_and_echoed_without_its_password(tmp_path, monkeypatch):
    import pytest

    from pipeline.tracking import Tracker, TrackingError, redact

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert redact("http://alice:s3cret@mlflow.example:5000/x") == "http://alice:***@mlflow.example:5000/x"
    assert redact("sqlite:////a/b.db") == "sqlite:////a/b.db"
    for uri in ("foo://bar", "file:///tmp/mlruns", "mlruns"):
        with pytest.raises(TrackingError, match="is not one this pipeline uses"):
            Tracker(_toy_cfg(tmp_path, f"tracking.uri={uri}"))
    with pytest.raises(TrackingError) as e:
        Tracker(_toy_cfg(tmp_path, "tracking.uri=http://alice:s3cret@127.0.0.1:9"))
    assert "s3cret" not in str(e.value) and "alice:***@" in str(e.value)


def test_damaged_store_gets_one_line(tmp_path, monkeypatch):
    import pytest

    from pipeline.tracking import Tracker, TrackingError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    with pytest.raises(TrackingError, match="empty .0-byte. file"):
        Tracker(_toy_cfg(tmp_path))
    assert db.stat().st_size == 0  # not silently re-created
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TrackingError) as e:
        Tracker(_toy_cfg(tmp_path))
    assert str(db) in str(e.value) and "tracking.enabled=false" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_compare_on_a_missing_run_root_creates_nothing(tmp_path, capsys, monkeypatch):
    from pipeline.__main__ import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "never"
    assert main(["compare", f"run_root={root}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not root.exists()


def test_copied_run_root_logs_into_the_copy(tmp_path, monkeypatch):
    import shutil

    from pipeline.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "runs", tmp_path / "runs2"
    t = Tracker(_toy_cfg(a))
    run = t.parent("first")
    (tmp_path / "x.txt").write_text("x")
    run.artifact(tmp_path / "x.txt", "d")
    run.finish()
    shutil.copytree(a, b)
    before = sorted(p.relative_to(a) for p in a.rglob("*"))
    t2 = Tracker(_toy_cfg(b))
    exp = t2.client.get_experiment(t2.experiment_id)
    assert exp.artifact_location == (b / "mlartifacts").as_uri()
    old = t2.client.get_run(run.run_id)
    assert old.info.artifact_uri.startswith((b / "mlartifacts").as_uri())
    run2 = t2.parent("second")
    run2.artifact(tmp_path / "x.txt", "d")
    assert list((b / "mlartifacts").rglob("x.txt")) and len(list(b.rglob("x.txt"))) == 2
    assert sorted(p.relative_to(a) for p in a.rglob("*")) == before  # the original is untouched
    assert t.client.get_experiment(t.experiment_id) is not None
