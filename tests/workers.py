"""How many pytest-xdist workers `make test` starts: the CPUs this process may use (its affinity,
and a cgroup CPU quota where one is set, as in containers), at least 1, at most 4 (the longest test
file takes ~5 min, so more workers would only wait for it)."""
import math
import os
from pathlib import Path


def usable_cpus() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:   # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


if __name__ == "__main__":
    print(max(1, min(4, usable_cpus())))
