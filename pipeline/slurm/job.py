"""The in-job side of SLURM: the job's layout (nodes, processes, GPUs, the rendezvous), the per-node
``srun`` launcher command, and requeue on a stop signal.

The only module besides ``pipeline/launch.py`` that reads ``SLURM_*`` variables. Every function that
reads the environment takes an optional ``env`` mapping (default ``os.environ``), and every function
that runs a SLURM command takes ``run`` (default ``subprocess.run``), so all of it is tested without a
cluster.

Signals, for the launch layer: the batch script ``exec``s ``python -m pipeline run``, so
``#SBATCH --signal=B:USR1@T`` reaches that process. The per-node wrapper built by
:func:`srun_accelerate_command` starts ``accelerate launch`` with SIGUSR1 ignored (a SIGUSR1 that
SLURM sends to every process of the step must not kill the launcher) and forwards a SIGUSR1 it
receives to the launcher's children, the rank processes.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from pipeline.slurm.common import CMD_TIMEOUT, Runner, SlurmError, count_gpus
from pipeline.slurm.common import env_of as _env

PORT_BASE, PORT_SPAN = 20000, 20000  # rendezvous port = PORT_BASE + job_id % PORT_SPAN


# --------------------------------------------------------------------------- layout

def in_slurm(env: Mapping[str, str] | None = None) -> bool:
    """True inside a SLURM allocation (a batch job, salloc or srun)."""
    return bool(_env(env).get("SLURM_JOB_ID"))


def rendezvous_port(job_id: int) -> int:
    """The main-process port of a job: stable across requeues, different for concurrent jobs."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a SLURM hostlist like ``scontrol show hostnames`` does.

    ``"gpu[01-03,7],login"`` -> ``["gpu01", "gpu02", "gpu03", "gpu7", "login"]``; several
    bracket groups in one name multiply out (``"r[1-2]n[1-2]"`` -> r1n1 r1n2 r2n1 r2n2).
    """
    hosts: list[str] = []
    for item in _split_top(hostlist.strip()):
        if item:
            hosts.extend(_expand_one(item))
    return hosts


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {s!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"unbalanced '[' in hostlist {s!r}")
    parts.append("".join(cur))
    return parts


def _expand_one(item: str) -> list[str]:
    m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", item)
    if not m:
        return [item]
    prefix, ranges, rest = m.groups()
    out = []
    for r in ranges.split(","):
        if "-" in r:
            lo, hi = r.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {r!r} in hostlist item {item!r}")
            width = len(lo) if lo.startswith("0") else 0
            vals = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        elif r.isdigit():
            vals = [r]
        else:
            raise ValueError(f"bad range {r!r} in hostlist item {item!r}")
        for v in vals:
            out.extend(prefix + v + tail for tail in _expand_one(rest))
    return out


def gpus_on_node(env: Mapping[str, str] | None = None) -> int:
    """GPUs allotted on this node: SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE, then CUDA_VISIBLE_DEVICES."""
    env = _env(env)
    if env.get("SLURM_GPUS_ON_NODE", "").strip().isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    if env.get("SLURM_GPUS_PER_NODE", "").strip():
        return count_gpus(env["SLURM_GPUS_PER_NODE"])
    cvd = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cvd and cvd not in ("NoDevFiles", "-1"):
        return len([d for d in cvd.split(",") if d.strip()])
    return 0


@dataclass(frozen=True)
class SlurmLayout:
    """Where a job runs, as seen from its batch shell."""

    job_id: int
    nodes: int                    # SLURM_JOB_NUM_NODES
    node_list: tuple[str, ...]    # hostnames, in SLURM_NODEID order
    head: str                     # node_list[0]: the main process's host
    port: int                     # rendezvous_port(job_id)
    procs_per_node: int           # gpus, or 1 without GPUs
    gpus: int                     # GPUs per node (0: CPU only)
    cpus_per_task: int | None     # SLURM_CPUS_PER_TASK, None when not requested
    restart_count: int            # SLURM_RESTART_COUNT: 0 on the first run, +1 per requeue

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def _hostnames(nodelist: str, run: Runner) -> list[str]:
    try:
        return expand_hostlist(nodelist)
    except ValueError:  # a syntax we do not know: ask SLURM
        proc = run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                   timeout=CMD_TIMEOUT)
        if proc.returncode != 0:
            raise SlurmError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r}: {proc.stderr.strip()}")
        return proc.stdout.split()


def slurm_layout(env: Mapping[str, str] | None = None, *, run: Runner = subprocess.run) -> SlurmLayout:
    """The job's layout from SLURM_* variables (raises SlurmError outside a job)."""
    env = _env(env)
    if not in_slurm(env):
        raise SlurmError("not inside a SLURM job (SLURM_JOB_ID is not set)")
    job_id = int(env["SLURM_JOB_ID"])
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    hosts = tuple(_hostnames(nodelist, run)) if nodelist else ()
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or len(hosts) or 1)
    if not hosts:
        hosts = (env.get("SLURMD_NODENAME") or os.uname().nodename,)
    if len(hosts) != nodes:
        raise SlurmError(f"SLURM_JOB_NODELIST={nodelist!r} names {len(hosts)} hosts, "
                         f"but the job has {nodes} nodes")
    gpus = gpus_on_node(env)
    cpt = env.get("SLURM_CPUS_PER_TASK", "").strip()
    return SlurmLayout(
        job_id=job_id, nodes=nodes, node_list=hosts, head=hosts[0], port=rendezvous_port(job_id),
        procs_per_node=max(gpus, 1), gpus=gpus, cpus_per_task=int(cpt) if cpt.isdigit() else None,
        restart_count=int(env.get("SLURM_RESTART_COUNT") or 0))


# --------------------------------------------------------------------------- srun

ACCELERATE = (sys.executable, "-m", "accelerate.commands.launch")

# The per-node task: the launcher starts with SIGUSR1 ignored, so that a SIGUSR1 which
# SLURM delivers to every process of the step (srun forwards the signal to the step, and
# the step's process tracker signals all its processes) cannot kill it; its children, the
# ranks, install their own handler or inherit the ignore. A SIGUSR1 that only reaches this
# shell is passed on to the ranks. The shell waits for the launcher (SLURM without cgroups
# does not reap what a task leaves behind) and exits with its status.
_TASK_TEMPLATE = ("{exports}( trap '' USR1; exec {launch} ) & pid=$!; "
                  "trap 'pkill -USR1 -P \"$pid\" 2>/dev/null' USR1; "
                  "while :; do wait \"$pid\"; rc=$?; kill -0 \"$pid\" 2>/dev/null || break; done; "
                  "exit \"$rc\"")


def srun_accelerate_command(worker_argv: Sequence[str], *, procs_per_node: int | None = None,
                            cpu: bool = False, extra_env: Mapping[str, str] | None = None,
                            mixed_precision: str | None = None, accelerate_config: str | None = None,
                            accelerate_args: Sequence[str] = (), srun_args: Sequence[str] = (),
                            launcher: Sequence[str] | None = None, layout: SlurmLayout | None = None,
                            env: Mapping[str, str] | None = None) -> list[str]:
    """The command, run from the batch shell, that starts one ``accelerate launch`` per node.

    ``worker_argv`` is what the launcher runs, e.g. ``["-m", "pipeline.worker", "--stage",
    "pretrain", ...]``. Processes per node: ``procs_per_node``, else the GPUs allotted per
    node, else 1. CPU (``cpu=True``, or no GPU allotted): ``ACCELERATE_USE_CPU=1`` and gloo;
    more than one process in all uses ``--multi_gpu``, the flag that makes accelerate start
    a torch.distributed group (``--cpu --num_processes N`` would start one process).
    ``--machine_rank`` is ``$SLURM_NODEID``, expanded by each node's task. ``launcher``
    replaces ``python -m accelerate.commands.launch`` (tests use a fake).
    """
    lay = layout or slurm_layout(env)
    cpu = cpu or lay.gpus == 0
    ppn = procs_per_node or (1 if cpu else lay.procs_per_node)
    if ppn < 1:
        raise ValueError(f"procs_per_node must be >= 1, got {ppn}")
    total = lay.nodes * ppn
    args: list[str] = []
    if accelerate_config:
        args += ["--config_file", str(accelerate_config)]
    if total > 1:
        args.append("--multi_gpu")
    args += ["--num_machines", str(lay.nodes), "--num_processes", str(total),
             "--main_process_ip", lay.head, "--main_process_port", str(lay.port)]
    if mixed_precision is not None or cpu:
        args += ["--mixed_precision", "no" if cpu else str(mixed_precision)]
    if lay.cpus_per_task and "--num_cpu_threads_per_process" not in accelerate_args:
        args += ["--num_cpu_threads_per_process", str(max(1, lay.cpus_per_task // ppn))]
    args += list(accelerate_args)
    launch = " ".join(shlex.quote(a) for a in [*(launcher or ACCELERATE), *args]) \
        + ' --machine_rank "$SLURM_NODEID" ' + " ".join(shlex.quote(a) for a in worker_argv)
    exports = dict(extra_env or {})
    if cpu:
        exports.setdefault("ACCELERATE_USE_CPU", "1")
    for k in exports:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"bad environment variable name {k!r}")
    script = _TASK_TEMPLATE.format(
        exports="".join(f"export {k}={shlex.quote(str(v))}; " for k, v in exports.items()), launch=launch)
    srun = ["srun", f"--nodes={lay.nodes}", f"--ntasks={lay.nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1"]
    if lay.cpus_per_task:  # srun does not inherit it from sbatch in some versions (22.05 among them)
        srun.append(f"--cpus-per-task={lay.cpus_per_task}")
    return [*srun, *srun_args, "bash", "-c", script]


# --------------------------------------------------------------------------- requeue

def requeue_self(reason: str, *, env: Mapping[str, str] | None = None, run: Runner = subprocess.run) -> bool:
    """Put this job back into the queue (``scontrol requeue $SLURM_JOB_ID``).

    Call it last: SLURM ends the running job at once (SIGTERM to its processes) and starts
    it again later with SLURM_RESTART_COUNT + 1. Returns False, saying why, when not in a
    job, when the job does not allow requeue (sbatch --no-requeue, JobRequeue=0) or when
    scontrol refuses (e.g. MaxBatchRequeue reached).
    """
    env = _env(env)
    if not in_slurm(env):
        print(f"[slurm] not requeueing ({reason}): not inside a SLURM job", file=sys.stderr, flush=True)
        return False
    job_id = env["SLURM_JOB_ID"]
    try:
        info = run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                   timeout=CMD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"[slurm] not requeueing job {job_id} ({reason}): scontrol failed: {e}", file=sys.stderr, flush=True)
        return False
    m = re.search(r"\bRequeue=(\d)", info.stdout or "")
    if info.returncode != 0 or not m:
        print(f"[slurm] not requeueing job {job_id} ({reason}): cannot read the job "
              f"({(info.stderr or '').strip() or 'no Requeue= field'})", file=sys.stderr, flush=True)
        return False
    if m.group(1) != "1":
        print(f"[slurm] not requeueing job {job_id} ({reason}): the job does not allow requeue "
              f"(submitted with --no-requeue, or the cluster sets JobRequeue=0); resubmit it to continue "
              f"from the checkpoint", file=sys.stderr, flush=True)
        return False
    print(f"[slurm] requeueing job {job_id} (restart {int(env.get('SLURM_RESTART_COUNT') or 0) + 1}): "
          f"{reason}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        proc = run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"[slurm] requeue of job {job_id} failed: {e}", file=sys.stderr, flush=True)
        return False
    if proc.returncode != 0:
        print(f"[slurm] requeue of job {job_id} refused: {(proc.stderr or proc.stdout).strip()}",
              file=sys.stderr, flush=True)
        return False
    return True


