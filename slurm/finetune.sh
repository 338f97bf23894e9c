#!/bin/bash
# Stage 'finetune': fine-tune the source generator on the target domain (every variant in the config).
#   sbatch slurm/finetune.sh [CONFIG] [key=value ...] [--force]
# GPUs and CPUs are not asked for here, so that the script starts on any partition: one without
# GPUs runs the stage on CPU; on one with GPUs a job without them stops at once, saying so. Ask
# by hand (sbatch --gpus-per-node=1 --cpus-per-task=8 slurm/finetune.sh ...), or let `python -m pipeline
# submit` size each job from the partition (it starts from the #SUBMIT line). Every #SBATCH
# line below is a default; the same option on the sbatch command line wins
# (e.g. sbatch --nodes=2 --gpus-per-node=8 --time=4:00:00 slurm/finetune.sh ...). See slurm/README.md.
#SBATCH --job-name=finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SUBMIT --gpus-per-node=1 --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-logs/%x-%j.out

# SLURM runs a copy of this file: find the repository from the submitted path (or CARTOON_REPO)
if [[ -n ${SLURM_JOB_ID:-} && -z ${CARTOON_REPO:-} ]]; then
    CARTOON_REPO=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | sed -n 's|.* Command=\(/[^ ]*\)/slurm/[^/ ]*\.sh.*|\1|p' | head -n 1)
fi
source "${CARTOON_REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/common.sh" || exit 1
cs_run finetune -- "$@"
