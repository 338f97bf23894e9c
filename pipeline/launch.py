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

from pipeline import dag, tracking
from pipeline.artifacts import StagePaths, read_json, write_json
from pipeline.config import to_dict
from pipeline.context import StageContext
from toolbox import free_port

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Turns SIGUSR1/SIGTERM into a stop file the training ranks poll (and a local flag)."""

    def __init__(self, stop_file, what: str = "finishing the current step, then checkpointing"):
        self.stop_file = stop_file
        self.what = what
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
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()

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
    """The stage's MLflow run: new, or the one a stopped/failed attempt with the same fingerprint used."""
    if tracker is None:
        return tracking.NullLogger()
    reuse = (previous.get("mlflow_run_id") if previous.get("fingerprint") == fp
             and previous.get("status") in ("running", "stopped", "failed") else None)
    logger = parent.child(name, tags={"stage": name, "fingerprint": fp}, run_id=reuse)
    dag.write_state(cfg, name, mlflow_run_id=logger.run_id)
    if reuse:
        print(f"[{name}] continuing MLflow run {reuse}", flush=True)
    return logger


def execute(registry, cfg, name: str, fp: str, previous: dict, *, tracker, parent):
    """Run one stage (the DAG's ``execute`` callback)."""
    stage = registry[name]
    paths = StagePaths(cfg, name).ensure()
    logger = stage_logger(tracker, parent, cfg, name, fp, previous)
    status = "FAILED"
    try:
        what = ("finishing the current step, then checkpointing" if stage.distributed
                else f"stopping {name} after the current item")
        with StopRequest(paths.stop_file, what) as stop:
            if needs_launcher(cfg, stage):
                result, world_size = _run_launched(registry, cfg, name, fp, logger, paths)
            else:
                acc = make_accelerator(cfg) if stage.distributed else None  # sees no rendezvous: one process
                ctx = StageContext(cfg, name, logger, accelerator=acc, stop_flag=lambda: stop.requested,
                                   fingerprint=fp, paths=registry.paths)
                with one_process_group(cfg, stage):
                    result = stage.run(ctx)
                world_size = acc.num_processes if acc is not None else 1
        status = "FINISHED"
        write_json(paths.result_file, {"status": "done", "result": result, "world_size": world_size})
        return result
    except dag.StageStopped:
        status = "KILLED"
        raise
    finally:
        logger.finish(status)  # KILLED when stopped: the requeued job reopens this same run


def _run_launched(registry, cfg, name, fp, logger, paths):
    paths.resolved_config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    paths.result_file.unlink(missing_ok=True)
    worker = ["-m", "pipeline.worker", "--registry", registry.name, "--stage", name,
              "--config", str(paths.resolved_config), "--fingerprint", fp]
    if logger.run_id:
        worker += ["--run-id", logger.run_id]
    cpu = use_cpu(cfg)
    env = dict(os.environ)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "1"
        if cfg.launch.num_processes > 1:  # ranks share the cores: spinning OpenMP waiters starve each other
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if in_slurm():
        from pipeline import slurm

        cmd = slurm.srun_accelerate_command(worker, cpu=cpu, mixed_precision=cfg.launch.mixed_precision,
                                            procs_per_node=cfg.launch.num_processes if cfg.launch.num_processes > 1 else None)
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if cfg.launch.accelerate_config:
            cmd += ["--config_file", cfg.launch.accelerate_config]
        if cpu:  # oversubscribed OpenMP threads make CPU DDP many times slower: share the cores
            threads = max(1, (os.cpu_count() or 1) // cfg.launch.num_processes)
            cmd += ["--num_cpu_threads_per_process", str(threads)]
        cmd += ["--multi_gpu", "--num_processes", str(cfg.launch.num_processes), "--num_machines", "1",
                "--main_process_port", str(cfg.launch.main_process_port or free_port()),
                "--mixed_precision", "no" if cpu else cfg.launch.mixed_precision]
        cmd += worker
    print(f"[{name}] launching: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
    out = read_json(paths.result_file, {}) or {}
    if out.get("status") == "stopped":
        raise dag.StageStopped(out.get("message", "stopped on request; checkpoint written"))
    if rc != 0 or out.get("status") != "done":
        raise RuntimeError(f"launched workers exited with code {rc}"
                           + (f": {out['error']}" if out.get("error") else " (see the output above)"))
    return out.get("result"), out.get("world_size")
