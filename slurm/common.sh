# shellcheck shell=bash
# Sourced by the batch scripts in this folder (not a job script itself).
#
# cs_run STAGE... -- [CONFIG] [key=value ...] [--force ...]
#   cd to the repository, pick the python (CARTOON_PYTHON, else <repo>/.venv/bin/python,
#   else python3 on PATH), print a header, and `exec python -m pipeline run STAGE...`.
#   The first argument is the config file unless it starts with "-" or holds a "=";
#   a relative config path is taken from the job's working directory (the directory
#   sbatch ran in, or --chdir). Everything else is passed on to `pipeline run`.
#
# In a job array (sbatch --array=0-11 slurm/finetune.sh ..., or `pipeline submit` for a grid stage)
# each task runs the point of the grid with its index: `pipeline run finetune --point-index $SLURM_ARRAY_TASK_ID`.
#
# `exec` makes the pipeline the batch shell itself, so `--signal=B:USR1@T` reaches it:
# it checkpoints, asks SLURM to requeue the job (when --requeue) and exits 3. The
# pipeline waits for every process it starts; SLURM without cgroups would not.

CS_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

cs_python() {
    if [[ -n ${CARTOON_PYTHON:-} ]]; then
        echo "$CARTOON_PYTHON"
    elif [[ -x $CS_REPO/.venv/bin/python ]]; then
        echo "$CS_REPO/.venv/bin/python"
    else
        command -v python3 || command -v python
    fi
}

cs_run() {
    local stages=() cfg=() py
    while (($#)) && [[ $1 != -- ]]; do stages+=("$1"); shift; done
    (($#)) && shift
    if (($#)) && [[ $1 != -* && $1 != *=* ]]; then
        cfg=(--config "$(realpath -m -- "$1")")
        shift
    fi
    py=$(cs_python) || { echo "[slurm] no python found (set CARTOON_PYTHON)" >&2; exit 1; }
    cd "$CS_REPO" || exit 1
    export PATH="$(dirname "$py"):$PATH" PYTHONUNBUFFERED=1
    echo "[slurm] job ${SLURM_JOB_ID:-none} (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0}" \
         "nodes ${SLURM_JOB_NODELIST:-$(hostname)} gpus/node ${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}" \
         "cpus/task ${SLURM_CPUS_PER_TASK:-?} at $(date '+%F %T')"
    if [[ -n ${SLURM_JOB_ID:-} && ${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}} =~ ^0*$ ]]; then
        echo "[slurm] no GPU in this job: ${stages[*]} runs on CPU (on a partition with GPUs the pipeline stops instead)"
    fi
    local point=()
    if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then  # a job array: this task runs one point of the grid stage
        point=(--point-index "$SLURM_ARRAY_TASK_ID")
    fi
    echo "[slurm] $py -m pipeline run ${stages[*]} ${cfg[*]} ${point[*]} $*"
    exec "$py" -m pipeline run "${stages[@]}" "${cfg[@]}" "${point[@]}" "$@"
}
