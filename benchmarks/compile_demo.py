"""The default model's bare G+D forward/backward, eager vs ``torch.compile`` (inductor), on this machine.

    python benchmarks/compile_demo.py [--reps 3] [--out PATH]

A measurement for issue 18 (the CPU step at >= 35 % of matmul), not a feature: the training loop
does not compile. What compiling would cost and give is printed side by side in one process --
the cold compile time (inductor's C++ build, no cache), then eager and compiled steps interleaved,
best of 5 per round, with this process's float32 2048^2 matmul throughput. The step is the same as
``benchmarks/train.py --demo``'s bare row (no R1: its double backward does not go through
AOTAutograd, so a compiled loop would run R1 eagerly). CPU only; the table goes to
benchmarks/results/compile-demo-cpu.md (``--out`` elsewhere).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# cold: inductor's caches in a fresh folder (not the user's /tmp/torchinductor_<user>)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile-demo-")

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shard import _cpu_name  # noqa: E402
from train import DEMO, _matmul_gflops  # noqa: E402

from cartoon_stylegan.networks import Discriminator, Generator  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    G = Generator(DEMO["size"], style_dim=DEMO["style_dim"], n_mlp=DEMO["n_mlp"], channel_max=DEMO["channel_max"],
                  use_noise=False)
    D = Discriminator(DEMO["size"], channel_max=DEMO["channel_max"])
    real = torch.rand(DEMO["batch"], 3, DEMO["size"], DEMO["size"]) * 2 - 1
    z = torch.randn(DEMO["batch"], G.style_dim)
    params = list(G.parameters()) + list(D.parameters())

    def make(g, d):
        def step():
            fake = g(z, noise_mode="none")
            loss = F.softplus(-d(fake)).mean() + F.softplus(d(real)).mean() + F.softplus(d(fake.detach())).mean()
            loss.backward()
            for p in params:
                p.grad = None
        return step

    from torch.utils.flop_counter import FlopCounterMode

    eager = make(G, D)
    with FlopCounterMode(display=False) as fc:
        eager()
    gflop = fc.get_total_flops() / 1e9
    t0 = time.perf_counter()
    compiled = make(torch.compile(G), torch.compile(D))
    compiled()
    compile_s = time.perf_counter() - t0
    compiled()
    eager()

    def best(fn, n=5):
        out = float("inf")
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t)
        return out

    rows = []
    for _ in range(args.reps):
        rows.append((_matmul_gflops(reps=1), best(eager), best(compiled)))
    mm, te, tc = max(r[0] for r in rows), min(r[1] for r in rows), min(r[2] for r in rows)
    lines = ["# The default model's bare step: eager vs torch.compile", "",
             f"`python benchmarks/compile_demo.py` on cpu ({_cpu_name()}), {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, {datetime.date.today()}; float32 matmul 2048^2 in this process: "
             f"{mm:.0f} GFLOP/s (best of {args.reps}).", "",
             f"Cold compile of G and D (first step included): {compile_s:.0f} s.", "",
             "| step (batch 16, no R1) | GFLOP | ms | GFLOP/s | of matmul |", "|---|---:|---:|---:|---:|",
             f"| eager | {gflop:.2f} | {te * 1e3:.1f} | {gflop / te:.1f} | {gflop / te / mm:.0%} |",
             f"| torch.compile (inductor) | {gflop:.2f} | {tc * 1e3:.1f} | {gflop / tc:.1f} | {gflop / tc / mm:.0%} |",
             "", f"compiled is {te / tc:.2f}x eager; per round (matmul GFLOP/s, eager ms, compiled ms): "
             + "; ".join(f"{m:.0f}, {e * 1e3:.0f}, {c * 1e3:.0f}" for m, e, c in rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out or ROOT / "benchmarks" / "results" / "compile-demo-cpu.md")
    out.write_text(text)
    print(f"written: {out}", file=sys.stderr)
    shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
