"""Commands with a time limit that takes everything they started with them.

A benchmark row or an acceptance step starts compilers (ninja, nvcc), inductor's compile workers,
data-loader workers or a launcher's ranks. If only the command itself were killed at its limit,
those would run on into the next row's timing. Here each command runs in a process group (a
session) of its own; at the limit the group gets SIGTERM, then SIGKILL, and so does every
descendant that was found before, also one that moved to a session of its own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 3.0  # between SIGTERM and SIGKILL: lets a driver kill its own rows' groups and write its table


@dataclass
class Outcome:
    rc: int             # the command's exit status; 124 when it was stopped at its limit
    output: str         # stdout and stderr together
    seconds: float
    timed_out: bool


def _descendants(pid: int) -> list[int]:
    try:
        import psutil  # noqa: PLC0415 -- optional: without it the process group alone is killed
    except ImportError:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal(pids, group: int, sig) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM to ``proc``'s group and descendants, SIGKILL to all of them after ``grace`` seconds."""
    found = _descendants(proc.pid)
    _signal(found, proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    found += [p for p in _descendants(proc.pid) if p not in found]
    _signal(found, proc.pid, signal.SIGKILL)
    proc.wait()


def start(cmd, *, log: Path, env=None, cwd=None) -> subprocess.Popen:
    """``cmd`` in a session of its own, stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def run(cmd, *, timeout: float, env=None, cwd=None, log: Path, on_start=None) -> Outcome:
    """Run ``cmd`` (see ``start``) for at most ``timeout`` seconds; its output is read back from ``log``.
    ``on_start(proc)``: told the process once it runs (a caller's signal handler may have to stop it)."""
    t0 = time.time()
    offset = log.stat().st_size if log.exists() else 0
    proc = start(cmd, log=log, env=env, cwd=cwd)
    if on_start is not None:
        on_start(proc)
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        stop(proc)
    except BaseException:  # interrupted: leave nothing behind
        stop(proc)
        raise
    with open(log, "rb") as f:
        f.seek(offset)
        output = f.read().decode(errors="replace")
    seconds = time.time() - t0
    if timed_out:
        output += f"\n[stopped at its limit of {timeout:.0f} s]\n"
    return Outcome(124 if timed_out else proc.returncode, output, seconds, timed_out)
