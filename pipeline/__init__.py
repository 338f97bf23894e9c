"""The DAG runner. Knows stages by name, nothing about GANs."""
import os

# OpenMP threads that spin while waiting make CPU training 5-10x slower as soon as another
# process shares the cores (measured: a 32 px G+D step went from 0.3 s to 2.8 s). Sleeping
# waiters are the safer default. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
