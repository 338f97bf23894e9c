"""Optimizer and gradient state per rank: DDP vs DeepSpeed ZeRO-1 vs ZeRO-2, config-f 256 px G + D.

    python benchmarks/deepspeed_memory.py [--ranks 2 8] [--size 256] [--out PATH]

For each world size the script launches itself with `accelerate launch` (CPU, gloo; on a CUDA
machine, one process per GPU when there are enough) and each rank builds G and D exactly as the
training loop does: the loop's Adam over the trainable parameters, prepared by the backend
(`cartoon_stylegan.training.backends`), one backward (a cheap quadratic loss in place of the GAN
losses: the memory layout does not depend on the loss) and one optimizer step, so every buffer
exists. Then, per rank, measured from the engines' own tensors (not from a formula):

  params      the module's weights (every rank holds all of them under ZeRO-1/2)
  adam        Adam's moments this rank holds (exp_avg + exp_avg_sq)
  master      ZeRO's fp32 copy of this rank's weight partition (none under DDP)
  grads       gradient storage held after the backward: DDP's ``.grad`` tensors; under ZeRO this
              rank's partition of the averaged gradients (+ the reduce bucket, + any ``.grad`` left).
              Not in the table: during the backward ZeRO-1 holds the full gradients until it
              reduces them at the end, while ZeRO-2 reduces them bucket by bucket as they come

and with CUDA, `torch.cuda.max_memory_allocated` after the step. Prints one table (mebibytes,
rank 0; the ranks differ by alignment padding only) and writes it to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from toolbox import free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MIB = 2**20


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _inner_state_bytes(opt) -> int:
    """Adam moment bytes held by a torch optimizer (``step`` counters excluded)."""
    import torch

    return _bytes(v for st in opt.state.values() for k, v in st.items() if torch.is_tensor(v) and k != "step")


def rank_main(out_dir: Path, backend_name: str, size: int) -> None:
    import torch
    from accelerate import Accelerator

    from cartoon_stylegan.networks import Discriminator, Generator
    from cartoon_stylegan.training import build_optimizers
    from cartoon_stylegan.training.backends import make_backend

    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    G = Generator(size, style_dim=512, n_mlp=8, channel_max=512).to(acc.device)
    D = Discriminator(size, channel_max=512).to(acc.device)
    g_names = {n for n, _ in G.named_parameters()}
    d_names = {n for n, _ in D.named_parameters()}
    opt_g, opt_d = build_optimizers(G, D, g_names, d_names, lr_g=0.002, lr_d=0.002, g_reg_every=4, d_reg_every=16)
    kind, ds = ("ddp", None) if backend_name == "ddp" else ("deepspeed", backend_name)
    backend = make_backend(acc, kind, deepspeed_config=ds or "zero2", batch=4)
    G_run, D_run = backend.prepare(G, D, opt_g, opt_d)
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row = {"backend": backend_name, "world": acc.num_processes, "rank": acc.process_index}
    for net, module in (("G", G), ("D", D)):
        backend.zero_grad(net)
        loss = sum((p.float() ** 2).sum() for p in module.parameters()) * 1e-12
        backend.backward(loss, net)
        if kind == "ddp":
            grads = _bytes(p.grad for p in module.parameters())
        else:
            zero = backend.engines[net].optimizer
            # this rank's partition of averaged gradients, the reduce bucket, and any .grad left on the weights
            part = getattr(zero, "averaged_gradients", {}) or {}
            grads = _bytes(t for ts in part.values() for t in ts)
            grads += _bytes(getattr(zero, "ipg_buffer", None) or [])
            grads += _bytes(p.grad for p in module.parameters())
        backend.step(net)
        opt = backend.engines[net].optimizer if kind != "ddp" else backend.opt[net]
        if kind == "ddp":
            adam, master = _inner_state_bytes(opt.optimizer if hasattr(opt, "optimizer") else opt), 0
        else:
            adam = _inner_state_bytes(opt.optimizer) if hasattr(opt, "optimizer") else _inner_state_bytes(opt)
            master = _bytes(getattr(opt, "single_partition_of_fp32_groups", []) or [])
        row[net] = {"params": _bytes(module.parameters()), "adam": adam, "master": master, "grads": grads,
                    "n_params": sum(p.numel() for p in module.parameters())}
    if acc.device.type == "cuda":
        row["peak_cuda"] = torch.cuda.max_memory_allocated()
    (out_dir / f"{backend_name}-{acc.num_processes}-rank{acc.process_index}.json").write_text(json.dumps(row))
    acc.wait_for_everyone()


def launch(world: int, backend: str, size: int, out_dir: Path) -> dict:
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(world),
           "--num_machines", "1", "--mixed_precision", "no", "--main_process_port", str(free_port()),
           "--num_cpu_threads_per_process", "1", __file__, "--rank-main", str(out_dir), backend, str(size)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"{backend} x{world} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads((out_dir / f"{backend}-{world}-rank0.json").read_text())




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--backends", nargs="+", default=["ddp", "zero1", "zero2"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.ranks:
            for backend in args.backends:
                print(f"  {backend} x{world} ...", file=sys.stderr, flush=True)
                rows.append(launch(world, backend, args.size, Path(tmp)))
    lines = [f"# Optimizer + gradient state per rank, config-f {args.size} px (G + D)", "",
             f"device: {device}; torch {torch.__version__}; measured from the engines after one backward and one "
             "step (benchmarks/deepspeed_memory.py); MiB on rank 0", "",
             "| backend | ranks | params | Adam moments | fp32 master partition | gradients | optimizer + gradients |"
             + (" peak CUDA |" if any("peak_cuda" in r for r in rows) else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if any("peak_cuda" in r for r in rows) else "")]
    for r in rows:
        tot = {k: sum(r[n][k] for n in ("G", "D")) for k in ("params", "adam", "master", "grads")}
        state = tot["adam"] + tot["master"] + tot["grads"]
        line = (f"| {r['backend']} | {r['world']} | {tot['params'] / MIB:.1f} | {tot['adam'] / MIB:.1f} | "
                f"{tot['master'] / MIB:.1f} | {tot['grads'] / MIB:.1f} | **{state / MIB:.1f}** |")
        if "peak_cuda" in r:
            line += f" {r['peak_cuda'] / MIB:.0f} |"
        lines.append(line)
    n = rows[0]["G"]["n_params"] + rows[0]["D"]["n_params"]
    lines += ["", f"G + D: {n / 1e6:.1f} M parameters (fp32). ZeRO keeps an fp32 master copy of each rank's "
              "partition even for fp32 weights; its win is the Adam moments (and, at stage 2, the gradients) "
              "divided by the number of ranks. Gradients are as held after the backward: ZeRO-1 holds full gradients "
              "during its backward (reduced at the end), ZeRO-2 only a bucket at a time, so ZeRO-2's peak is the lower (reduce_bucket_size: 10 M elements in cartoon_stylegan/training/deepspeed_presets/zero2.json)."]
    table = "\n".join(lines)
    print(table)
    out = args.out or REPO / "benchmarks" / "results" / (
        f"deepspeed-memory-{'cuda' if torch.cuda.is_available() else 'cpu'}.md")
    out.write_text(table + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-main":
        rank_main(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
