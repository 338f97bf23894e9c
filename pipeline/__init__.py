"""The DAG runner. Knows stages by name, nothing about GANs.

OpenMP: the pipeline leaves ``OMP_WAIT_POLICY`` to the user. Measured on 2 idle cores, a
32 px G+D step of the default model: libgomp's default 7.6 s/kimg, PASSIVE 15.1 s/kimg
(threads re-woken for every small op). With another process on the same cores, spinning
waiters made a step up to 9x slower (0.3 s -> 2.8 s): set ``OMP_WAIT_POLICY=PASSIVE``
there. CPU multi-process launches set it for their ranks (pipeline/launch.py).
"""
