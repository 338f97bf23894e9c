#!/usr/bin/env bash
# The GPU acceptance run: our kernels checked and timed, the training step against NVlabs', the
# pipeline on one GPU, in one command that writes one report (benchmarks/gpu_acceptance.py).
#
# It is prepared for a GPU machine that reaches no package index and gets a copy of this working
# tree for one command of about 10 minutes:
#
#   1. Where pip can download, once:
#        git clone https://github.com/NVlabs/stylegan2-ada-pytorch /some/where
#        benchmarks/gpu_acceptance.sh --prepare --nvlabs-repo /some/where   # or NVLABS_REPO=/some/where
#      puts the wheels the GPU machine's image lacks in .whl/ (checked, versions included, against
#      benchmarks/gpu_image_packages.txt) and NVlabs' code in .peer/ (both ignored by git: copy
#      them along with the tree). It fails when the NVlabs checkout is missing.
#   2. Anywhere, before spending GPU time:  benchmarks/gpu_acceptance.sh --cpu-rehearsal
#   3. On the GPU machine, from the repository root, with a limit of 600 s:
#        benchmarks/gpu_acceptance.sh --out DIR
#      The steps are budgeted to 540 s; DIR gets gpu-<device>.md (the report, rewritten after every
#      step), gpu-step.md, ops-<device>.md and the full logs. Copy the report to benchmarks/results/.
#      A step that failed or was cut off reruns alone with --only N[,N...].
#
# Exit status: 0 passed (or rehearsed), 1 a check failed, 3 incomplete (a step was cut off at its
# limit or not run), 2 bad usage.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
esac

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_acceptance.py "$@"
