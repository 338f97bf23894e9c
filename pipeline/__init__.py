"""The DAG runner. Knows stages by name, nothing about GANs.

OpenMP: the pipeline leaves ``OMP_WAIT_POLICY`` to the user (PASSIVE halves an idle machine's
speed, spinning waiters starve a shared one: benchmarks/results/design-measurements-cpu.md); CPU
multi-process launches set PASSIVE for their ranks (pipeline/launch.py).
"""
