"""MLflow tracking: the only module that imports mlflow.

One parent run per `pipeline run` invocation, one nested run per stage, and nested runs
under a stage for its variants. Everything goes through ``MlflowClient`` with explicit run
ids (no global "active run"), so a launched worker process can attach to the stage run the
runner created, and a requeued job continues the same run.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline import artifacts


class TrackingError(RuntimeError):
    pass


PARENT_TAG = "pipeline.parent"  # the run a top-level (not nested) child belongs to

# MLflow 3's experiment kind: a model-training experiment opens on its runs table, not the GenAI page
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# tracking stores MLflow 3 reads (its ./mlruns file store is in maintenance mode: refused here)
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def resolve_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri or artifacts.default_tracking_uri(cfg)


def redact(uri: str) -> str:
    """The URI without a password (``user:secret@host`` -> ``user:***@host``), for messages."""
    return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", uri)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, timeout: float = 5.0, *, create: bool = True) -> None:
    """Fail early, naming the URI (without its password), when the store cannot be used.

    create=False (read-only commands such as `compare`): a missing sqlite store is an error,
    not a new empty store.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme.split("+")[0] not in SCHEMES:
        raise TrackingError(f"tracking URI {redact(uri)!r}: scheme {scheme or '(none)'!r} is not one this pipeline "
                            f"uses ({', '.join(s + '://' for s in SCHEMES)}; sqlite:///<path>/mlflow.db for a "
                            f"local store), or set tracking.enabled=false")
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingError(f"MLflow tracking server {redact(uri)} answered {r.status} on /health")
        except (urllib.error.URLError, OSError, socket.timeout) as e:
            raise TrackingError(f"MLflow tracking server {redact(uri)} cannot be reached ({e}); start it, "
                                f"or set MLFLOW_TRACKING_URI / tracking.uri, or tracking.enabled=false") from None
    path = _sqlite_path(uri)
    if path is not None:
        if path.exists() and path.is_file() and path.stat().st_size == 0:
            raise TrackingError(f"MLflow store {path} is an empty (0-byte) file: a damaged store? Move it "
                                f"aside to start a new one, or run with tracking.enabled=false")
        if not path.exists() and not create:
            raise TrackingError(f"no MLflow store at {path} (nothing has been run with this run_root yet)")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)


def _store_error(uri: str, e: Exception) -> TrackingError:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    path = _sqlite_path(uri)
    what = f"the file {path}" if path else redact(uri)
    return TrackingError(f"MLflow store {redact(uri)} cannot be used ({type(e).__name__}: {first}); if {what} "
                         f"is damaged, move it aside to start a new store, or run with tracking.enabled=false")


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class RunLogger:
    """Logs to one MLflow run by id. Created by :class:`Tracker`; cheap to pass around."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    def params(self, params: dict):
        from mlflow.entities import Param

        flat = _flatten(params)
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, metrics: dict, step: int | None = None):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step or 0))
                 for k, v in metrics.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def tags(self, tags: dict):
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(self.run_id, k, str(v))

    def artifact(self, path, artifact_path: str | None = None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def child(self, name: str, tags: dict | None = None, run_id: str | None = None,
              nested: bool = True) -> "RunLogger":
        """A run under this one: nested (MLflow's parent link), or -- ``nested=False``, for the runs a
        user compares side by side (the fine-tuned variants) -- a top-level run in the runs table
        that names this one in its ``pipeline.parent`` tag."""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return RunLogger(self.client, run_id, self.experiment_id)
        link = {"mlflow.parentRunId": self.run_id} if nested else {PARENT_TAG: self.run_id}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**link, **(tags or {})})
        return RunLogger(self.client, run.info.run_id, self.experiment_id)

    def finish(self, status: str = "FINISHED"):
        self.client.set_terminated(self.run_id, status=status)


def _pid_gone(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return False  # runs from before the pid tag: leave them alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class NullLogger:
    """Stands in on non-main ranks and when tracking is off."""

    run_id = None
    experiment_id = None

    def params(self, params):
        pass

    def metrics(self, metrics, step=None):
        pass

    def tags(self, tags):
        pass

    def artifact(self, path, artifact_path=None):
        pass

    def child(self, name, tags=None, run_id=None, nested=True):
        return self

    def finish(self, status="FINISHED"):
        pass


class Tracker:
    """The connection to one tracking store and experiment."""

    def __init__(self, cfg):
        from mlflow import MlflowClient

        self.uri = resolve_uri(cfg)
        check_reachable(self.uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(cfg.experiment)
        except TrackingError:
            raise
        except Exception as e:  # a corrupt sqlite file, a wrong database: one line, not SQLAlchemy's traceback
            raise _store_error(self.uri, e) from None
        if exp is not None and _sqlite_path(self.uri) == Path(artifacts.default_tracking_uri(cfg)[len("sqlite:///"):]):
            follow_run_root(self.uri, exp, artifacts.default_artifact_root(cfg))
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):
                root = artifacts.default_artifact_root(cfg)
                root.mkdir(parents=True, exist_ok=True)
                location = root.as_uri()
            try:
                self.experiment_id = self.client.create_experiment(cfg.experiment, artifact_location=location)
            except Exception:  # created meanwhile by another process
                self.experiment_id = self.client.get_experiment_by_name(cfg.experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id
        if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            # MLflow 3's UI opens an experiment without this tag on its GenAI page (traces, prompts)
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def parent(self, name: str, tags: dict | None = None) -> RunLogger:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "host": socket.gethostname(), "pid": str(os.getpid()), "git_commit": git_commit() or "none",
            **(tags or {})})
        return RunLogger(self.client, run.info.run_id, self.experiment_id)

    def close_orphans(self) -> list[str]:
        """Mark KILLED the RUNNING `pipeline run` runs of this experiment whose process is gone.

        A hard kill (SIGKILL, OOM, a lost node) never reaches ``finish``, so the parent run and its
        stage/variant runs would show RUNNING forever. Only runs started on this host are judged
        (their ``pid`` tag must name no live process); a stage run that is resumed later is set
        RUNNING again by :meth:`RunLogger.child`. Returns the ids closed.
        """
        host, closed = socket.gethostname(), []
        running = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                          max_results=1000)
        parents = {r.info.run_id for r in running if "mlflow.parentRunId" not in r.data.tags
                   and PARENT_TAG not in r.data.tags
                   and r.data.tags.get("host") == host and _pid_gone(r.data.tags.get("pid"))}
        children = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") or r.data.tags.get(PARENT_TAG)
                    for r in running}
        for run_id in children:
            top = run_id
            while children.get(top):  # walk up to the `pipeline run` run
                top = children[top]
            if top in parents:
                self.client.set_terminated(run_id, status="KILLED")
                closed.append(run_id)
        return closed

    def attach(self, run_id: str) -> RunLogger:
        return RunLogger(self.client, run_id, self.experiment_id)

    def ui_hint(self) -> str:
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if self.uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {self.uri}, then open http://127.0.0.1:5000/{page}"
        return f"open {redact(self.uri).rstrip('/')}/{page}"


def follow_run_root(uri: str, exp, artifact_root: Path) -> bool:
    """Re-point the artifact locations of a default store whose run root was copied or moved.

    The default store (``<run_root>/mlflow.db``) records absolute artifact paths
    (``<run_root>/mlartifacts/...``). After ``cp -r runs runs2`` a run in ``runs2`` would
    write its artifacts into ``runs/`` (or re-create a moved root). When the experiment's
    location is an ``mlartifacts`` folder other than this run root's, both the experiment's
    and its runs' locations are rewritten to this run root (the copy holds the artifacts).
    Returns True when it re-pointed.
    """
    import sqlite3
    from urllib.parse import unquote, urlparse

    loc = exp.artifact_location or ""
    if not loc.startswith("file:"):
        return False
    old = Path(unquote(urlparse(loc).path))
    if old.name != "mlartifacts" or old == artifact_root:
        return False
    new_uri, old_uri = artifact_root.as_uri(), old.as_uri()
    db = sqlite3.connect(str(_sqlite_path(uri)))
    try:
        with db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                       (new_uri, int(exp.experiment_id)))
            db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                       "WHERE experiment_id = ? AND artifact_uri LIKE ? || '%'",
                       (new_uri, len(old_uri) + 1, int(exp.experiment_id), old_uri))
    finally:
        db.close()
    artifact_root.mkdir(parents=True, exist_ok=True)
    print(f"MLflow: this run root was copied or moved from {old.parent}; artifact locations now point "
          f"into {artifact_root}", flush=True)
    return True


def log_image(logger, array, path, artifact_dir: str | None = None):
    """Write an HWC uint8 array as a PNG at ``path`` and log it under ``artifact_dir``."""
    from toolbox.images import save_png

    save_png(array, path)
    logger.artifact(path, artifact_dir)
    return path


def read_runs(cfg, experiment: str | None = None):
    """All runs of an experiment as plain dicts (for `pipeline compare`)."""
    from mlflow import MlflowClient

    uri = resolve_uri(cfg)
    check_reachable(uri, create=False)
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment or cfg.experiment)
        if exp is None:
            raise TrackingError(f"no MLflow experiment named {experiment or cfg.experiment!r} at {redact(uri)}")
        runs = client.search_runs([exp.experiment_id], max_results=5000, order_by=["attributes.start_time ASC"])
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _store_error(uri, e) from None
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "start": r.info.start_time, "end": r.info.end_time, "params": dict(r.data.params),
             "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)} for r in runs]
