"""One training step of config-f on one GPU, sec/kimg: our loop in several settings, and NVlabs' StyleGAN2Loss.

    python benchmarks/gpu_step.py [--size 256] [--batch 32] [--reps 5] [--rows ROW,ROW...] [--out PATH]
    python benchmarks/gpu_step.py --rehearsal          # CPU, 32 px, tiny channels: checks the script runs

Rows (each timed in a process of its own, so that Accelerate's mixed precision, the ops
implementation and torch.compile's caches never leak from one row into the next):

  ours:ref:fp32        the loop (benchmarks/train.py's amortised step) with the reference ops
  ours:cuda:fp32       ... with our CUDA kernels
  ours:ref:bf16        reference ops, bf16 autocast (launch.mixed_precision=bf16)
  ours:cuda:bf16       kernels + bf16
  ours:cuda:bf16:cl    + channels_last networks and reals
  ours:cuda:bf16:compile  + torch.compile of G and D for the main phases (R1 and path length
                       stay eager: torch.compile does not do double backward)
  nvlabs               NVlabs' stylegan2-ada-pytorch, their networks and StyleGAN2Loss at the same
                       size and batch, their defaults for the 'stylegan2' config (fp16 in the 4
                       highest resolutions, conv_clamp 256, mapping 8 layers, mbstd 4, no ADA,
                       TF32 off as in their train.py), stepped with their training loop's phase
                       schedule (Gmain, Greg every 4, Dmain, Dreg every 16, G_ema) on random reals.
                       Their code is read from .peer/stylegan2-ada-pytorch (benchmarks/gpu_acceptance.sh
                       --prepare puts it there); their kernels build at first use, as in their repo.

A step is amortised over the lazy regularisation: t = t_plain + (t_pl - t_plain)/4 + (t_r1pl - t_pl)/16,
sec/kimg = 1000 t / batch (best of --reps after a warm-up). Prints a table with each row's ratio to
NVlabs and writes it to --out (default benchmarks/results/gpu-step-<device>.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PEER = REPO / ".peer" / "stylegan2-ada-pytorch"
ROWS = ["ours:cuda:bf16", "nvlabs", "ours:cuda:fp32", "ours:ref:fp32", "ours:ref:bf16", "ours:cuda:bf16:cl",
        "ours:cuda:bf16:compile"]  # the target's comparison first: a short budget still measures it
SLOW_ROWS = {"nvlabs": 3.0, "ours:cuda:bf16:compile": 3.0}  # their kernels build / torch.compile: x the row timeout
R1_EVERY, PL_EVERY = 16, 4
KINDS = ("plain", "pl", "r1pl")


def _config(args):
    if args.rehearsal:
        return dict(size=32, channel_max=64, style_dim=128, n_mlp=4, batch=4, channel_base=2048)
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


def _amortise(step, device, reps, warmup=2):
    timed = _timer(device)
    for _ in range(warmup):
        for kind in KINDS:
            step(kind)
    t = {k: min(timed(lambda: step(k)) for _ in range(reps)) for k in KINDS}
    return t["plain"] + (t["pl"] - t["plain"]) / PL_EVERY + (t["r1pl"] - t["pl"]) / R1_EVERY, t


# ----------------------------------------------------------------------------- ours

def ours(row, cfg, reps):
    import torch
    from accelerate import Accelerator

    parts = row.split(":")
    impl, precision, extra = parts[1], parts[2], set(parts[3:])
    os.environ["CARTOON_STYLEGAN_OPS"] = impl
    from cartoon_stylegan.networks import Discriminator, Generator
    from cartoon_stylegan.training import LoopOptions, TrainingLoop

    cuda = torch.cuda.is_available()
    acc = Accelerator(cpu=not cuda, mixed_precision=precision if (cuda and precision != "fp32") else "no")
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

    opts = LoopOptions(kimg=1e6, batch=cfg["batch"], r1_every=R1_EVERY, pl_every=PL_EVERY, mixing_prob=0.9)
    loop = TrainingLoop(acc, G=G, D=D, G_ema=copy.deepcopy(G), data=data, opts=opts,
                        ckpt_dir=tempfile.mkdtemp(), report=None)
    if "compile" in extra:
        ph = loop.phases
        eager = {"G": ph.G, "D": ph.D}
        compiled = {"G": torch.compile(ph.G), "D": torch.compile(ph.D)}
        for name, use in (("_Dmain", compiled), ("_Gmain", compiled), ("_Dreg", eager), ("_Greg", eager)):
            fn = getattr(ph, name)

            def run(real_, fn=fn, use=use):
                ph.G, ph.D = use["G"], use["D"]
                return fn(real_)
            setattr(ph, name, run)
    step_of = {"plain": 1, "pl": PL_EVERY, "r1pl": 0}

    def step(kind):
        loop.step = step_of[kind]
        figures = loop.train_step()
        torch.stack([v.float() for v in figures.values()]).cpu()

    t, parts_ = _amortise(step, acc.device, reps)
    return {"row": row, "sec_per_kimg": 1000 * t / cfg["batch"], "parts": parts_, "ops": loop.ops_impl,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


# ----------------------------------------------------------------------------- NVlabs

def nvlabs(row, cfg, reps):
    import numpy as np
    import torch

    if not (PEER / "training" / "loss.py").is_file():
        raise FileNotFoundError(f"{PEER} is missing: run benchmarks/gpu_acceptance.sh --prepare (after fetching "
                                "NVlabs/stylegan2-ada-pytorch)")
    sys.path.insert(0, str(PEER))
    import warnings

    warnings.filterwarnings("ignore", message=".*conv2d_gradfix.*|.*grid_sample_gradfix.*")
    from torch_utils import misc  # noqa: F401
    from training.loss import StyleGAN2Loss
    from training.networks import Discriminator, Generator

    cuda = torch.cuda.is_available()
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
                      epilogue_kwargs=dict(mbstd_group_size=min(4, cfg["batch"]))).to(device).train().requires_grad_(False)
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

    t, parts_ = _amortise(step, device, reps)
    from torch_utils.ops import bias_act, upfirdn2d
    kernels = "cuda" if (bias_act._plugin is not None and upfirdn2d._plugin is not None) else "ref"
    return {"row": row, "sec_per_kimg": 1000 * t / batch, "parts": parts_, "ops": kernels,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "np": np.__version__}


# ----------------------------------------------------------------------------- driver

def one(args) -> None:
    cfg = _config(args)
    fn = nvlabs if args.one == "nvlabs" else ours
    print("RESULT " + json.dumps(fn(args.one, cfg, args.reps)), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--rehearsal", action="store_true", help="CPU, 32 px, tiny channels; CUDA-only rows skipped")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per row (x3 for the nvlabs and compile rows)")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds for all rows; rows that would not fit are not run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.rehearsal:
        print("benchmarks/gpu_step.py needs a CUDA GPU (or --rehearsal)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if cuda else "CPU rehearsal"
    cfg = _config(args)
    results, failed = [], 0
    deadline = time.time() + args.budget
    for row in args.rows.split(","):
        if row not in ROWS:
            print(f"unknown row {row!r}; known: {', '.join(ROWS)}", file=sys.stderr)
            return 2
        if not cuda and (":cuda" in row or row.endswith(":bf16") or ":bf16:" in row):
            results.append({"row": row, "status": "skipped: no CUDA"})
            continue
        timeout = min(args.timeout * SLOW_ROWS.get(row, 1.0), deadline - time.time())
        if timeout < 15:
            results.append({"row": row, "status": "not run: out of time"})
            continue
        cmd = [sys.executable, __file__, "--one", row, "--size", str(args.size), "--batch", str(args.batch),
               "--reps", str(args.reps)] + (["--rehearsal"] if args.rehearsal else [])
        print(f"  {row} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            found = re.search(r"^RESULT (.*)$", proc.stdout, re.M)
            if proc.returncode == 0 and found:
                results.append({**json.loads(found.group(1)), "status": "ok", "wall_s": time.time() - t0})
            else:
                lines = [ln for ln in (proc.stdout + proc.stderr).strip().splitlines() if ln.strip()]
                why = next((ln for ln in reversed(lines) if re.match(r"^\w*(Error|Exception)\b", ln)), lines[-1] if lines else "")
                results.append({"row": row, "status": ("failed: " + why.replace("|", "/"))[:400]})
                failed += row != "nvlabs" and "compile" not in row  # the peer and compile rows inform, not gate
        except subprocess.TimeoutExpired:
            results.append({"row": row, "status": f"failed: timed out after {timeout:.0f} s"})
            failed += row != "nvlabs" and "compile" not in row
    peer = next((r for r in results if r["row"] == "nvlabs" and r["status"] == "ok"), None)
    lines = [f"# Training step, config-f {cfg['size']} px, batch {cfg['batch']}, one GPU: {device}", "",
             f"torch {torch.__version__} (CUDA {torch.version.cuda}); benchmarks/gpu_step.py; best of {args.reps} "
             "after warm-up, amortised over lazy R1 (16) and path length (4); TF32 off in every row", "",
             "| row | sec/kimg | vs NVlabs | ops | peak GiB | status |", "|---|---:|---:|---|---:|---|"]
    for r in results:
        s = r.get("sec_per_kimg")
        ratio = f"{s / peer['sec_per_kimg']:.2f}x" if (s and peer) else ""
        mem = f"{r['peak_mem_gb']:.1f}" if r.get("peak_mem_gb") else ""
        lines.append(f"| {r['row']} | {s:.2f} | {ratio} | {r.get('ops', '')} | {mem} | {r['status']} |" if s else
                     f"| {r['row']} | | | | | {r['status']} |")
    lines += ["", "Target (issue: GPU acceptance): ours:cuda:bf16 at most 0.8x NVlabs' sec/kimg. "
              "A ratio < 1 is faster than NVlabs."]
    table = "\n".join(lines)
    print(table)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"gpu-step-{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
