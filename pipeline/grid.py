"""Grid stages: a stage made of independent points, each run, recorded and resumed on its own.

A stage that declares ``points`` (finetune: one point per (variant, seed) run) is run point by
point. The runner keeps one record per point, ``<stage>/points/<point>/point.json`` (status, the
stage fingerprint it ran under, result, times, host, SLURM task), and holds ``points/<point>/lock``
while the point runs, so that

- a rerun, a requeued job or an array task does only the points that are not done under the
  current fingerprint (a failed point does not hold up the others: they run, and the stage
  fails at the end naming it);
- the tasks of a SLURM job array (``pipeline run finetune --only NAME`` / ``--point-index I``)
  run side by side: each takes the experiment's run lock *shared* and its point's lock; the
  stage is marked done by whichever task finds every point done (more than one may, each running
  the stage's ``finish``: it must be idempotent), and a task that found some point not done writes
  ``partial`` only under the stage's state lock and never over a ``done``;
- locally, ``launch.parallel_runs`` runs several points at once, each in its own process on its
  own GPUs (:func:`device_slots`, :func:`run_parallel`).

The runner knows a point only by its name: what a point does is the stage's ``run(ctx)`` with
``ctx.point`` set.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import traceback
from datetime import datetime
from typing import Callable, Optional

from pipeline import artifacts
from pipeline.config import ConfigError
from pipeline.outcomes import GridIncomplete, StageStopped
from toolbox import LockBusy, file_lock, lock_held


# --------------------------------------------------------------------------- records

def record(cfg, stage: str, point: str) -> dict:
    rec = artifacts.read_json(artifacts.StagePaths(cfg, stage).point_file(point, "point.json"), {})
    return rec if isinstance(rec, dict) else {}


def write_record(cfg, stage: str, point: str, **fields) -> dict:
    path = artifacts.StagePaths(cfg, stage).point_file(point, "point.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {**record(cfg, stage, point), **fields}
    artifacts.write_json(path, rec)
    return rec


def point_status(cfg, stage: str, point: str, fingerprint: str) -> str:
    """done | stale (done under another fingerprint) | running | interrupted | failed | stopped | never run."""
    if lock_held(artifacts.StagePaths(cfg, stage).point_file(point, "lock")):
        return "running"
    rec = record(cfg, stage, point)
    if not rec:
        return "never run"
    if rec.get("status") == "done":
        return "done" if rec.get("fingerprint") == fingerprint else "stale"
    if rec.get("status") == "running":
        return "interrupted"
    return rec.get("status", "never run")


def statuses(registry, cfg, name: str, fingerprint: str) -> dict[str, str]:
    return {p: point_status(cfg, name, p, fingerprint) for p in registry[name].points(cfg)}


def select(registry, cfg, name: str, only: Optional[list[str]] = None,
           index: Optional[list[int]] = None) -> Optional[list[str]]:
    """The points ``--only NAME,...`` / ``--point-index I`` name (None: all), checked against the grid."""
    if only is None and index is None:
        return None
    stage = registry[name]
    if stage.points is None:
        raise ConfigError(f"--only/--point-index: stage {name!r} is not a grid (it has no points to pick from)")
    points = stage.points(cfg)
    chosen = []
    for i in index or []:
        if not 0 <= i < len(points):
            raise ConfigError(f"--point-index: {i} is outside the {len(points)} points of {name} (0-{len(points) - 1})")
        chosen.append(points[i])
    for p in only or []:
        if p not in points:
            import difflib

            close = difflib.get_close_matches(p, points, n=1)
            raise ConfigError(f"--only: {name} has no point {p!r}" + (f"; did you mean {close[0]!r}?" if close else
                              f"; its points: {', '.join(points)}"))
        chosen.append(p)
    return list(dict.fromkeys(chosen))


# --------------------------------------------------------------------------- devices

def visible_gpus() -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES's entries, else 0..n-1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_slots(cfg, n_points: int, *, cpu: bool, multi_node: bool = False, gpus: Optional[list[str]] = None,
                 per_run: Optional[int] = None, say=print) -> Optional[list[str]]:
    """How ``launch.parallel_runs`` splits this machine for ``n_points`` runs of ``per_run`` GPUs each
    (default launch.num_processes): one CUDA_VISIBLE_DEVICES value per run slot, or None for one run at
    a time (said when the config asked for more)."""
    want = cfg.launch.parallel_runs
    if want == 1 or n_points < 2:
        return None
    if cpu:
        say(f"note: launch.parallel_runs: {want}, but the runs train on CPU, where they would share the same "
            f"cores: one at a time")
        return None
    if multi_node:
        say(f"note: launch.parallel_runs: {want}, but each run spans nodes: one at a time (on SLURM, an array "
            f"runs one task per run: python -m pipeline submit)")
        return None
    gpus = visible_gpus() if gpus is None else gpus
    per = per_run or cfg.launch.num_processes
    fit = len(gpus) // per
    k = min(fit if want == "auto" else min(want, fit), n_points)
    if k < 2:
        if want != "auto":
            say(f"note: launch.parallel_runs: {want}, but {len(gpus)} GPU(s) at {per} per run hold one run: "
                f"one at a time")
        return None
    return [",".join(gpus[i * per:(i + 1) * per]) for i in range(k)]


# --------------------------------------------------------------------------- running

def _me() -> dict:
    rec = {"pid": os.getpid(), "host": socket.gethostname()}
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job:
        rec["slurm"] = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"
    elif os.environ.get("SLURM_JOB_ID"):
        rec["slurm"] = os.environ["SLURM_JOB_ID"]
    return rec


@contextlib.contextmanager
def _point_lock(cfg, stage: str, point: str):
    """Hold the point's lock (raises LockBusy when another process runs it)."""
    path = artifacts.StagePaths(cfg, stage).point_file(point, "lock")
    with file_lock(path, wait=False, grace=2.0, holder=json.dumps(_me())):
        yield


def _begin(cfg, stage, point, fingerprint):
    artifacts.StagePaths(cfg, stage).point_file(point, "stop").unlink(missing_ok=True)  # an old request
    write_record(cfg, stage, point, status="running", fingerprint=fingerprint, error=None, result=None,
                 started=time.time(), started_at=datetime.now().isoformat(timespec="seconds"), **_me())


def _end(cfg, stage, point, status, *, result=None, error=None):
    rec = record(cfg, stage, point)
    fields = {"status": status, "error": error, "duration": time.time() - rec.get("started", time.time())}
    if status == "done":
        fields.update(result=result, finished=time.time(), finished_at=datetime.now().isoformat(timespec="seconds"))
    write_record(cfg, stage, point, **fields)


def run_sequential(cfg, stage: str, fingerprint: str, points: list[str], run_point: Callable[[str], object], *,
                   should_stop: Callable[[], bool], say=print) -> dict[str, str]:
    """Run ``points`` one after another in this process (``run_point(p)`` -> result). A stop ends the
    grid (StageStopped, raised on); a failed point is recorded and the next one runs. Returns
    {point: error} of the failed ones."""
    failed = {}
    for p in points:
        if should_stop():
            raise StageStopped(f"stopped before {p}")
        try:
            with _point_lock(cfg, stage, p):
                _begin(cfg, stage, p, fingerprint)
                try:
                    result = run_point(p)
                except StageStopped as e:
                    _end(cfg, stage, p, "stopped", error=str(e))
                    raise
                except KeyboardInterrupt:
                    _end(cfg, stage, p, "failed", error="interrupted (Ctrl-C)")
                    raise
                except Exception as e:  # noqa: BLE001 -- one failed point does not stop the others
                    traceback.print_exc()
                    failed[p] = f"{type(e).__name__}: {e}"
                    _end(cfg, stage, p, "failed", error=failed[p])
                    say(f"[{stage}/{p}] FAILED: {failed[p]}")
                    continue
                _end(cfg, stage, p, "done", result=result)
        except LockBusy as e:
            say(f"[{stage}/{p}] is running in another process ({_holder(e)}); left to it")
    return failed


def _holder(e: LockBusy) -> str:
    h = e.holder_record()
    return f"pid {h.get('pid', '?')} on {h.get('host', '?')}" + (f", SLURM {h['slurm']}" if h.get("slurm") else "")


def run_parallel(cfg, stage: str, fingerprint: str, points: list[str], slots: list[str],
                 start: Callable[[str, str], tuple], *, should_stop: Callable[[], bool], say=print,
                 poll: float = 0.5) -> dict[str, str]:
    """Run ``points`` in ``len(slots)`` processes at a time, each on its slot's devices.

    ``start(point, devices) -> (proc, collect)``: a started ``subprocess.Popen`` and
    ``collect(returncode) -> result`` (raises StageStopped / an error as the point ended). No
    point starts after a stop request; the running ones are left to checkpoint and finish.
    Returns {point: error} of the failed ones; raises StageStopped when a point stopped.
    """
    queue, running, free = list(points), {}, list(range(len(slots)))
    failed, stopped = {}, []
    try:
        while queue or running:
            while queue and free and not should_stop():
                p = queue.pop(0)
                lock = contextlib.ExitStack()
                try:
                    lock.enter_context(_point_lock(cfg, stage, p))
                except LockBusy as e:
                    say(f"[{stage}/{p}] is running in another process ({_holder(e)}); left to it")
                    continue
                slot = free.pop(0)
                _begin(cfg, stage, p, fingerprint)
                say(f"[{stage}/{p}] started on GPU(s) {slots[slot]}")
                try:
                    proc, collect = start(p, slots[slot])
                except Exception as e:  # noqa: BLE001
                    failed[p] = f"{type(e).__name__}: {e}"
                    _end(cfg, stage, p, "failed", error=failed[p])
                    lock.close()
                    free.append(slot)
                    continue
                running[p] = (slot, proc, collect, lock)
            for p, (slot, proc, collect, lock) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                try:
                    result = collect(rc)
                except StageStopped as e:
                    stopped.append(p)
                    _end(cfg, stage, p, "stopped", error=str(e))
                except Exception as e:  # noqa: BLE001
                    failed[p] = f"{type(e).__name__}: {e}"
                    _end(cfg, stage, p, "failed", error=failed[p])
                    say(f"[{stage}/{p}] FAILED: {failed[p]}")
                else:
                    _end(cfg, stage, p, "done", result=result)
                    say(f"[{stage}/{p}] done")
                lock.close()
                del running[p]
                free.append(slot)
            if should_stop() and not running:
                break
            if running:
                time.sleep(poll)
    finally:
        for p, (_, proc, _, lock) in running.items():  # an error or Ctrl-C here: the children go too
            with contextlib.suppress(OSError):
                proc.terminate()
            _end(cfg, stage, p, "failed", error="the runner stopped before this point ended")
            lock.close()
    if stopped or (queue and should_stop()):
        raise StageStopped(f"stopped: {', '.join(stopped) or 'before ' + ', '.join(queue)}; "
                               f"the checkpoints are written")
    return failed


def execute(registry, cfg, name: str, fingerprint: str, *, only: Optional[list[str]], force: bool,
            run_point: Callable[[str], object], start_point: Callable[[str, str], tuple],
            slots: Optional[list[str]], should_stop: Callable[[], bool], say=print) -> dict:
    """Run the grid stage ``name``: the points asked (``only``, else all) that are not done under
    ``fingerprint`` (all of them when ``force``). Returns {point: result} once every point of the
    grid is done; raises GridIncomplete when some other point is not, RuntimeError naming the
    points that failed (the others are kept)."""
    points = registry[name].points(cfg)
    wanted = points if only is None else only
    todo, done = [], []
    for p in wanted:
        st = point_status(cfg, name, p, fingerprint)
        if st == "done" and not force:
            done.append(p)
        else:
            todo.append(p)
    if done:
        say(f"[{name}] up to date: {', '.join(done)}")
    if todo:
        say(f"[{name}] {len(todo)} of {len(points)} points to run: {', '.join(todo)}"
            + (f" ({len(slots)} at a time)" if slots and len(todo) > 1 else ""))
    if slots and len(todo) > 1:
        failed = run_parallel(cfg, name, fingerprint, todo, slots, start_point, should_stop=should_stop, say=say)
    else:
        failed = run_sequential(cfg, name, fingerprint, todo, run_point, should_stop=should_stop, say=say)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(points)} points failed: "
                           + "; ".join(f"{p}: {e}" for p, e in failed.items())
                           + ". The others are kept: run again to retry only these")
    state = statuses(registry, cfg, name, fingerprint)
    missing = [p for p, s in state.items() if s != "done"]
    if missing:
        raise GridIncomplete(name, [p for p in points if p not in missing], missing)
    return {p: record(cfg, name, p).get("result") for p in points}
