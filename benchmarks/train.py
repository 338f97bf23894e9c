"""Throughput of one training step (G + D, lazy regularisation amortised) of the GAN loop.

    python benchmarks/train.py [--reps 3] [--skip-256] [--no-peer] [--out PATH]
    python benchmarks/train.py --demo   # the default config's model vs this process's matmul throughput

A step of `cartoon_stylegan.training.loop` is D main (+ R1 every 16 steps) and G main
(+ path length every 4 steps). Three step kinds are timed (best of `--reps` after a
warm-up, the implementations interleaved so that load from other processes hits them
alike): plain, path-length, and R1 + path-length; the amortised step time is

    t = t_plain + (t_pl - t_plain) / pl_every + (t_r1pl - t_pl) / r1_every

and img/s = batch / t, sec/kimg = 1000 * t / batch.

Rows:
  ours                 the loop with the project's networks and ops (default impl)
  rosinality CPU path  the same, with the network's upfirdn2d monkeypatched to the naive
                       portable formulation (reshape every channel to its own image,
                       zero-insert by pad, full 2-D convolution, stride-slice)
  lucidrains peer      `stylegan2_pytorch` (pip, installed with --target into a separate
                       folder, CPU only) at a matched size, stepped with the same losses
                       and lazy-regularisation schedule (its own Trainer needs CUDA)

Configs: tiny (32 px, channel_max 64, style 128, n_mlp 4, batch 32) and 256 px config-f
(channel_max 512, style 512, n_mlp 8, batch 4). On CPU the 256 px config warms up with one
plain step only and skips the naive path (minutes per step) unless --naive-256. On CPU the table goes to
benchmarks/results/train-cpu.md, on CUDA to train-cuda.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accelerate import Accelerator  # noqa: E402

from cartoon_stylegan.networks import Discriminator, Generator  # noqa: E402
from cartoon_stylegan.networks import layers as net_layers  # noqa: E402
from cartoon_stylegan.training import LoopOptions, TrainingLoop  # noqa: E402
from cartoon_stylegan.training.losses import (  # noqa: E402
    d_logistic_loss, d_r1_loss, g_nonsaturating_loss, g_path_regularize)

CONFIGS = {
    "tiny-32": dict(size=32, channel_max=64, style_dim=128, n_mlp=4, batch=32),
    "config-f-256": dict(size=256, channel_max=512, style_dim=512, n_mlp=8, batch=4),
}
R1_EVERY, PL_EVERY = 16, 4


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, reps, device):
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _amortised_interleaved(step_fns, reps, device, warmup=("plain", "pl", "r1pl")):
    """step_fns: {label: step(kind)}. Times every (variant, kind) `reps` times, interleaving the
    variants so that load from other processes hits them alike; returns {label: (t, parts)}."""
    kinds = ("plain", "pl", "r1pl")
    for fn in step_fns.values():  # warm-up
        for kind in warmup:
            fn(kind)
    times = {label: {k: [] for k in kinds} for label in step_fns}
    for _ in range(reps):
        for kind in kinds:
            for label, fn in step_fns.items():
                times[label][kind].append(_time(lambda: fn(kind), 1, device))
    out = {}
    for label in step_fns:
        t = {k: min(v) for k, v in times[label].items()}  # best of reps: least disturbed by other load
        out[label] = (t["plain"] + (t["pl"] - t["plain"]) / PL_EVERY + (t["r1pl"] - t["pl"]) / R1_EVERY, t)
    return out


# ----------------------------------------------------------------------------- ours

def _our_step_fn(cfg, device, accelerator):
    torch.manual_seed(0)
    G = Generator(cfg["size"], style_dim=cfg["style_dim"], n_mlp=cfg["n_mlp"], channel_max=cfg["channel_max"])
    D = Discriminator(cfg["size"], channel_max=cfg["channel_max"])
    batch = cfg["batch"]
    real = torch.rand(batch, 3, cfg["size"], cfg["size"]) * 2 - 1

    def data(start):
        while True:
            yield real

    opts = LoopOptions(kimg=1e6, batch=batch, r1_every=R1_EVERY, pl_every=PL_EVERY)
    loop = TrainingLoop(accelerator, G=G, D=D, G_ema=copy.deepcopy(G), data=data, opts=opts,
                        ckpt_dir=tempfile.mkdtemp(), report=None)
    step_of = {"plain": 1, "pl": PL_EVERY, "r1pl": 0}  # step % every decides the lazy phases

    def step(kind):
        loop.step = step_of[kind]
        figures = loop.train_step()
        torch.stack([v.float() for v in figures.values()]).cpu()  # the loop's per-step sync

    n_params = sum(p.numel() for p in G.parameters()) + sum(p.numel() for p in D.parameters())
    return step, n_params


def _naive_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    """rosinality's portable path: per-channel images, zero-insert, pad, full 2-D conv, slice."""
    up = up if isinstance(up, int) else up[0]
    down = down if isinstance(down, int) else down[0]
    px0, px1, py0, py1 = (padding,) * 4 if isinstance(padding, int) else (
        (padding[0], padding[0], padding[1], padding[1]) if len(padding) == 2 else padding)
    n, c, h, w = x.shape
    k = f if f.ndim == 2 else torch.outer(f, f)
    k = (k * gain).to(x.dtype)
    out = x.reshape(n * c, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1]).reshape(n * c, 1, h * up, w * up)
    out = F.pad(out, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    out = out[:, :, max(-py0, 0):out.shape[2] - max(-py1, 0), max(-px0, 0):out.shape[3] - max(-px1, 0)]
    w_ = k if flip_filter else k.flip([0, 1])
    out = F.conv2d(out, w_.reshape(1, 1, *k.shape))
    out = out[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[2], out.shape[3])


@contextlib.contextmanager
def _naive_ops():
    saved = net_layers.upfirdn2d
    net_layers.upfirdn2d = _naive_upfirdn2d
    try:
        yield
    finally:
        net_layers.upfirdn2d = saved


@torch.no_grad()
def _naive_check(cfg, device):
    """Both upfirdn2d paths must give the same generator output (same weights, const noise)."""
    torch.manual_seed(0)
    G = Generator(cfg["size"], style_dim=cfg["style_dim"], n_mlp=cfg["n_mlp"], channel_max=cfg["channel_max"]).to(device)
    z = torch.randn(2, cfg["style_dim"], device=device)
    ref = G(z, noise_mode="const")
    with _naive_ops():
        naive = G(z, noise_mode="const")
    return (ref - naive).abs().max().item()


# ----------------------------------------------------------------------------- lucidrains peer

def _import_peer(target):
    """Import lucidrains' stylegan2_pytorch from `target` without CUDA or its logging deps."""
    if not Path(target, "stylegan2_pytorch").is_dir():
        return None, f"not installed in {target} (pip install --target {target} stylegan2_pytorch einops kornia kornia_rs --no-deps)"
    sys.path.insert(0, str(target))
    for name in ("aim", "fire", "vector_quantize_pytorch"):  # only used by its CLI/logger/fq layers
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.VectorQuantize = None
            sys.modules[name] = stub
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # it asserts CUDA at import time
    try:
        from stylegan2_pytorch import stylegan2_pytorch as peer
    except Exception as exc:  # noqa: BLE001
        return None, f"import failed: {type(exc).__name__}: {exc}"
    finally:
        torch.cuda.is_available = real
    return peer, None


def _peer_step_fn(peer, cfg, device):
    torch.manual_seed(0)
    size, latent, batch = cfg["size"], cfg["style_dim"], cfg["batch"]
    S = peer.StyleVectorizer(latent, cfg["n_mlp"], lr_mul=0.1).to(device)
    G = peer.Generator(size, latent, network_capacity=16, fmap_max=cfg["channel_max"]).to(device)
    D = peer.Discriminator(size, network_capacity=16, fmap_max=cfg["channel_max"]).to(device)
    opt_g = torch.optim.Adam(list(G.parameters()) + list(S.parameters()), lr=0.002, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=0.002, betas=(0.0, 0.99))
    real = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    n_layers = G.num_layers

    def gen(n):
        w = S(torch.randn(n, latent, device=device))
        styles = w[:, None, :].expand(-1, n_layers, -1)
        noise = torch.rand(n, size, size, 1, device=device)
        return G(styles, noise), styles

    def step(kind):
        with torch.no_grad():
            fake, _ = gen(batch)
        loss_d = d_logistic_loss(D(real)[0], D(fake)[0])
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        if kind == "r1pl":
            x = real.detach().requires_grad_(True)
            r1 = d_r1_loss(D(x)[0], x)
            opt_d.zero_grad(set_to_none=True)
            (r1 * 5 * R1_EVERY).backward()
            opt_d.step()
        for p in D.parameters():
            p.requires_grad_(False)
        img, _ = gen(batch)
        loss_g = g_nonsaturating_loss(D(img)[0])
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)
        if kind in ("pl", "r1pl"):
            img, styles = gen(max(1, batch // 2))
            pen, _, _ = g_path_regularize(img, styles, torch.zeros((), device=device))
            opt_g.zero_grad(set_to_none=True)
            (pen * 2 * PL_EVERY).backward()
            opt_g.step()

    n_params = sum(p.numel() for m in (S, G, D) for p in m.parameters())
    return step, n_params


# ----------------------------------------------------------------------------- the demo model

DEMO = dict(size=32, channel_max=32, style_dim=128, n_mlp=4, batch=16)  # configs/default.yaml's model


def _matmul_gflops(n=2048, reps=3):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b, 1, torch.device("cpu")) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _demo_loop(adam, batch, accelerator, compile=False):
    """The default config's pretrain loop (R1 every 16, no path length, EMA) with Adam's ``adam`` kernel
    (``compile``: the loop's ``compile: true``)."""
    import os

    from cartoon_stylegan.training.freeze import ADAM_KERNEL_ENV

    torch.manual_seed(0)
    G = Generator(DEMO["size"], style_dim=DEMO["style_dim"], n_mlp=DEMO["n_mlp"], channel_max=DEMO["channel_max"],
                  use_noise=False)
    D = Discriminator(DEMO["size"], channel_max=DEMO["channel_max"])
    real = torch.rand(batch, 3, DEMO["size"], DEMO["size"]) * 2 - 1

    def data(start):
        while True:
            yield real

    opts = LoopOptions(kimg=1e6, batch=batch, r1_gamma=0.02, pl_weight=0, lr_g=0.008, lr_d=0.008, ema_kimg=5,
                       compile=compile)
    old = os.environ.get(ADAM_KERNEL_ENV)
    os.environ[ADAM_KERNEL_ENV] = adam
    try:
        loop = TrainingLoop(accelerator, G=G, D=D, G_ema=copy.deepcopy(G), data=data, opts=opts,
                            ckpt_dir=tempfile.mkdtemp(), report=None)
    finally:
        if old is None:
            os.environ.pop(ADAM_KERNEL_ENV)
        else:
            os.environ[ADAM_KERNEL_ENV] = old
    return loop, G, D, real


def _bare_step(G, D, real):
    """G(z) -> D -> non-saturating loss, and D on real and fake: forward + backward through both, no
    optimizer, no regularisation, no EMA: the arithmetic a training step cannot avoid."""
    z = torch.randn(real.shape[0], G.style_dim)

    def step():
        fake = G(z, noise_mode="none")
        loss = F.softplus(-D(fake)).mean() + F.softplus(D(real)).mean() + F.softplus(D(fake.detach())).mean()
        loss.backward()
        for p in list(G.parameters()) + list(D.parameters()):
            p.grad = None
    return step


def demo_ratio(reps, accelerator, note=""):
    """The default model's step as a fraction of this process's float32 matmul throughput: the bare
    forward/backward, the full loop with torch's per-tensor Adam loop (the CPU default) and with fused
    Adam, at batch 32, and with ``compile: true``; the full loop against the bare step."""
    from torch.utils.flop_counter import FlopCounterMode

    kinds = {"loop Adam, batch 16": ("loop", 16, False), "fused Adam, batch 16": ("fused", 16, False),
             "fused Adam, batch 32": ("fused", 32, False), "fused Adam, batch 16, compile: true": ("fused", 16, True)}
    loops = {name: _demo_loop(adam, b, accelerator, compile=c) for name, (adam, b, c) in kinds.items()}
    bares = {b: _bare_step(*_demo_loop("fused", b, accelerator)[1:]) for b in (16, 32)}
    bare_flop = {}
    for b, fn in bares.items():
        with FlopCounterMode(display=False) as fc:
            fn()
        bare_flop[b] = fc.get_total_flops()
    bare = bares[16]

    def loop_step(loop, r1):
        loop.step = 0 if r1 else 1
        figures = loop.train_step()
        torch.stack([v.float() for v in figures.values()]).cpu()

    first = {}
    for _ in range(2):  # warm-up (the compiled loop compiles its graphs here)
        bare()
        for name, (loop, *_rest) in loops.items():
            t0 = time.perf_counter()
            loop_step(loop, False)
            loop_step(loop, True)
            first.setdefault(name, time.perf_counter() - t0)
    t = {"matmul": [], "bare": []} | {name: ([], []) for name in loops}
    for _ in range(reps):  # interleaved: load from elsewhere hits every row alike
        t["matmul"].append(2 * 2048 ** 3 / _matmul_gflops(reps=1) / 1e9)
        t["bare"].append(_time(bare, 3, torch.device("cpu")))
        for name, (loop, *_rest) in loops.items():
            t[name][0].append(_time(lambda: loop_step(loop, False), 3, torch.device("cpu")))
            t[name][1].append(_time(lambda: loop_step(loop, True), 1, torch.device("cpu")))
    mm = 2 * 2048 ** 3 / min(t["matmul"]) / 1e9
    tb = min(t["bare"])
    rows = [("bare G+D forward/backward, batch 16", bare_flop[16], tb, 16)]
    for name, (plain, r1) in ((n, t[n]) for n in loops):
        step = min(plain) + (min(r1) - min(plain)) / 16
        b = kinds[name][1]
        rows.append((f"training loop step ({name}; R1/16, EMA)", bare_flop[b], step, b))
    lines = [f"float32 matmul 2048^2 in this process: {mm:.0f} GFLOP/s ({torch.get_num_threads()} threads). {note}",
             "", "GFLOP: the bare forward/backward's count (torch.utils.flop_counter) for the batch, so a loop row's "
             "GFLOP/s is the useful arithmetic rate (its R1, EMA, Adam and bookkeeping count as time only).",
             "", "| step | GFLOP | ms | img/s | GFLOP/s | of matmul |", "|---|---:|---:|---:|---:|---:|"]
    for label, fl, sec, b in rows:
        lines.append(f"| {label} | {fl / 1e9:.2f} | {sec * 1e3:.1f} | {b / sec:.1f} | {fl / sec / 1e9:.1f} | "
                     f"{fl / sec / 1e9 / mm:.0%} |")
    base = rows[1][2]
    lines += ["", f"- fused Adam: {rows[1][2] / rows[2][2]:.2f}x the loop's steps/s at batch 16; the full loop step "
              f"(fused, batch 16) is {rows[2][2] / tb:.2f}x the bare step's time",
              f"- batch 32 (fused): {rows[3][3] / rows[3][2] / (16 / base):.2f}x the img/s of batch 16 with the loop Adam",
              f"- compile: true (fused, batch 16): {rows[2][2] / rows[4][2]:.2f}x the steps/s of the same loop eager; "
              f"its first two steps took {first['fused Adam, batch 16, compile: true']:.0f} s (the compile) against "
              f"{first['fused Adam, batch 16']:.1f} s eager"]
    text = "\n".join(lines)
    print(text)
    return text


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per step kind (best of)")
    ap.add_argument("--reps-256", type=int, default=1, help="repetitions at 256 px")
    ap.add_argument("--skip-256", action="store_true", help="only the tiny config")
    ap.add_argument("--no-peer", action="store_true", help="skip the lucidrains peer")
    ap.add_argument("--no-naive", action="store_true", help="skip the rosinality CPU path rows")
    ap.add_argument("--naive-256", action="store_true", help="on CPU also run the naive path at 256 px (slow)")
    ap.add_argument("--peer-dir", default="/tmp/peer", help="folder stylegan2_pytorch was pip-installed into")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is present")
    ap.add_argument("--note", default="", help="free text for the table header (e.g. machine load)")
    ap.add_argument("--out", default=None, help="markdown table path (default benchmarks/results/train-<dev>.md)")
    ap.add_argument("--demo", action="store_true",
                    help="only the default config's model: step GFLOP/s / matmul GFLOP/s, before/after "
                         "(writes benchmarks/results/train-demo-cpu.md)")
    args = ap.parse_args()

    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    if args.demo:
        text = demo_ratio(args.reps, accelerator, args.note)
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "train-demo-cpu.md"
        out.write_text(f"# The default model's training step vs matmul throughput\n\n`python benchmarks/train.py "
                       f"--demo` on {platform.processor() or 'cpu'}, torch {torch.__version__}, "
                       f"{time.strftime('%Y-%m-%d')}.\n\n{text}\n")
        print(f"wrote {out}")
        return
    device = accelerator.device
    on_cpu = device.type == "cpu"
    rows, notes = [], []

    peer = None
    if on_cpu and not args.no_peer:
        peer, why = _import_peer(args.peer_dir)
        if peer is None:
            notes.append(f"lucidrains peer skipped: {why}")

    for name, cfg in CONFIGS.items():
        if args.skip_256 and cfg["size"] == 256:
            continue
        reps = args.reps_256 if cfg["size"] == 256 else args.reps
        fns, params = {}, {}
        fns["ours"], params["ours"] = _our_step_fn(cfg, device, accelerator)
        big = cfg["size"] >= 256
        if big and on_cpu and not args.naive_256:
            notes.append(f"{name}: the naive path and the peer are not run at 256 px on CPU (minutes per step); "
                         "--naive-256 adds the naive path")
        if not args.no_naive and (not big or not on_cpu or args.naive_256):
            notes.append(f"{name}: generator output, naive vs our upfirdn2d: max |diff| = {_naive_check(cfg, device):.1e}")
            label = "rosinality CPU path (naive upfirdn2d)"
            step, params[label] = _our_step_fn(cfg, device, accelerator)

            def naive_step(kind, step=step):
                with _naive_ops():
                    step(kind)
            fns[label] = naive_step
        if peer is not None and cfg["size"] <= 64:
            label = "lucidrains stylegan2_pytorch 1.9.0"
            fns[label], params[label] = _peer_step_fn(peer, cfg, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = _amortised_interleaved(fns, reps, device, warmup=("plain",) if big and on_cpu else
                                         ("plain", "pl", "r1pl"))
        mem = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else float("nan")
        for label, (t, parts) in results.items():
            row = dict(config=name, impl=label, batch=cfg["batch"], params=params[label], img_s=cfg["batch"] / t,
                       sec_kimg=1000 * t / cfg["batch"], plain=parts["plain"], pl=parts["pl"], r1pl=parts["r1pl"],
                       mem=mem)
            rows.append(row)
            print(f"{name:13s} {label:40s} {row['img_s']:9.2f} img/s {row['sec_kimg']:10.1f} s/kimg "
                  f"(plain {parts['plain']*1e3:.0f} ms, +pl {parts['pl']*1e3:.0f} ms, +r1+pl {parts['r1pl']*1e3:.0f} ms)",
                  flush=True)
        del fns

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [
        f"# Training-step throughput ({device.type})",
        "",
        f"`python benchmarks/train.py` on {dev_name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}. {args.note} One step = D main + G main, "
        f"R1 every {R1_EVERY} and path length every {PL_EVERY} steps amortised (best of the timed repetitions of each step kind, implementations interleaved).",
        "",
        "| config | implementation | batch | params (G+D) | img/s | sec/kimg | plain step ms | +PL ms | +R1+PL ms |"
        + (" peak MiB |" if device.type == "cuda" else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if device.type == "cuda" else ""),
    ]
    for r in rows:
        lines.append(f"| {r['config']} | {r['impl']} | {r['batch']} | {r['params']/1e6:.2f} M | {r['img_s']:.2f} | "
                     f"{r['sec_kimg']:.1f} | {r['plain']*1e3:.0f} | {r['pl']*1e3:.0f} | {r['r1pl']*1e3:.0f} |"
                     + (f" {r['mem']:.0f} |" if device.type == "cuda" else ""))
    for cfg_name in CONFIGS:
        ours = [r for r in rows if r["config"] == cfg_name and r["impl"] == "ours"]
        for r in rows:
            if r["config"] == cfg_name and r["impl"] != "ours" and ours:
                notes.append(f"{cfg_name}: ours is {ours[0]['img_s'] / r['img_s']:.2f}x the img/s of {r['impl']}")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "The peer is stepped with our losses and schedule on its own networks (network_capacity 16, "
              "fmap_max = channel_max, its mapping depth = n_mlp); its parameter count differs, see the table."]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train-{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
