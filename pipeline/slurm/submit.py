"""The submission side of SLURM: ``pipeline submit`` (one sbatch job per stage, chained by afterok), the
job records it leaves in each stage's folder, and the state of a job as SLURM reports it."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.slurm.common import CMD_TIMEOUT, Runner, SlurmError
from toolbox import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_DIR = REPO_ROOT / "slurm"
JOB_RECORD = "slurm.json"            # the per-stage submission record (state_dir_for)
# squeue/sacct/jobcomp states after which a job will not run again by itself
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})


# --------------------------------------------------------------------------- submit

@dataclass(frozen=True)
class SubmittedJob:
    stage: str
    job_id: str                   # "" in a dry run
    after: str | None             # the job it waits for (afterok), None for the first
    cmd: tuple[str, ...]          # the sbatch command line
    log: str                      # the job's output file
    record: str | None = None     # where the submission was recorded
    submitted_at: str = field(default="")


def script_for(stage: str, script_dir: str | Path | None = None) -> tuple[Path, dict[str, str]]:
    """The batch script of a stage and the extra variables it needs (pipeline.sh takes STAGES)."""
    d = Path(script_dir) if script_dir is not None else SCRIPT_DIR
    own = d / f"{stage}.sh"
    if own.is_file():
        return own.resolve(), {}
    generic = d / "pipeline.sh"
    if generic.is_file():
        return generic.resolve(), {"STAGES": stage}
    raise SlurmError(f"no batch script for stage {stage!r} in {d} (looked for {own.name}, pipeline.sh)")


def parse_parsable(out: str) -> str:
    """Job id from ``sbatch --parsable`` output ("123" or "123;cluster")."""
    line = out.strip().splitlines()[-1] if out.strip() else ""
    job_id = line.split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmError(f"unexpected sbatch --parsable output: {out!r}")
    return job_id


def array_spec(indices: Sequence[int], max_parallel: int | None = None) -> str:
    """``--array``'s value for task ``indices``: ranges folded ([0,1,2,5] -> "0-2,5"), ``%N`` throttle."""
    idx = sorted(set(int(i) for i in indices))
    if not idx:
        raise ValueError("a job array needs at least one task")
    parts, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts) + (f"%{max_parallel}" if max_parallel else "")


def sbatch_command(stage: str, *, config_path: str | Path | None, overrides: Sequence[str] = (),
                   after: str | None = None, log_dir: str | Path = "slurm-logs",
                   script_dir: str | Path | None = None, extra_sbatch_args: Sequence[str] = (),
                   array: str | None = None) -> list[str]:
    """The sbatch command line of one stage (``--wait`` etc. go in ``extra_sbatch_args``); ``array``: an
    ``--array`` value (a grid stage, one task per point: each task's log is ``<stage>-<job>_<task>.out``)."""
    script, exports = script_for(stage, script_dir)
    log = f"{Path(log_dir)}/%x-%A_%a.out" if array else f"{Path(log_dir)}/%x-%j.out"
    cmd = ["sbatch", "--parsable", f"--job-name={stage}", f"--output={log}"]
    if array:
        cmd.append(f"--array={array}")
    if exports:
        cmd.append("--export=ALL," + ",".join(f"{k}={v}" for k, v in exports.items()))
    if after:
        cmd += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    cmd += [*extra_sbatch_args, str(script)]
    if config_path is not None:
        cmd.append(str(Path(config_path).resolve()))
    cmd += list(overrides)
    return cmd


def _write_record(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_job_record(path: str | Path) -> dict | None:
    """A stage's submission record (a file, or a stage dir holding JOB_RECORD), None when absent."""
    p = Path(path)
    p = p / JOB_RECORD if p.is_dir() else p
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return None


def submit(stages: Sequence[str], *, config_path: str | Path | None, overrides: Sequence[str] = (),
           script_dir: str | Path | None = None, extra_sbatch_args: Sequence[str] = (),
           state_dir_for: Callable[[str], Path] | None = None,
           state_file_for: Callable[[str], Path] | None = None,
           log_dir: str | Path = "slurm-logs", dry_run: bool = False,
           run: Runner = subprocess.run, out: Callable[[str], None] = print,
           stage_sbatch_args: Mapping[str, Sequence[str]] | None = None,
           arrays: Mapping[str, tuple[Mapping[str, int], int | None]] | None = None) -> list[SubmittedJob] | None:
    """One sbatch job per stage, in the given order, each ``afterok`` the one before.

    A child of a failed job is cancelled (``--kill-on-invalid-dep=yes``), not left pending.
    Creates ``log_dir`` (sbatch does not), prints one line per job, and records
    ``{job_id, stage, submitted_at, cmd, after, log}`` to ``state_file_for(stage)`` (or
    ``state_dir_for(stage) / JOB_RECORD``). ``stage_sbatch_args``: each stage's resource arguments
    (pipeline/slurm/resources.py), placed before ``extra_sbatch_args``. ``arrays``: stage -> ({point: task
    index}, max at once): that stage goes as a job array, its dependents wait for every task (afterok on
    an array job waits for all of them). When an sbatch fails, the jobs this call already
    submitted are cancelled, the error is printed and None is returned. ``dry_run`` prints
    the command lines and runs nothing.
    """
    if not stages:
        raise ValueError("no stages to submit")
    log_dir = Path(log_dir)
    jobs: list[SubmittedJob] = []
    after: str | None = None
    if not dry_run:
        log_dir.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        tasks, at_once = (arrays or {}).get(stage, (None, None))
        spec = array_spec(list(tasks.values()), at_once) if tasks else None
        cmd = sbatch_command(stage, config_path=config_path, overrides=overrides,
                             after=(after or "<job of previous stage>") if jobs else None,
                             log_dir=log_dir, script_dir=script_dir,
                             extra_sbatch_args=[*(stage_sbatch_args or {}).get(stage, ()), *extra_sbatch_args],
                             array=spec)
        if dry_run:
            out("[dry-run] " + shlex.join(cmd))
            jobs.append(SubmittedJob(stage, "", jobs[-1].stage if jobs else None, tuple(cmd),
                                     str(log_dir / f"{stage}-{'%A_%a' if spec else '%j'}.out")))
            continue
        try:
            proc = run(cmd, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise SlurmError(f"sbatch for stage {stage!r} failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or proc.stdout).strip()}")
            job_id = parse_parsable(proc.stdout)
        except (OSError, subprocess.TimeoutExpired, SlurmError) as e:
            print(f"error: {e}", file=sys.stderr)
            if jobs:
                ids = [j.job_id for j in jobs]
                run(["scancel", *ids], capture_output=True, text=True, timeout=CMD_TIMEOUT)
                print(f"error: cancelled the jobs already submitted: {', '.join(ids)}", file=sys.stderr)
            return None
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log = str(log_dir / (f"{stage}-{job_id}_<task>.out" if spec else f"{stage}-{job_id}.out"))
        record_path = None
        if state_file_for is not None:
            record_path = Path(state_file_for(stage))
        elif state_dir_for is not None:
            record_path = Path(state_dir_for(stage)) / JOB_RECORD
        if record_path is not None:
            _write_record(record_path, {"job_id": job_id, "stage": stage, "submitted_at": now, "cmd": cmd,
                                        "after": after, "log": log, "array": dict(tasks) if tasks else None})
        job = SubmittedJob(stage, job_id, after, tuple(cmd), log,
                           str(record_path) if record_path else None, now)
        jobs.append(job)
        out(f"submitted {stage:9s} job {job_id:>8s}  "
            + (f"after {after} (afterok)" if after else "first in chain") + f"  log {log}"
            + (f"\n          an array of {len(tasks)} task(s), one per point ({spec}): "
               + ", ".join(f"{i}={p}" for p, i in tasks.items()) if tasks else ""))
        after = job_id
    if not dry_run:
        ids = ",".join(j.job_id for j in jobs)
        out(f"{len(jobs)} job(s) submitted; watch: squeue -j {ids}; state: python -m pipeline list")
    return jobs


# --------------------------------------------------------------------------- job state

def _first_word(s: str) -> str:
    s = s.strip().split()[0] if s.strip() else ""
    return s.rstrip("+")


def _jobcomp_file(run: Runner) -> Path | None:
    try:
        proc = run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=CMD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    conf = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", proc.stdout, flags=re.M))
    if conf.get("JobCompType") == "jobcomp/filetxt" and conf.get("JobCompLoc", "").startswith("/"):
        return Path(conf["JobCompLoc"])
    return None


def _jobcomp_state(job_id: str, path: Path) -> str | None:
    """The last state jobcomp recorded for ``job_id`` ("123", or an array task "123_4": its record
    names the task's own job id, with ArrayJobId=123 ArrayTaskId=4)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    state = None
    array, _, task = job_id.partition("_")
    for line in text.splitlines():
        if (line.startswith(f"JobId={job_id} ") if not task else
                f" ArrayJobId={array} " in line and f" ArrayTaskId={task} " in line):
            m = re.search(r"\bJobState=(\S+)", line)
            if m:
                state = m.group(1)
    return state


def job_state(job_id: str | int, *, run: Runner = subprocess.run, jobcomp_file: str | Path | None = None) -> str:
    """PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ... or UNKNOWN; ``job_id`` may name one
    task of a job array ("123_4").

    squeue while SLURM remembers the job (MinJobAge after its end), then sacct (when the
    cluster keeps accounting), then the jobcomp/filetxt log (its last record of the job).
    """
    job_id = str(job_id)
    try:
        proc = run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                   timeout=CMD_TIMEOUT)
        if proc.returncode == 0 and proc.stdout.strip():
            return _first_word(proc.stdout.splitlines()[0])
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        proc = run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                   timeout=CMD_TIMEOUT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()] if proc.returncode == 0 else []
        if lines:
            return _first_word(lines[-1])
    except (OSError, subprocess.TimeoutExpired):
        pass
    path = Path(jobcomp_file) if jobcomp_file else _jobcomp_file(run)
    if path is not None:
        state = _jobcomp_state(job_id, path)
        if state:
            return state
    return "UNKNOWN"


def wait_for_job(job_id: str | int, *, timeout: float, poll: float = 1.0, run: Runner = subprocess.run,
                 jobcomp_file: str | Path | None = None) -> str:
    """Poll job_state until the job ends; returns the final state, or the last one seen at timeout."""
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while True:
        state = job_state(job_id, run=run, jobcomp_file=jobcomp_file)
        if state in TERMINAL_STATES or time.monotonic() >= deadline:
            return state
        time.sleep(poll)
