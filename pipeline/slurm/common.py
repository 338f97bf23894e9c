"""What the in-job side and the submission side of SLURM share: the error, the command runner type, the
environment accessor and the one parser of GPU counts."""
from __future__ import annotations

import os
import re
import subprocess
from typing import Callable, Mapping

__all__ = ["SlurmError", "Runner", "CMD_TIMEOUT", "env_of", "count_gpus"]

CMD_TIMEOUT = 20                     # seconds for one squeue/sacct/scontrol call
Runner = Callable[..., subprocess.CompletedProcess]


class SlurmError(RuntimeError):
    """A SLURM command failed or SLURM's state could not be read."""


def env_of(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """``env``, or the process environment when None (every reader takes a mapping, for tests)."""
    return os.environ if env is None else env


def count_gpus(spec: str, *, gres: bool = False) -> int:
    """GPUs in a SLURM GPU specification, the one parser of them.

    gres=False: a ``SLURM_GPUS_PER_NODE`` / ``--gpus-per-node`` value: "4", "a100:4", "gpu:a100:4",
                "a100:2,v100:2" -> 4, 4, 4, 4 (a bare type name, "a100", is one);
    gres=True:  a node's gres string from ``sinfo``: "gpu:4", "gpu:a100:8(S:0-1)", "gpu:2,shard:4" ->
                4, 8, 2 (only ``gpu`` items count); "(null)" -> 0.
    """
    total = 0
    for item in re.split(r",(?![^()]*\))", spec or ""):  # "gpu:a100:4(S:0,2)": the socket list is one item
        item = re.sub(r"\(.*\)$", "", item.strip())  # socket affinity: "(S:0-1)"
        if not item or item == "(null)":
            continue
        parts = item.split(":")
        if parts[0] == "gpu":
            parts = parts[1:]
        elif gres:
            continue  # another kind of gres (shard, mps, ...)
        if parts and parts[-1].isdigit():
            total += int(parts[-1])
        elif not gres and parts:
            total += 1
    return total
