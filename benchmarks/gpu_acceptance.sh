#!/usr/bin/env bash
# The GPU acceptance command: kernels, training speed and the pipeline on one H100/H200, one report.
#
#   benchmarks/gpu_acceptance.sh --prepare         # HERE (with internet to PyPI): wheels the GPU machine
#                                                  # lacks -> .whl/, NVlabs' code -> .peer/ (both ignored)
#   benchmarks/gpu_acceptance.sh --cpu-rehearsal   # HERE: every step, tiny sizes, on the CPU
#   benchmarks/gpu_acceptance.sh [--budget 540]    # THERE: the real run; writes benchmarks/results/gpu-<device>.md
#
# On the GPU machine (device tool), from the repository root:
#   run(command="benchmarks/gpu_acceptance.sh --out $OUT", carry=[".whl", ".peer"], timeout_s=600)
# The report and the step table come back in $OUT; copy them to benchmarks/results/ and commit.
# Exit status: 0 all checks passed, 1 a check failed, 2 bad usage.
#
# --prepare needs NVlabs/stylegan2-ada-pytorch fetched first (the agent tool `fetch`
# github:NVlabs/stylegan2-ada-pytorch puts a bare git dir under /work/.mirror/); without it
# the NVlabs row of step 4 reports the folder as missing and the other checks still run.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# what the GPU image lacks (its package list: /work/.library/device/KINDS.md): the loader's, DeepSpeed's
# and pydantic's wheels; mlflow, torch-fidelity and fid-helper are not needed (tracking off, no eval)
WHEELS_BINARY="webdataset==1.0.2 braceexpand==0.1.7 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"
DEEPSPEED="deepspeed==0.19.8"

prepare() {
  set -e
  mkdir -p .whl .peer
  rm -f .whl/*.whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl $WHEELS_BINARY
  "$PY" -m pip wheel -q --no-deps -w .whl "$DEEPSPEED"   # an sdist: build its pure-Python wheel here
  local mirror=/work/.mirror/NVlabs+stylegan2-ada-pytorch/repo
  if [ -d "$mirror" ]; then
    rm -rf .peer/stylegan2-ada-pytorch && mkdir -p .peer/stylegan2-ada-pytorch
    git --git-dir "$mirror" archive HEAD | tar -x -C .peer/stylegan2-ada-pytorch
    echo "NVlabs stylegan2-ada-pytorch $(git --git-dir "$mirror" rev-parse --short HEAD) -> .peer/"
  else
    echo "no $mirror: fetch github:NVlabs/stylegan2-ada-pytorch first for the NVlabs row of step 4" >&2
  fi
  "$PY" - <<'EOF'
# every Requires-Dist of the carried wheels is on the GPU image or carried
import pathlib, re, zipfile
image = set("""absl-py accelerate annotated-doc einops msgpack ninja numpy packaging psutil py-cpuinfo pyyaml torch
tqdm nvidia-ml-py typing-extensions pillow requests filelock""".split())
wheels = sorted(pathlib.Path(".whl").glob("*.whl"))
have = {re.split(r"-\d", w.name)[0].lower().replace("_", "-") for w in wheels} | image
missing = set()
for w in wheels:
    meta = next(n for n in zipfile.ZipFile(w).namelist() if n.endswith(".dist-info/METADATA"))
    for line in zipfile.ZipFile(w).read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            name = re.split(r"[ ;<>=!~\[(]", line.split(":", 1)[1].strip())[0].lower().replace("_", "-")
            if name not in have:
                missing.add(f"{name} (for {w.name})")
print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB in .whl/")
if missing:
    raise SystemExit("not on the GPU image and not carried: " + ", ".join(sorted(missing)))
EOF
  du -sh .whl .peer
}

case "${1:-}" in
  --prepare) prepare; exit $? ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
esac

# on the GPU machine: install the carried wheels beside the image's packages
if ! "$PY" -c "import webdataset" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_acceptance.py "$@"
