"""How a stage runs: in this process, or through `accelerate launch` (locally or under SLURM).

The only reader of process-layout environment variables (its SLURM half is
``pipeline/slurm/job.py``). Signals: SIGUSR1 / SIGTERM ask the running stage to stop; the
training loop finishes its step, writes a checkpoint, and the stage reports "stopped".
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import yaml

from pipeline import dag, grid, tracking
from pipeline.artifacts import StagePaths, read_json, write_json
from pipeline.config import to_dict
from pipeline.context import StageContext
from toolbox import free_port

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Turns SIGUSR1/SIGTERM into a stop file the training ranks poll (and a local flag).

    ``stop_file``: the file to touch; ``more``: a callable giving further files to touch at the signal
    (the stop files of the grid points running in processes of their own)."""

    def __init__(self, stop_file, what: str = "finishing the current step, then checkpointing", more=None):
        self.stop_file = stop_file
        self.what = what
        self.more = more or (lambda: ())
        self.requested = False
        self._old = {}

    def __enter__(self):
        self.stop_file.unlink(missing_ok=True)
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            print(f"\n[pipeline] received {signal.Signals(signum).name}: {self.what}", file=sys.stderr, flush=True)
        self.requested = True
        for f in (self.stop_file, *self.more()):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self.stop_file.unlink(missing_ok=True)
        return False


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


_PRCTL = _prctl()  # resolved here, in the parent: a forked child (preexec_fn) must not dlopen


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: the kernel sends ``sig`` to this process when its parent dies (PR_SET_PDEATHSIG).

    The launcher runs its ranks in sessions of their own (torch elastic), so killing the runner's
    process group would otherwise leave them training, and writing checkpoints, behind a rerun.
    Set in the launcher (``preexec_fn``) and in each rank (``pipeline.worker``): runner dies ->
    launcher dies -> ranks die. Elsewhere a no-op. (The signal follows the parent *thread* that
    started the child: the runner starts launchers from its main thread.)"""
    if _PRCTL is not None:
        _PRCTL(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def in_slurm() -> bool:
    from pipeline import slurm

    return slurm.in_slurm()


def use_cpu(cfg) -> bool:
    if cfg.launch.cpu is not None:
        return cfg.launch.cpu
    import torch

    return not torch.cuda.is_available()


def make_accelerator(cfg):
    from accelerate import Accelerator

    cpu = use_cpu(cfg)
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else cfg.launch.mixed_precision)


def needs_launcher(cfg, stage) -> bool:
    if not stage.distributed:
        return False
    if cfg.launch.num_processes > 1:
        return True
    if in_slurm():
        from pipeline import slurm

        lay = slurm.slurm_layout()
        return lay.nodes > 1 or lay.procs_per_node > 1
    return False


@contextlib.contextmanager
def one_process_group(cfg, stage):
    """The rendezvous environment of a one-process group, for a training stage run in this process with a
    backend that needs a torch.distributed group (DeepSpeed); elsewhere nothing. Variables already set
    (a launcher's) are kept; the ones set here are removed afterwards. The launcher is the one place that
    writes RANK / WORLD_SIZE / MASTER_*: the training backends only use the group."""
    if not (stage.distributed and cfg.launch.backend == "deepspeed"):
        yield
        return
    wanted = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(cfg.launch.main_process_port or free_port())}
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def stage_logger(tracker, parent, cfg, name, fp, previous):
    """The stage's MLflow run: new, or the one an earlier attempt with the same fingerprint used (a
    stopped or failed one, or -- a grid stage -- the run its other points log into). Decided under the
    stage's state lock: the tasks of a job array that start together share one run."""
    if tracker is None:
        return tracking.NullLogger()
    with dag.state_lock(cfg, name):
        previous = dag.read_state(cfg, name) or previous
        reuse = (previous.get("mlflow_run_id") if previous.get("fingerprint") == fp
                 and previous.get("status") in ("running", "stopped", "failed", "partial") else None)
        logger = parent.child(name, tags={"stage": name, "fingerprint": fp}, run_id=reuse)
        dag.write_state(cfg, name, mlflow_run_id=logger.run_id)
    if reuse:
        print(f"[{name}] continuing MLflow run {reuse}", flush=True)
    return logger


def execute(registry, cfg, name: str, fp: str, previous: dict, *, tracker, parent, only=None, force=False):
    """Run one stage (the DAG's ``execute`` callback); a grid stage point by point (pipeline/grid.py),
    ``only``: the points to run (None: all that are not done)."""
    stage = registry[name]
    paths = StagePaths(cfg, name).ensure()
    logger = stage_logger(tracker, parent, cfg, name, fp, previous)
    status = "FAILED"
    running_points: set[str] = set()
    try:
        what = ("finishing the current step, then checkpointing" if stage.distributed
                else f"stopping {name} after the current item")
        more = lambda: [paths.point_file(p, "stop") for p in running_points]  # noqa: E731
        with StopRequest(paths.stop_file, what, more) as stop:
            if stage.points is None:
                result, world_size = _run_unit(registry, cfg, name, fp, logger, stop)
            else:
                result, world_size = _run_grid(registry, cfg, name, fp, logger, stop, only, force, running_points)
        status = "FINISHED"
        write_json(paths.result_file, {"status": "done", "result": result, "world_size": world_size})
        return result
    except dag.StageStopped:
        status = "KILLED"
        raise
    except dag.GridIncomplete:
        status = None  # the stage's run stays open for the grid's other points
        raise
    finally:
        if status is not None:
            logger.finish(status)  # KILLED when stopped: the requeued job reopens this same run


def _run_unit(registry, cfg, name, fp, logger, stop, point=None):
    """Run the stage (``point``: one point of a grid stage) in this process or through the launcher;
    returns (result, world size)."""
    stage = registry[name]
    if needs_launcher(cfg, stage):
        proc, collect = _start_launched(registry, cfg, name, fp, logger, point=point)
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
        return collect(rc)
    acc = make_accelerator(cfg) if stage.distributed else None  # sees no rendezvous: one process
    ctx = StageContext(cfg, name, logger, accelerator=acc, stop_flag=lambda: stop.requested,
                       fingerprint=fp, paths=registry.paths, point=point)
    with one_process_group(cfg, stage):
        result = stage.run(ctx)
    return result, (acc.num_processes if acc is not None else 1)


def _run_grid(registry, cfg, name, fp, logger, stop, only, force, running_points):
    from pipeline import slurm

    sizes = []  # the world size of each point run here

    def stop_if_asked(p):  # a stop that came while p started: its ranks read the stop file
        if stop.requested:
            StagePaths(cfg, name).point_file(p, "stop").touch()

    def run_point(p):
        running_points.add(p)
        stop_if_asked(p)
        try:
            result, world = _run_unit(registry, cfg, name, fp, logger, stop, point=p)
            sizes.append(world)
            return result
        finally:
            running_points.discard(p)

    def start_point(p, devices):
        running_points.add(p)
        stop_if_asked(p)
        proc, collect = _start_launched(registry, cfg, name, fp, logger, point=p, devices=devices)

        def done(rc):
            running_points.discard(p)
            result, world = collect(rc)
            sizes.append(world)
            return result
        return proc, done

    stage = registry[name]
    todo = only or stage.points(cfg)
    multi_node = stage.distributed and in_slurm() and slurm.slurm_layout().nodes > 1
    slots = grid.device_slots(cfg, len(todo), cpu=use_cpu(cfg), multi_node=multi_node,
                              per_run=cfg.launch.num_processes if stage.distributed else 1)
    results = grid.execute(registry, cfg, name, fp, only=only, force=force, run_point=run_point,
                           start_point=start_point, slots=slots, should_stop=lambda: stop.requested)
    world = max((w for w in sizes if w), default=None)
    if stage.finish is None:
        return results, world
    ctx = StageContext(cfg, name, logger, fingerprint=fp, paths=registry.paths)
    return stage.finish(ctx, results), world


def _start_launched(registry, cfg, name, fp, logger, *, point=None, devices=None):
    """Start the stage's ranks (``point``: of one grid point) in processes of their own: through
    ``accelerate launch`` (or srun under SLURM) for several processes, or one worker process on
    ``devices`` (a CUDA_VISIBLE_DEVICES value: a parallel grid point). Returns (Popen,
    ``collect(returncode) -> (result, world size)``)."""
    paths = StagePaths(cfg, name)
    config_file, result_file = paths.point_file(point, "config.yaml"), paths.point_file(point, "result.json")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    result_file.unlink(missing_ok=True)
    worker = ["-m", "pipeline.worker", "--registry", registry.name, "--stage", name,
              "--config", str(config_file), "--fingerprint", fp]
    if point is not None:
        worker += ["--point", point]
    if logger.run_id:
        worker += ["--run-id", logger.run_id]
    cpu = use_cpu(cfg)
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    n = cfg.launch.num_processes
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
        if n > 1:  # ranks share the cores: spinning OpenMP waiters starve each other
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if n == 1 and devices is not None:  # a parallel grid point on one GPU: one plain process
        cmd = [sys.executable, *worker]
    elif in_slurm() and devices is None:  # a parallel point stays on this node, on its own GPUs and port
        from pipeline import slurm

        cmd = slurm.srun_accelerate_command(worker, cpu=cpu, mixed_precision=cfg.launch.mixed_precision,
                                            procs_per_node=n if n > 1 else None)
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if cfg.launch.accelerate_config:
            cmd += ["--config_file", cfg.launch.accelerate_config]
        if cpu:  # oversubscribed OpenMP threads make CPU DDP many times slower: share the cores
            threads = max(1, (os.cpu_count() or 1) // n)
            cmd += ["--num_cpu_threads_per_process", str(threads)]
        port = cfg.launch.main_process_port if devices is None and cfg.launch.main_process_port else free_port()
        cmd += ["--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
                "--main_process_port", str(port), "--mixed_precision", "no" if cpu else cfg.launch.mixed_precision]
        cmd += worker
    label = f"{name}/{point}" if point else name
    print(f"[{label}] launching: {' '.join(cmd)}" + (f" (CUDA_VISIBLE_DEVICES={devices})" if devices else ""),
          flush=True)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)

    def collect(rc):
        out = read_json(result_file, {}) or {}
        if out.get("status") == "stopped":
            raise dag.StageStopped(out.get("message", "stopped on request; checkpoint written"))
        if rc != 0 or out.get("status") != "done":
            raise RuntimeError(f"launched workers exited with code {rc}"
                               + (f": {out['error']}" if out.get("error") else " (see the output above)"))
        return out.get("result"), out.get("world_size")
    return proc, collect
