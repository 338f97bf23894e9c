"""One training step of config-f on one GPU, sec/kimg: our loop in several settings, and NVlabs' StyleGAN2Loss.

    python benchmarks/gpu_step.py [--size 256] [--batch 32] [--reps 5] [--rows ROW,ROW...] [--budget S] [--out PATH]
        [--nvlabs DIR]
    python benchmarks/gpu_step.py --rehearsal          # CPU, 16 px, tiny channels: checks the rows run
    python benchmarks/gpu_step.py --nvlabs-build       # build and load NVlabs' two CUDA plugins, then exit

Rows (each timed in a process of its own, in a process group of its own that is killed whole at the
row's limit, so that Accelerate's mixed precision, the ops implementation, torch.compile's caches and
any compiler still running never leak from one row into the next):

  ours:cuda:bf16       the loop (benchmarks/train.py's amortised step) with our CUDA kernels, bf16 autocast
                       (launch.mixed_precision=bf16)
  nvlabs               NVlabs' stylegan2-ada-pytorch, their networks and StyleGAN2Loss at the same
                       size and batch, their defaults for the 'stylegan2' config (fp16 in the 4
                       highest resolutions, conv_clamp 256, mapping 8 layers, mbstd 4, no ADA,
                       TF32 off as in their train.py), stepped with their training loop's phase
                       schedule (Gmain, Greg every 4, Dmain, Dreg every 16, G_ema) on random reals,
                       with THEIR CUDA ops: the row fails if their plugins do not load (see below)
  ours:ref:bf16        our reference ops + bf16
  ours:cuda:bf16:compile  kernels + bf16 + `compile: true` (LoopOptions(compile=True), what the
                       pipeline runs: torch.compile of G and D for D main and G main; R1 and path
                       length stay eager)
  ours:cuda:fp32, ours:ref:fp32, ours:cuda:bf16:cl (channels_last networks and reals): on request

NVlabs' code is read from --nvlabs (default .peer/stylegan2-ada-pytorch, where
benchmarks/gpu_acceptance.sh --prepare copies a checkout). Their plugin loader builds each op with
torch.utils.cpp_extension.load(name=...) and then imports it by that name; current torch's load()
returns the module without putting it in sys.modules, so that import fails and their ops fall back,
with a warning, to their slow reference code. This script puts the module that load() returns into
sys.modules under that name (the only change; their files are not modified), builds both plugins
before timing, and fails the row if either is missing.

A step is amortised over the lazy regularisation: t = t_plain + (t_pl - t_plain)/4 + (t_r1pl - t_pl)/16,
sec/kimg = 1000 t / batch (best of --reps after a warm-up). Each row has a time limit (ROW_SECONDS,
scaled to fit --budget; a row ends by the sum of its own and the earlier rows' limits, so time a row
leaves unused goes to the later ones). The table, with each row's ratio to NVlabs, is rewritten to
--out after every row. Exit status: 0 every row ran, 1 a row failed, 3 a row was cut off or not run.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import procgroup  # noqa: E402

PEER = REPO / ".peer" / "stylegan2-ada-pytorch"
# seconds each row may take at full scale (process start, build, warm-up, timing): the target's two
# rows first, so that a short budget still measures them
ROW_SECONDS = {"ours:cuda:bf16": 30, "nvlabs": 60, "ours:ref:bf16": 30, "ours:cuda:bf16:compile": 65,
               "ours:cuda:fp32": 60, "ours:ref:fp32": 90, "ours:cuda:bf16:cl": 30}
ROWS = list(ROW_SECONDS)
DEFAULT_ROWS = ROWS[:4]
MIN_ROW_S = 5  # a row with less time left than this is not started
R1_EVERY, PL_EVERY = 16, 4
KINDS = ("plain", "pl", "r1pl")
PLUGINS = ("bias_act", "upfirdn2d")  # NVlabs' two CUDA ops (torch_utils/ops/<name>.py, module <name>_plugin)


def _config(args):
    if args.rehearsal:
        return dict(size=16, channel_max=32, style_dim=64, n_mlp=2, batch=4, channel_base=512)
    return dict(size=args.size, channel_max=512, style_dim=512, n_mlp=8, batch=args.batch, channel_base=32768)


def _timer(device):
    import torch

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return timed


def _amortise(step, device, reps, warmup):
    timed = _timer(device)
    for _ in range(warmup):
        for kind in KINDS:
            step(kind)
    t = {k: min(timed(lambda: step(k)) for _ in range(reps)) for k in KINDS}
    return t["plain"] + (t["pl"] - t["plain"]) / PL_EVERY + (t["r1pl"] - t["pl"]) / R1_EVERY, t


# ----------------------------------------------------------------------------- ours

def ours(row, cfg, reps, rehearsal=False):
    import torch
    from accelerate import Accelerator

    parts = row.split(":")
    impl, precision, extra = parts[1], parts[2], set(parts[3:])
    cuda = torch.cuda.is_available()
    os.environ["CARTOON_STYLEGAN_OPS"] = impl if cuda else "ref"  # a rehearsal runs every row on the reference
    from cartoon_stylegan.networks import Discriminator, Generator
    from cartoon_stylegan.training import LoopOptions, TrainingLoop

    acc = Accelerator(cpu=not cuda, mixed_precision="no" if precision == "fp32" else precision)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # as NVlabs trains
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    G = Generator(cfg["size"], style_dim=cfg["style_dim"], n_mlp=cfg["n_mlp"], channel_max=cfg["channel_max"])
    D = Discriminator(cfg["size"], channel_max=cfg["channel_max"])
    real = torch.rand(cfg["batch"], 3, cfg["size"], cfg["size"]) * 2 - 1
    if "cl" in extra:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        real = real.contiguous(memory_format=torch.channels_last)
    real = real.to(acc.device)

    def data(start):
        while True:
            yield real

    opts = LoopOptions(kimg=1e6, batch=cfg["batch"], r1_every=R1_EVERY, pl_every=PL_EVERY, mixing_prob=0.9,
                       compile="compile" in extra)
    loop = TrainingLoop(acc, G=G, D=D, G_ema=copy.deepcopy(G), data=data, opts=opts,
                        ckpt_dir=tempfile.mkdtemp(), report=None)
    compiled = loop.phases.D_main is not loop.phases.D  # compile_main swapped the main phases' networks
    if compiled != ("compile" in extra):
        raise RuntimeError(f"compile: {'compile' in extra} asked, but the main phases run "
                           f"{'compiled' if compiled else 'eager'} networks")
    step_of = {"plain": 1, "pl": PL_EVERY, "r1pl": 0}

    def step(kind):
        loop.step = step_of[kind]
        figures = loop.train_step()
        torch.stack([v.float() for v in figures.values()]).cpu()

    t, parts_ = _amortise(step, acc.device, reps, warmup=1 if rehearsal else 2)
    return {"row": row, "sec_per_kimg": 1000 * t / cfg["batch"], "parts": parts_, "ops": loop.ops_impl,
            "compiled": compiled, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


# ----------------------------------------------------------------------------- NVlabs

def _nvlabs_build_env() -> None:
    """Where their loader (torch.utils.cpp_extension) would guess the toolkit wrong, point it at ours.

    cpp_extension takes CUDA_HOME from the nvcc on PATH, which can be a wrapper outside the toolkit;
    our build finds the toolkit from nvcc itself. ATen's CUDA headers, which their sources include,
    need cuBLAS/cuSPARSE headers that a toolkit may leave to the nvidia-* Python packages."""
    if not os.environ.get("CUDA_HOME"):
        try:
            import torch.utils.cpp_extension as cpp_extension

            from cartoon_stylegan.ops import build

            root = str(Path(build.toolchain()["include"][0]).parent)
            os.environ["CUDA_HOME"] = cpp_extension.CUDA_HOME = root  # cpp_extension read it once, at its import
        except Exception:  # noqa: BLE001 -- no toolkit: their build will say so itself
            pass
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "include" / "cusparse.h").is_file():
        return  # a whole toolkit: its own headers only
    try:
        import nvidia  # noqa: PLC0415 -- the nvidia-* wheels' namespace package, next to torch
    except ImportError:
        return
    found = [str(p) for root in nvidia.__path__ for p in sorted(Path(root).glob("*/include"))
             if (p / "cusparse.h").is_file() or (p / "cublas_v2.h").is_file()]
    if found:
        os.environ["CPATH"] = os.pathsep.join([p for p in os.environ.get("CPATH", "").split(os.pathsep) if p] + found)


def register_loaded_modules() -> None:
    """Make ``torch.utils.cpp_extension.load(name=...)`` leave the module it returns in ``sys.modules``,
    where a loader that imports it by name next (``importlib.import_module(name)``) finds it."""
    import torch.utils.cpp_extension as cpp_extension

    if getattr(cpp_extension.load, "_registers_in_sys_modules", False):
        return
    real_load = cpp_extension.load

    def load(name, *args, **kwargs):
        module = real_load(name, *args, **kwargs)
        if module is not None and kwargs.get("is_python_module", True):
            sys.modules.setdefault(name, module)
        return module

    load._registers_in_sys_modules = True
    cpp_extension.load = load


def import_nvlabs(peer: Path):
    """NVlabs' ``torch_utils.ops`` modules from the checkout ``peer``, with their plugin loader fixed."""
    missing = [f for f in ("torch_utils/custom_ops.py", "torch_utils/ops/bias_act.py", "torch_utils/ops/upfirdn2d.py",
                           "training/networks.py", "training/loss.py") if not (peer / f).is_file()]
    if missing:
        raise FileNotFoundError(f"no NVlabs stylegan2-ada-pytorch checkout at {peer} (missing {', '.join(missing)}): "
                                "run benchmarks/gpu_acceptance.sh --prepare --nvlabs-repo DIR")
    register_loaded_modules()
    if str(peer) not in sys.path:
        sys.path.insert(0, str(peer))
    warnings.filterwarnings("ignore", message=".*conv2d_gradfix.*|.*grid_sample_gradfix.*")
    import importlib

    return {name: importlib.import_module(f"torch_utils.ops.{name}") for name in PLUGINS}


def load_nvlabs_plugins(modules: dict) -> dict[str, float]:
    """Build (or load from TORCH_EXTENSIONS_DIR) and load their plugins; seconds per plugin.

    Raises with their loader's own message when one does not load: then their ops would run their
    reference code, and the row would time something other than NVlabs' training step."""
    seconds = {}
    for name, module in modules.items():
        t0 = time.time()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            ok = module._init()
        seconds[name] = time.time() - t0
        if not ok or getattr(module, "_plugin", None) is None:
            why = [str(w.message) for w in caught]
            detail = "\n".join(why)[-1500:] if why else "their _init() returned False"
            raise RuntimeError(f"NVlabs' {name} CUDA plugin did not load, so their reference ops would be timed:\n"
                               f"{detail}")
        if sys.modules.get(f"{name}_plugin") is not module._plugin:
            raise RuntimeError(f"NVlabs' {name} plugin is not the module registered as {name}_plugin")
    return seconds


def nvlabs_build(args) -> int:
    """--nvlabs-build: their two plugins built and loaded (run ahead, beside other work, by the acceptance run)."""
    _nvlabs_build_env()
    import torch

    if not torch.cuda.is_available():
        print("NVlabs' plugins: not built (no CUDA)")
        return 0
    seconds = load_nvlabs_plugins(import_nvlabs(Path(args.nvlabs)))
    print("NVlabs' plugins loaded: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    return 0


def nvlabs(row, cfg, reps, peer: Path, rehearsal=False):
    _nvlabs_build_env()
    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    their_ops = import_nvlabs(peer)
    build_s = load_nvlabs_plugins(their_ops) if cuda else {}
    from training.loss import StyleGAN2Loss
    from training.networks import Discriminator, Generator

    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # their train.py default
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    fp16_res = 4 if cuda else 0  # their default for the stylegan2 config; fp16 needs a GPU
    G = Generator(z_dim=cfg["style_dim"], c_dim=0, w_dim=cfg["style_dim"], img_resolution=cfg["size"], img_channels=3,
                  mapping_kwargs=dict(num_layers=cfg["n_mlp"]),
                  synthesis_kwargs=dict(channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
                                        num_fp16_res=fp16_res, conv_clamp=256)).to(device).train().requires_grad_(False)
    D = Discriminator(c_dim=0, img_resolution=cfg["size"], img_channels=3, channel_base=cfg["channel_base"],
                      channel_max=cfg["channel_max"], num_fp16_res=fp16_res, conv_clamp=256,
                      epilogue_kwargs=dict(mbstd_group_size=min(4, cfg["batch"])))
    D = D.to(device).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    loss = StyleGAN2Loss(device=device, G_mapping=G.mapping, G_synthesis=G.synthesis, D=D, augment_pipe=None,
                         style_mixing_prob=0.9, r1_gamma=10, pl_batch_shrink=2, pl_decay=0.01, pl_weight=2)

    def adam(module, interval):
        ratio = interval / (interval + 1)
        return torch.optim.Adam(module.parameters(), lr=0.0025 * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)

    opt_g, opt_d = adam(G, PL_EVERY), adam(D, R1_EVERY)
    batch = cfg["batch"]
    real = torch.rand(batch, 3, cfg["size"], cfg["size"], device=device) * 2 - 1
    c = torch.zeros(batch, 0, device=device)
    beta = 0.5 ** (batch / (10 * 1000))
    plan = {"plain": [("Gmain", G, opt_g, 1), ("Dmain", D, opt_d, 1)],
            "pl": [("Gmain", G, opt_g, 1), ("Greg", G, opt_g, PL_EVERY), ("Dmain", D, opt_d, 1)],
            "r1pl": [("Gmain", G, opt_g, 1), ("Greg", G, opt_g, PL_EVERY), ("Dmain", D, opt_d, 1),
                     ("Dreg", D, opt_d, R1_EVERY)]}

    def step(kind):  # their training_loop.py: per phase zero_grad, accumulate, nan_to_num, step; then G_ema
        for phase, module, opt, gain in plan[kind]:
            z = torch.randn(batch, cfg["style_dim"], device=device)
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(phase=phase, real_img=real, real_c=c, gen_z=z, gen_c=c, sync=True, gain=gain)
            module.requires_grad_(False)
            for p in module.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            opt.step()
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

    t, parts_ = _amortise(step, device, reps, warmup=1 if rehearsal else 2)
    kernels = "cuda" if all(m._plugin is not None for m in their_ops.values()) else "ref"
    if cuda and kernels != "cuda":
        raise RuntimeError("NVlabs' CUDA plugins were unloaded during the row")
    return {"row": row, "sec_per_kimg": 1000 * t / batch, "parts": parts_, "ops": kernels,
            "plugin_load_s": build_s, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "np": np.__version__}


# ----------------------------------------------------------------------------- driver

def one(args) -> None:
    cfg = _config(args)
    result = (nvlabs(args.one, cfg, args.reps, Path(args.nvlabs), args.rehearsal) if args.one == "nvlabs"
              else ours(args.one, cfg, args.reps, args.rehearsal))
    print("RESULT " + json.dumps(result), flush=True)


def row_limits(rows, budget: float) -> list[float]:
    """Each row's limit: its ROW_SECONDS scaled so that the rows together fit ``budget``."""
    scale = budget / sum(ROW_SECONDS[r] for r in rows)
    return [ROW_SECONDS[r] * scale for r in rows]


def _why(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    found = next((ln for ln in reversed(lines) if re.match(r"^\w*(Error|Exception)\b", ln)), lines[-1] if lines else "")
    return found.replace("|", "/")[:400]


def write_table(results, args, cfg, device, path: Path) -> str:
    import torch

    peer = next((r for r in results if r["row"] == "nvlabs" and r.get("sec_per_kimg")), None)
    lines = [f"# Training step, config-f {cfg['size']} px, batch {cfg['batch']}, one GPU: {device}", "",
             f"torch {torch.__version__} (CUDA {torch.version.cuda}); benchmarks/gpu_step.py; best of {args.reps} "
             "after warm-up, amortised over lazy R1 (16) and path length (4); TF32 off in every row", "",
             "| row | sec/kimg | vs NVlabs | ops | peak GiB | limit s | wall s | status |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    for r in results:
        s = r.get("sec_per_kimg")
        ratio = f"{s / peer['sec_per_kimg']:.2f}x" if (s and peer) else ""
        mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else ""
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") is not None else ""
        cells = [r["row"], f"{s:.2f}" if s else "", ratio, r.get("ops", ""), mem, f"{r['limit_s']:.0f}", wall,
                 r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Target (GPU acceptance): ours:cuda:bf16 at most 0.8x NVlabs' sec/kimg. "
              "A ratio < 1 is faster than NVlabs."]
    table = "\n".join(lines)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(table + "\n")
    os.replace(tmp, path)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--rehearsal", action="store_true", help="CPU, 16 px, tiny channels, one warm-up; the CUDA rows "
                    "run on the reference ops, the compile row with torch.compile disabled")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all rows (default: the rows' own limits, ROW_SECONDS)")
    ap.add_argument("--nvlabs", default=str(PEER), help="NVlabs' stylegan2-ada-pytorch checkout")
    ap.add_argument("--nvlabs-build", action="store_true", help="build and load NVlabs' CUDA plugins, then exit")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nvlabs_build:
        return nvlabs_build(args)
    if args.one:
        one(args)
        return 0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        print(f"unknown rows {unknown}; known: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.rehearsal:
        print("benchmarks/gpu_step.py needs a CUDA GPU (or --rehearsal)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if cuda else "CPU rehearsal"
    cfg = _config(args)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"gpu-step-{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    limits = row_limits(rows, args.budget if args.budget is not None else sum(ROW_SECONDS[r] for r in rows))
    results = [{"row": r, "status": "not run yet", "limit_s": lim} for r, lim in zip(rows, limits)]
    running: dict = {}

    def stop_row(signum, frame):  # the caller's limit: the row's group goes too, and the table says so
        if running.get("proc") is not None:
            procgroup.stop(running["proc"], grace=0.5)
        for r in results:
            if r["status"] in ("not run yet", "running"):
                r["status"] = ("not run: stopped from outside" if r["status"] == "not run yet"
                               else "cut off from outside")
        write_table(results, args, cfg, device, out)
        sys.exit(3)

    signal.signal(signal.SIGTERM, stop_row)
    t0 = time.time()
    write_table(results, args, cfg, device, out)
    for i, (r, row) in enumerate(zip(results, rows)):
        limit = t0 + sum(limits[:i + 1]) - time.time()  # this row's share plus what earlier rows left
        if limit < MIN_ROW_S:
            r["status"] = "not run: out of time"
            write_table(results, args, cfg, device, out)
            continue
        twin = row.replace(":cuda:", ":ref:")
        if not cuda and twin != row and twin in rows:
            r["status"] = f"skipped: no CUDA ({twin} runs the same code on the reference ops)"
            write_table(results, args, cfg, device, out)
            continue
        if row == "nvlabs" and not (Path(args.nvlabs) / "training" / "loss.py").is_file():
            r["status"] = (("skipped" if args.rehearsal else "failed") + f": no NVlabs checkout at {args.nvlabs} "
                           "(benchmarks/gpu_acceptance.sh --prepare --nvlabs-repo DIR puts one there)")
            write_table(results, args, cfg, device, out)
            continue
        cmd = [sys.executable, __file__, "--one", row, "--size", str(args.size), "--batch", str(args.batch),
               "--reps", str(args.reps), "--nvlabs", args.nvlabs] + (["--rehearsal"] if args.rehearsal else [])
        env = dict(os.environ)
        if args.rehearsal and "compile" in row:
            env["TORCH_COMPILE_DISABLE"] = "1"  # the wiring is rehearsed; a CPU compile takes minutes
        print(f"  {row} (up to {limit:.0f} s) ...", file=sys.stderr, flush=True)
        r["status"], r["limit_s"] = "running", limit
        running["proc"] = None
        started = time.time()
        done = procgroup.run(cmd, timeout=limit, env=env, cwd=REPO, log=log, on_start=lambda p: running.update(proc=p))
        r["wall_s"] = time.time() - started
        found = re.search(r"^RESULT (.*)$", done.output, re.M)
        if done.timed_out:
            r["status"] = f"cut off at its limit ({limit:.0f} s)"
        elif done.rc == 0 and found:
            r.update(json.loads(found.group(1)))
            r["status"] = "ok" if cuda else ("ok (rehearsal: reference ops, torch.compile disabled)" if "compile" in row
                                             else "ok (rehearsal: reference ops)")
        else:
            r["status"] = "failed: " + _why(done.output)
        print(f"  {row}: {r['status']}", file=sys.stderr, flush=True)
        print(write_table(results, args, cfg, device, out).splitlines()[6 + i], flush=True)
    print(write_table(results, args, cfg, device, out))
    if any(r["status"].startswith("failed") for r in results):
        return 1
    return 0 if all(r["status"].startswith(("ok", "skipped")) for r in results) else 3


if __name__ == "__main__":
    sys.exit(main())
