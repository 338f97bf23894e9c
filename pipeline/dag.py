"""Ordering, fingerprints, skip-if-done, state: the DAG runner over the registry it is handed.

A stage is up to date when the fingerprint of (the config keys it reads, what the stages
it needs produced, the package version) equals the one recorded in
``<stage dir>/stage.json`` when it last finished. "What a stage produced" is the digest
of its outputs when the stage declares one (``Stage.digest``: a rerun that writes the
same files leaves its dependents up to date), else its fingerprint and finish time. The
stages themselves are known only through a :class:`pipeline.registry.Registry`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import traceback
from datetime import datetime

from pipeline import artifacts
from toolbox import LockBusy, file_lock, lock_held
from pipeline.outcomes import GridIncomplete, StageStopped  # noqa: F401 -- dag.StageStopped: the runner's name
from pipeline.registry import OMIT, section_value

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3


class RunLockHeld(RuntimeError):
    """Another `pipeline run` works on this experiment."""


def lock_path(cfg):
    return artifacts.experiment_dir(cfg) / ".pipeline-run.lock"


@contextlib.contextmanager
def run_lock(cfg, say=print, *, shared: bool = False):
    """Hold the experiment's run lock: one `pipeline run` trains into an experiment's folders at a time.

    An advisory ``flock`` on ``<run_root>/<experiment>/.pipeline-run.lock`` (toolbox.file_lock);
    the kernel drops it when the holder dies (even by SIGKILL), so a stale file never blocks. The
    file names the holder (pid, host, since) for the message a second run gets. On a file system
    without locks (some Lustre/NFS mounts) the run goes on unlocked, after one line saying so.
    ``shared``: the tasks of a job array, each running its own points of a grid stage
    (``--only``): any number of them at once, no whole run beside them.
    """
    path = lock_path(cfg)

    def unsupported(e):
        say(f"note: {path.parent} has no file locks ({e.strerror or e}); running without the run lock: "
            f"do not start two `pipeline run` of experiment {cfg.experiment!r} at once")

    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "since": datetime.now().isoformat(timespec="seconds")})
    held = False
    try:
        with file_lock(path, wait=False, grace=2.0 if shared else 0.0, on_unsupported=unsupported, holder=me,
                       shared=shared):
            held = True
            yield
    except LockBusy as e:
        if held:  # raised by the work inside, not by taking this lock
            raise
        holder = e.holder_record()
        raise RunLockHeld(f"another `pipeline run` is working on experiment {cfg.experiment!r} "
                          f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                          f"{holder.get('since', '?')}; lock {path}); wait for it, or stop it first") from None


def run_in_progress(cfg, *, whole_only: bool = False) -> bool:
    """True while some `pipeline run` holds the experiment's run lock (False where the file
    system has no locks: nothing can tell there); ``whole_only``: a whole run, not the point runs
    of a grid stage (array tasks, which hold it shared)."""
    return bool(lock_held(lock_path(cfg), exclusive_only=whole_only))


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r} failed: {message}")
        self.stage = stage


def fingerprint(registry, cfg, name: str) -> str:
    st = registry[name]
    deps = {}
    for dep in registry.needs_of(name, cfg):
        state = read_state(cfg, dep)
        deps[dep] = state.get("digest") or [state.get("fingerprint"), state.get("finished")]
    config = {s: v for s in st.reads_for(cfg) if (v := section_value(cfg, s)) is not OMIT}
    blob = {"stage": name, "config": config, "inputs": deps, "version": registry.version}
    files = st.inputs(cfg) if st.inputs is not None else {}
    if files:  # only when there are any: the fingerprints of stages without such inputs stay as they were
        blob["files"] = files
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_state(cfg, name: str) -> dict:
    return artifacts.read_json(artifacts.StagePaths(cfg, name).state_file, {}) or {}


@contextlib.contextmanager
def state_lock(cfg, name: str):
    """Serialise read-modify-writes of a stage's state (the tasks of a job array share one stage).
    Re-entrant in one thread; without file locks, unlocked."""
    depth = _STATE_LOCKS.get(name, 0)
    if depth:
        _STATE_LOCKS[name] = depth + 1
        try:
            yield
        finally:
            _STATE_LOCKS[name] -= 1
        return
    path = artifacts.StagePaths(cfg, name).ensure().stage_dir / ".state.lock"
    with file_lock(path, timeout=120, name="stage state lock", on_unsupported=lambda e: None):
        _STATE_LOCKS[name] = 1
        try:
            yield
        finally:
            _STATE_LOCKS.pop(name, None)


_STATE_LOCKS: dict[str, int] = {}


def write_state(cfg, name: str, **fields) -> dict:
    with state_lock(cfg, name):
        paths = artifacts.StagePaths(cfg, name).ensure()
        state = {**read_state(cfg, name), **fields}
        artifacts.write_json(paths.state_file, state)
    return state


def status(registry, cfg, name: str) -> str:
    """done | stale | never run | failed | stopped | running | interrupted (running, but its process is
    gone) | partial (a grid stage with some points done)."""
    state = read_state(cfg, name)
    if not state:
        return "never run"
    if state.get("status") in ("running", "partial") and registry[name].points is not None:
        from pipeline import grid

        points = grid.statuses(registry, cfg, name, fingerprint(registry, cfg, name)).values()
        return "running" if "running" in points else "partial" if "done" in points else (
            "interrupted" if state.get("status") == "running" else "partial")
    if state.get("status") == "running" and not run_in_progress(cfg):
        return "interrupted"
    if state.get("status") == "done":
        fresh = state.get("fingerprint") == fingerprint(registry, cfg, name)
        return "done" if fresh and all(status(registry, cfg, d) == "done" for d in registry.needs_of(name, cfg)) else "stale"
    return state.get("status", "never run")


def fmt_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def run(registry, cfg, targets, *, force=False, execute, say=print, alone=False) -> int:
    """Run the plan for ``targets``. ``execute(name, fingerprint, previous_state) -> result`` runs one stage.

    ``alone``: run the targets only, not what they need (the points of a grid stage, ``--only``: the
    caller checked that its needs are done). A grid stage some of whose points are not done yet
    stays ``partial`` (its dependents do not run).
    Returns an exit code: 0 all done, 1 a stage failed (dependents not run), 3 stopped by a signal.
    """
    order = list(targets) if alone else registry.plan(targets, cfg)
    everything = not targets or list(targets) == ["all"]
    forced = set() if not force else set(order) if everything else set(targets)
    for name in order:
        fp = fingerprint(registry, cfg, name)
        state = read_state(cfg, name)
        if name not in forced and state.get("status") == "done" and state.get("fingerprint") == fp:
            say(f"[{name}] up to date (fingerprint {fp}, finished {state.get('finished_at', '?')}); skipped")
            continue
        reason = ("forced" if name in forced else "never run" if not state else
                  f"previous run {state.get('status')}" if state.get("status") != "done" else "inputs or config changed")
        say(f"[{name}] running ({reason})")
        start = time.time()
        with state_lock(cfg, name):
            now = read_state(cfg, name)  # under the lock: array tasks that start together agree
            continuing = now.get("fingerprint") == fp and now.get("status") in ("running", "stopped", "failed", "partial")
            fresh = {} if continuing else {"mlflow_run_id": None}  # a new attempt gets a new MLflow stage run
            write_state(cfg, name, status="running", fingerprint=fp, started=start,
                        started_at=datetime.now().isoformat(timespec="seconds"), error=None, **fresh)
        rest = order[order.index(name) + 1:]
        try:
            result = execute(name, fp, state)
        except StageStopped as e:
            write_state(cfg, name, status="stopped", duration=time.time() - start, error=str(e))
            say(f"[{name}] stopped: {e}")
            return EXIT_STOPPED
        except GridIncomplete as e:
            with state_lock(cfg, name):  # a task that found the grid complete may have marked it done
                now = read_state(cfg, name)
                if not (now.get("status") == "done" and now.get("fingerprint") == fp):
                    write_state(cfg, name, status="partial", fingerprint=fp, error=None,
                                points_done=e.done, points_missing=e.missing)
            say(f"[{name}] partial: {e}")
            if rest:
                say(f"  not run: {', '.join(rest)} (they wait for every point of {name})")
            return EXIT_OK if alone else EXIT_FAILED
        except KeyboardInterrupt:
            write_state(cfg, name, status="failed", duration=time.time() - start, error="interrupted (Ctrl-C)")
            say(f"[{name}] interrupted; run again to continue from this stage")
            return EXIT_FAILED
        except Exception as e:  # noqa: BLE001 -- any stage error stops the plan, named
            msg = f"{type(e).__name__}: {e}"
            write_state(cfg, name, status="failed", duration=time.time() - start, error=msg,
                        traceback=traceback.format_exc())
            say(f"[{name}] FAILED: {msg}")
            if rest:
                say(f"  not run: {', '.join(rest)} (they depend on {name}); "
                    f"fix it and run again: finished stages are kept")
            return EXIT_FAILED
        now = time.time()
        digest = registry[name].digest(cfg) if registry[name].digest is not None else None
        write_state(cfg, name, status="done", fingerprint=fp, finished=now, digest=digest,
                    finished_at=datetime.now().isoformat(timespec="seconds"), duration=now - start,
                    result=result, points_done=None, points_missing=None)
        say(f"[{name}] done in {fmt_duration(now - start)}")
    return EXIT_OK
