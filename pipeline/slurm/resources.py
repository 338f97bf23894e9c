"""What a SLURM job asks for: derived from the stage, the config and the partition it goes to.

``python -m pipeline submit`` reads the partition (``sinfo``: CPUs, memory and GPUs per node,
time limit), derives each stage's request from what the stage needs (``Stage.resources``:
GPU or not, CPUs, processes) and the ``slurm:`` config section, caps derived values at what a
node has, refuses explicit values that cannot fit, and checks every job with
``sbatch --test-only`` before queueing the chain. The ``#SBATCH`` lines of ``slurm/*.sh``
stay the defaults for a direct ``sbatch``; ``submit`` overrides them on the command line.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.slurm.common import Runner, count_gpus

CMD_TIMEOUT = 30  # sinfo / scontrol / sbatch --test-only may be slower than a job query

# pending reasons that will not clear by waiting, and what to do about them
NEVER_CLEARS = {
    "PartitionConfig": "the request exceeds what the partition's nodes have (CPUs, memory or GPUs): "
                       "scancel it and submit with smaller slurm.* values or another slurm.partition",
    "PartitionNodeLimit": "more nodes than the partition allows: scancel and submit with fewer --nodes",
    "PartitionTimeLimit": "the time limit exceeds the partition's MaxTime: scancel and submit with a shorter slurm.time",
    "BadConstraints": "the constraints match no node: scancel and fix the --constraint",
    "InvalidAccount": "the account is not valid here: scancel and set slurm.account",
    "InvalidQOS": "the QOS is not valid here: scancel and set slurm.qos",
    "QOSMaxGRESPerJob": "more GPUs than the QOS allows per job: scancel and ask for fewer",
    "DependencyNeverSatisfied": "the job it waits for failed: scancel it; fix the failed stage and submit again",
}


class ResourceError(ValueError):
    """A request that cannot run on the partition (the message names the stage, the request and the partition)."""


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    cpus: int                 # CPUs of the smallest node
    mem_mb: int               # memory of the smallest node
    gpus: int                 # GPUs of the node with the fewest (0: a CPU-only partition)
    max_minutes: int | None   # None: no limit
    default: bool = False

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "no GPUs"
        limit = format_minutes(self.max_minutes) if self.max_minutes is not None else "none"
        return (f"partition {self.name}: {self.nodes} node{'s' if self.nodes != 1 else ''} with "
                f"{self.cpus} CPUs, {self.mem_mb / 1024:.1f} GiB, {gpus} each; time limit {limit}")


def parse_minutes(text: str) -> int | None:
    """SLURM time: "infinite"/"UNLIMITED" -> None; "D-HH:MM:SS", "HH:MM:SS", "MM:SS", "MM", "D-HH" -> minutes."""
    t = (text or "").strip().lower()
    if t in ("infinite", "unlimited", "", "n/a"):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(x) for x in t.split(":")]
        h, m, s = (parts + [0, 0, 0])[:3]
        return days * 1440 + h * 60 + m + (1 if s else 0)
    parts = [int(x) for x in t.split(":")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0] + (1 if parts[1] else 0)
    h, m, s = parts[:3]
    return h * 60 + m + (1 if s else 0)


def format_minutes(minutes: int) -> str:
    d, rest = divmod(int(minutes), 1440)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def parse_mem_mb(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"{text!r} is not a memory size (e.g. 32G, 4000M)")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


def partitions(*, run: Runner = subprocess.run) -> dict[str, Partition]:
    """Every partition ``sinfo`` shows (nodes that are down or drained left out), by name."""
    try:
        proc = run(["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P|%l|%t"], capture_output=True, text=True,
                   timeout=CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ResourceError(f"sinfo did not answer within {CMD_TIMEOUT} s: is slurmctld reachable?") from None
    if proc.returncode != 0:
        raise ResourceError(f"sinfo failed: {(proc.stderr or proc.stdout).strip()}")
    rows: dict[str, list] = {}
    meta: dict[str, tuple] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 7:
            continue
        node, cpus, mem, gres, part, limit, state = parts
        default = part.endswith("*")
        part = part.rstrip("*")
        meta[part] = (default, parse_minutes(limit))
        if state.rstrip("*~#!%$@^-").lower() in ("down", "drain", "drained", "draining", "drng", "fail", "failing",
                                                   "inval", "maint", "futr", "future", "plnd", "planned", "unk"):
            continue
        rows.setdefault(part, [])
        if node not in [r[0] for r in rows[part]]:
            rows[part].append((node, int(re.sub(r"\D", "", cpus) or 0), int(re.sub(r"\D", "", mem) or 0),
                               count_gpus(gres, gres=True)))
    out = {}
    for part, (default, limit) in meta.items():
        nodes = rows.get(part, [])
        gpu_nodes = [n[3] for n in nodes if n[3] > 0]  # a GPU partition with a CPU node in it still has GPUs
        out[part] = Partition(part, len(nodes), min((n[1] for n in nodes), default=0),
                              min((n[2] for n in nodes), default=0), min(gpu_nodes, default=0), limit, default)
    return out


def gpuless_job_on_gpu_partition(env: Mapping[str, str] | None = None, *, run: Runner = subprocess.run) -> str | None:
    """In a job that was given no GPU: the describe() of its partition when that partition has GPUs (the
    job would train on CPU where GPUs were there to ask for); else None (a GPU job, a CPU-only
    partition, or sinfo cannot tell)."""
    from pipeline.slurm.common import env_of
    from pipeline.slurm.job import gpus_on_node

    env = env_of(env)
    name = env.get("SLURM_JOB_PARTITION", "").split(",")[0].strip()
    if not env.get("SLURM_JOB_ID") or gpus_on_node(env) > 0 or not name:
        return None
    try:
        part = partitions(run=run).get(name)
    except (OSError, ResourceError):
        return None
    return part.describe() if part is not None and part.gpus > 0 else None


def pick_partition(found: dict[str, Partition], name: str | None) -> Partition:
    if name:
        if name not in found:
            raise ResourceError(f"slurm.partition: {name!r} is not a partition here; sinfo shows "
                                f"{', '.join(sorted(found)) or 'none'}")
        part = found[name]
    else:
        defaults = [p for p in found.values() if p.default]
        if not defaults:
            raise ResourceError("this cluster has no default partition: set slurm.partition "
                                f"(one of {', '.join(sorted(found)) or 'none'})")
        part = defaults[0]
    if part.nodes == 0:
        raise ResourceError(f"partition {part.name} has no node that is up (sinfo)")
    return part


def script_defaults(script: Path) -> dict[str, str]:
    """The defaults of a batch script: its ``#SBATCH --key=value`` lines, and its ``#SUBMIT --key=value
    ...`` line (what ``submit`` starts from where the script itself asks for nothing: GPUs, CPUs)."""
    out = {}
    for line in Path(script).read_text().splitlines():
        m = re.match(r"^#SBATCH\s+--([\w-]+)(?:[= ](\S+))?", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
        elif line.startswith("#SUBMIT "):
            for key, value in re.findall(r"--([\w-]+)=(\S+)", line):
                out[key] = value
    return out


@dataclass
class Request:
    stage: str
    partition: str
    gpus_per_node: int
    cpus_per_task: int
    mem: str | None
    time: str | None
    account: str | None = None
    qos: str | None = None
    notes: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        out = [f"--partition={self.partition}", f"--gpus-per-node={self.gpus_per_node}",
               f"--cpus-per-task={self.cpus_per_task}"]
        if self.mem:
            out.append(f"--mem={self.mem}")
        if self.time:
            out.append(f"--time={self.time}")
        if self.account:
            out.append(f"--account={self.account}")
        if self.qos:
            out.append(f"--qos={self.qos}")
        return out

    def describe(self) -> str:
        return " ".join(self.args())


def stage_time(entries: Sequence[str], stage: str) -> str | None:
    """``slurm.time`` entries ("STAGE=LIMIT" or a bare "LIMIT" for every stage) -> this stage's limit."""
    bare = None
    for e in entries:
        if "=" in e:
            name, value = e.split("=", 1)
            if name.strip() == stage:
                return value.strip()
        else:
            bare = e.strip()
    return bare


def derive(stage: str, needs: dict, scfg, part: Partition, defaults: dict[str, str]) -> Request:
    """The request of ``stage`` on ``part``. ``needs``: {"gpu": bool, "cpus": int, "procs": int} (the
    stage's own figures); ``scfg``: the ``slurm:`` config section; ``defaults``: the script's #SBATCH lines."""
    notes = []
    wants_gpu = bool(needs.get("gpu"))
    procs = max(1, int(needs.get("procs", 1)))
    # GPUs
    if not wants_gpu:
        gpus = 0
    elif str(scfg.gpus) == "auto":
        # launch.num_processes > 1 says how many; 1 (the default) means "the GPUs of the job" under SLURM,
        # so the script's #SBATCH --gpus-per-node says how many, capped at a node's
        g = str(defaults.get("gpus-per-node") or "1")
        script_gpus = int(g) if g.isdigit() else 1
        want_gpus = procs if procs > 1 else script_gpus
        gpus = min(want_gpus, part.gpus)
        if part.gpus == 0:
            notes.append(f"{part.name} has no GPUs: {stage} runs on CPU")
        elif procs == 1 and want_gpus > part.gpus:
            notes.append(f"{stage}: the script's {want_gpus} GPUs per node, a node of {part.name} has {part.gpus}: "
                         f"asking {gpus}")
        elif procs > part.gpus:
            raise ResourceError(f"stage {stage}: launch.num_processes={procs} needs {procs} GPUs per node; "
                                f"{part.describe()} (set launch.num_processes, or slurm.gpus=all)")
    elif str(scfg.gpus) == "all":
        gpus = part.gpus
        if gpus == 0:
            notes.append(f"{part.name} has no GPUs: {stage} runs on CPU")
    else:
        gpus = int(scfg.gpus)
        if gpus > part.gpus:
            raise ResourceError(f"stage {stage}: slurm.gpus={gpus} GPUs per node; {part.describe()}")
    # CPUs: per task (one task per node, which runs every process of the node)
    procs_here = (gpus or procs) if wants_gpu else 1  # a process per GPU; CPU training: launch.num_processes
    want = int(needs.get("cpus", 1)) * procs_here
    if scfg.cpus_per_task is not None:
        if scfg.cpus_per_task > part.cpus:
            raise ResourceError(f"stage {stage}: slurm.cpus_per_task={scfg.cpus_per_task}; {part.describe()}")
        cpus = scfg.cpus_per_task
    else:
        cpus = max(1, min(want, part.cpus))
        if want > part.cpus:
            notes.append(f"{stage}: {want} CPUs wanted, a node of {part.name} has {part.cpus}: asking {cpus}")
    # memory
    mem = None
    if scfg.mem:
        mb = parse_mem_mb(scfg.mem)
        if part.mem_mb and mb > part.mem_mb:
            raise ResourceError(f"stage {stage}: slurm.mem={scfg.mem}; {part.describe()}")
        mem = scfg.mem
    # time
    asked = stage_time(scfg.time, stage)
    time = asked or defaults.get("time")
    if time is not None and part.max_minutes is not None:
        minutes = parse_minutes(time)
        if minutes is None or minutes > part.max_minutes:
            if asked:
                raise ResourceError(f"stage {stage}: slurm.time {asked}; {part.describe()}")
            notes.append(f"{stage}: the script's {time} exceeds {part.name}'s limit: asking "
                         f"{format_minutes(part.max_minutes)}")
            time = format_minutes(part.max_minutes)
    return Request(stage, part.name, gpus, cpus, mem, time, scfg.account, scfg.qos, notes)


def test_only(cmd: Sequence[str], *, run: Runner = subprocess.run) -> str | None:
    """``sbatch --test-only`` of a submit command line: None if SLURM would schedule it, else its message."""
    cmd = [c for c in cmd if not c.startswith(("--dependency", "--kill-on-invalid-dep", "--parsable"))]
    cmd = [cmd[0], "--test-only", *cmd[1:]]
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sbatch --test-only did not answer: {e}"
    text = (proc.stderr + proc.stdout).strip()
    if proc.returncode == 0 and "to start at" in text:
        return None
    return text.splitlines()[-1] if text else f"sbatch --test-only exited {proc.returncode}"


def pending_reason(job_id: str, *, run: Runner = subprocess.run) -> str | None:
    """The reason squeue gives for a pending job (None when it is not pending or not known)."""
    try:
        proc = run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"], capture_output=True, text=True,
                   timeout=CMD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""
    state, _, reason = line.partition("|")
    return reason.strip() or None if state.strip() == "PENDING" else None


def never_clears(reason: str | None) -> str | None:
    """How to fix a pending reason that waiting will not clear (None for the ordinary ones)."""
    if not reason:
        return None
    for key, hint in NEVER_CLEARS.items():
        if reason.startswith(key.split(",")[0]):
            return hint
    if "gres" in reason.lower() or "invalid" in reason.lower():
        return "the request is invalid on this cluster: scancel it and submit again with other slurm.* values"
    return None
