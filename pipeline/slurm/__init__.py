"""SLURM, both sides: ``job.py`` -- inside a job (its layout, the per-node srun launcher, requeue);
``submit.py`` -- from a login node (``pipeline submit``: chained sbatch jobs, their records, job
states); ``resources.py`` -- what each job asks for, derived from the stage and the partition;
``common.py`` -- the error, the command runner and the one GPU-count parser they share.

``from pipeline import slurm`` gives the in-job and submission functions by name (``slurm.submit``,
``slurm.slurm_layout``, ...); ``pipeline.slurm.resources`` is imported by name where it is used.
"""
from __future__ import annotations

from pipeline.slurm.common import (SlurmError, Runner, CMD_TIMEOUT, count_gpus)
from pipeline.slurm.job import (PORT_BASE, PORT_SPAN, in_slurm, rendezvous_port, expand_hostlist, gpus_on_node,
    SlurmLayout, slurm_layout, ACCELERATE, srun_accelerate_command, requeue_self)
from pipeline.slurm.submit import (REPO_ROOT, SCRIPT_DIR, JOB_RECORD, TERMINAL_STATES, SubmittedJob,
    script_for, parse_parsable, sbatch_command, array_spec, read_job_record, submit, job_state, wait_for_job)

__all__ = ["SlurmError", "Runner", "CMD_TIMEOUT", "count_gpus", "PORT_BASE", "PORT_SPAN", "in_slurm",
           "rendezvous_port", "expand_hostlist", "gpus_on_node", "SlurmLayout", "slurm_layout", "ACCELERATE",
           "srun_accelerate_command", "requeue_self", "REPO_ROOT", "SCRIPT_DIR", "JOB_RECORD", "TERMINAL_STATES",
           "SubmittedJob", "script_for", "parse_parsable", "sbatch_command", "array_spec", "read_job_record", "submit",
           "job_state", "wait_for_job"]
