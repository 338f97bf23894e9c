"""CUDA kernels vs the reference ops: correctness, speed, and a whole training step.

    python benchmarks/ops.py                      # everything, writes benchmarks/results/ops-<device>.md
    python benchmarks/ops.py --quick              # fewer repetitions, no torch.compile column, 256 px only
    python benchmarks/ops.py --short              # only the rows the speed targets read (below); no checks
    python benchmarks/ops.py --short --list       # the cases it would time (needs no GPU)
    python benchmarks/ops.py --no-train --dtypes fp16 --layouts nchw,nhwc

1. Builds (or loads from the cache) the kernels for this GPU.
2. Checks every kernel against the reference on fresh random inputs: values, first-order
   gradients, second-order gradients (R1-style double backward), gradcheck/gradgradcheck
   in float64; contiguous, channels_last and non-contiguous inputs; odd sizes; every
   dtype; NaN never. Relative error bounds: float64 1e-10, float32 1e-5 (against a
   float64 reference; the float32 reference itself, whose convolutions may run in TF32,
   is listed for scale), float16 5e-3, bfloat16 3e-2.
3. Times forward and forward+backward with CUDA events (median after warm-up) at the
   StyleGAN2 256 px (batch 16) and 1024 px (batch 4) shapes: the kernels (eager and
   under torch.compile) against the reference eager and under torch.compile, with the
   achieved memory bandwidth (ideal bytes / time) next to a measured device-to-device
   copy.
4. Times a whole G+D training step at 256 px, batch 16 (D logistic loss + R1, G
   non-saturating loss), kernels vs reference.

--short times what the targets ask about and nothing else: fused_bias_act (lrelu) against the
measured copy bandwidth, upsample 2x and downsample 2x forward+backward against the eager and the
compiled reference, at 256 px in float32 and bfloat16, NCHW; the correctness checks are left to
`pytest -m gpu tests/ops`, which runs before it in the GPU acceptance run.

Exits with status 2 and a message on a machine without CUDA; status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cartoon_stylegan import ops  # noqa: E402
from cartoon_stylegan.ops import backend, build  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
BLUR = (1.0, 3.0, 3.0, 1.0)
SHORT_CASES = ("G lrelu 256px", "G upsample 128->256px", "D downsample2d 256->128px")  # what the targets read


# ------------------------------------------------------------------------------ CPU-side helpers


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed repetitions first")
    ap.add_argument("--dtypes", default="fp32,fp16", help="comma list of fp32, fp16, bf16 for the timings")
    ap.add_argument("--layouts", default="nchw,nhwc", help="comma list of nchw, nhwc (channels_last)")
    ap.add_argument("--resolutions", default="256,1024", help="comma list of 256, 1024")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile columns")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    ap.add_argument("--train-steps", type=int, default=20, help="timed training steps per implementation")
    ap.add_argument("--quick", action="store_true", help="--reps 10 --warmup 3 --no-compile --resolutions 256")
    ap.add_argument("--short", action="store_true", help="the target rows only: " + ", ".join(SHORT_CASES)
                    + "; fp32 and bf16, NCHW, the compiled reference beside upfirdn2d; no checks, no training step")
    ap.add_argument("--list", action="store_true", help="print the cases that would be timed and exit (no GPU needed)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="directory for ops-<device>.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.no_compile, args.resolutions = 10, 3, True, "256"
        args.train_steps = min(args.train_steps, 5)
    args.cases = None
    if args.short:
        args.reps, args.warmup, args.dtypes, args.layouts, args.resolutions = 20, 5, "fp32,bf16", "nchw", "256"
        args.no_train, args.cases = True, SHORT_CASES
    args.dtypes = _split(args.dtypes, DTYPES, "--dtypes")
    args.layouts = _split(args.layouts, ("nchw", "nhwc"), "--layouts")
    args.resolutions = [int(r) for r in _split(args.resolutions, ("256", "1024"), "--resolutions")]
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be >= 1 and --warmup >= 0")
    return args


def _split(text, allowed, flag):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: {bad or text!r} not in {sorted(allowed)}")
    return items


def format_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub markdown table; numbers right-aligned unless `align` ('l'/'r' per column) says."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) else "l"
                        for i in range(len(headers)))
    def line(vals):
        return "| " + " | ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, align)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in cells])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or math.isnan(v):
            return f"{v:g}"
        if abs(v) < 1e-3:
            return f"{v:.1e}"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


@dataclass
class Case:
    """One timed op at one StyleGAN2 shape."""
    name: str
    op: str                  # "bias_act" | "upfirdn2d"
    shape: tuple             # input (N, C, H, W)
    kwargs: dict = field(default_factory=dict)
    bias: bool = True

    def out_shape(self) -> tuple:
        if self.op == "bias_act":
            return self.shape
        n, c, h, w = self.shape
        up, down = self.kwargs.get("up", 1), self.kwargs.get("down", 1)
        x0, x1, y0, y1 = self.kwargs["padding"]
        return n, c, (h * up + y0 + y1 - 4) // down + 1, (w * up + x0 + x1 - 4) // down + 1

    def ideal_bytes(self, itemsize: int, backward: bool) -> int:
        """Bytes an ideal implementation moves: every input read once, every output written once."""
        n_in, n_out = math.prod(self.shape), math.prod(self.out_shape())
        fwd = n_in + n_out
        if not backward:
            return fwd * itemsize
        if self.op == "bias_act":
            return (fwd + 3 * n_in + (n_in if self.bias else 0)) * itemsize  # dy, y -> dx; dx -> db
        return (fwd + n_out + n_in) * itemsize                              # dy -> dx


def selected_cases(resolution: int, names=None) -> list[Case]:
    return [c for c in stylegan2_cases(resolution) if names is None or c.name in names]


def stylegan2_cases(resolution: int) -> list[Case]:
    """The op calls that dominate a StyleGAN2 (config-f, channel_max 512) step at `resolution`."""
    batch = 16 if resolution <= 256 else 4
    ch = lambda r: int(min(512, 16384 * 2 // r))  # noqa: E731
    r, h = resolution, resolution // 2
    up = dict(up=2, padding=(2, 1, 2, 1))                       # ToRGB skip upsample (rosinality Upsample)
    blur_up = dict(padding=(1, 1, 1, 1))                        # Blur after the stride-2 transposed conv
    blur_down = dict(padding=(2, 2, 2, 2))                      # Blur before the stride-2 3x3 conv (D)
    down = dict(down=2, padding=(1, 1, 1, 1))                   # downsample2d (NVlabs-style)
    return [
        Case(f"G lrelu {r}px", "bias_act", (batch, ch(r), r, r)),
        Case(f"G lrelu {r // 4}px", "bias_act", (batch, ch(r // 4), r // 4, r // 4)),
        Case(f"G blur after up-conv {r}px", "upfirdn2d", (batch, ch(r), r + 1, r + 1), blur_up),
        Case(f"G ToRGB upsample {h}->{r}px", "upfirdn2d", (batch, 3, h, h), up),
        Case(f"G upsample {h}->{r}px", "upfirdn2d", (batch, ch(h), h, h), up),
        Case(f"D blur before down-conv {r}px", "upfirdn2d", (batch, ch(r), r, r), blur_down),
        Case(f"D downsample2d {r}->{h}px", "upfirdn2d", (batch, ch(r), r, r), down),
    ]


# ------------------------------------------------------------------------------ GPU work


def require_cuda() -> None:
    if not torch.cuda.is_available():
        print("benchmarks/ops.py times the CUDA kernels and needs a CUDA GPU; torch.cuda.is_available() is False "
              f"here (torch {torch.__version__}, built for CUDA {torch.version.cuda}). Nothing to do.",
              file=sys.stderr)
        raise SystemExit(2)


def filt(device, scale=1.0):
    k = torch.tensor(BLUR, device=device)
    return torch.outer(k, k) / k.sum() ** 2 * scale


def run_op(case: Case, x, b, f, impl):
    if case.op == "bias_act":
        return ops.fused_bias_act(x, b if case.bias else None, impl=impl)
    return ops.upfirdn2d(x, f, impl=impl, **case.kwargs)


def time_ms(fn: Callable[[], object], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def copy_bandwidth_gbs(warmup: int, reps: int) -> float:
    x = torch.empty(256 * 2**20, dtype=torch.float32, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), warmup, reps)
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------- correctness


@dataclass
class Check:
    name: str        # what is compared, e.g. "upfirdn2d up2 4x4: fp16 value" (the summary groups by it)
    detail: str      # the input it was compared on
    err: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.err <= self.bound  # False for NaN


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def layouts(x: torch.Tensor):
    yield "contiguous", x
    yield "channels_last", x.to(memory_format=torch.channels_last)
    yield "non-contiguous", x.transpose(2, 3).contiguous().transpose(2, 3)[:, :, :, 1:]


def correctness_checks(dev) -> list[Check]:
    torch.manual_seed(0)
    checks: list[Check] = []
    f = filt(dev)
    up_cases = {
        "up2 4x4": dict(up=2, padding=(2, 1, 2, 1), gain=4),
        "down2 4x4": dict(down=2, padding=(1, 1, 1, 1)),
        "blur 4x4": dict(padding=(2, 1, 2, 1)),
        "blur 4x4 pad(2,2)": dict(padding=(2, 2, 2, 2)),
        "up2 sep4": dict(up=2, padding=(2, 1, 2, 1), gain=4, f=torch.tensor(BLUR, device=dev) / 8),
        "up2 sep12 (two-pass)": dict(up=2, padding=(6, 5, 6, 5), f=torch.randn(12, device=dev)),
        "up3 6x6 (general)": dict(up=3, padding=(3, 2, 1, 4), f=torch.randn(6, 6, device=dev)),
        "up2 down2 (general)": dict(up=2, down=2, padding=(1, 2, 2, 1)),
        "crop 3x3 flip": dict(padding=(-1, 2, 0, 1), flip_filter=True, f=torch.randn(3, 3, device=dev)),
    }
    for name, kw in up_cases.items():
        kw = dict(kw)
        ff = kw.pop("f", f)
        for channels in (5, 40):
            base = torch.randn(3, channels, 13, 17, device=dev, dtype=torch.float64)
            for lname, x64 in layouts(base):
                ref = ops.upfirdn2d(x64, ff, impl="ref", **kw)
                for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
                    x = x64.to(dtype)
                    refq = ops.upfirdn2d(x.double(), ff, impl="ref", **kw) if dtype != torch.float64 else ref
                    out = ops.upfirdn2d(x, ff, impl="cuda", **kw)
                    checks.append(Check(f"upfirdn2d {name}: {_dn(dtype)} value", f"C={channels} {lname}",
                                        rel_err(out, refq), TOLERANCE[dtype]))
                # first- and second-order gradients (float32 kernels vs float64 reference)
                xg = x64.float().requires_grad_()
                g = torch.randn(ref.shape, device=dev, dtype=torch.float32, requires_grad=True)
                dx = torch.autograd.grad(ops.upfirdn2d(xg, ff, impl="cuda", **kw), xg, g, create_graph=True)[0]
                xr = x64.detach().requires_grad_()
                gr = g.detach().double().requires_grad_()
                dxr = torch.autograd.grad(ops.upfirdn2d(xr, ff, impl="ref", **kw), xr, gr, create_graph=True)[0]
                checks.append(Check(f"upfirdn2d {name}: fp32 grad", f"C={channels} {lname}", rel_err(dx, dxr), 1e-5))
                d2 = torch.autograd.grad(dx.square().sum(), g)[0]
                d2r = torch.autograd.grad(dxr.square().sum(), gr)[0]
                checks.append(Check(f"upfirdn2d {name}: fp32 grad of grad", f"C={channels} {lname}",
                                    rel_err(d2, d2r), 1e-5))
        # float64 gradcheck / gradgradcheck on a small input
        xs = torch.randn(1, 2, 6, 7, device=dev, dtype=torch.float64, requires_grad=True)
        fn = lambda x: ops.upfirdn2d(x, ff, impl="cuda", **kw)  # noqa: E731
        ok = torch.autograd.gradcheck(fn, (xs,), raise_exception=False) and \
            torch.autograd.gradgradcheck(fn, (xs,), raise_exception=False)
        checks.append(Check(f"upfirdn2d {name}: gradcheck + gradgradcheck", "fp64 1x2x6x7",
                            0.0 if ok else float("inf"), 0.0))

    for act in ("linear", "relu", "lrelu", "tanh", "sigmoid"):
        for clamp in (None, 0.5):
            base = torch.randn(3, 37, 13, 17, device=dev, dtype=torch.float64)
            b64 = torch.randn(37, device=dev, dtype=torch.float64)
            for lname, x64 in layouts(base):
                for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
                    x, b = x64.to(dtype), b64.to(dtype)
                    ref = ops.fused_bias_act(x.double(), b.double(), act=act, clamp=clamp, impl="ref")
                    out = ops.fused_bias_act(x, b, act=act, clamp=clamp, impl="cuda")
                    checks.append(Check(f"bias_act {act}: {_dn(dtype)} value", f"clamp={clamp} {lname}",
                                        rel_err(out, ref), TOLERANCE[dtype]))
                # R1-style: gradient, then the gradient of its squared norm
                res = []
                g64 = torch.randn_like(x64)
                for impl, dtype in (("cuda", torch.float32), ("ref", torch.float64)):
                    x = x64.to(dtype).requires_grad_()
                    b = b64.to(dtype).requires_grad_()
                    g = g64.to(dtype)
                    y = ops.fused_bias_act(x, b, act=act, clamp=clamp, impl=impl)
                    dx, db = torch.autograd.grad(y, (x, b), g, create_graph=True)
                    pen = dx.square().sum() + db.square().sum()
                    d2 = torch.autograd.grad(pen, (x, b), allow_unused=True) if pen.requires_grad else (None, None)
                    res.append([dx, db] + [torch.zeros_like(t) if s is None else s for s, t in zip(d2, (x, b))])
                for what, a, r in zip(("grad x", "grad b", "grad of grad x", "grad of grad b"), *res):
                    checks.append(Check(f"bias_act {act}: fp32 {what}", f"clamp={clamp} {lname}",
                                        rel_err(a, r), 1e-4))
            xs = torch.randn(2, 3, 4, device=dev, dtype=torch.float64, requires_grad=True)
            bs = torch.randn(3, device=dev, dtype=torch.float64, requires_grad=True)
            fn = lambda x, b: ops.fused_bias_act(x, b, act=act, clamp=clamp, impl="cuda")  # noqa: E731
            ok = torch.autograd.gradcheck(fn, (xs, bs), raise_exception=False) and \
                torch.autograd.gradgradcheck(fn, (xs, bs), raise_exception=False)
            checks.append(Check(f"bias_act {act}: gradcheck + gradgradcheck", f"fp64 2x3x4 clamp={clamp}",
                                0.0 if ok else float("inf"), 0.0))

    # For scale: the float32 reference (its convolutions may use TF32) against float64.
    x = torch.randn(3, 40, 33, 35, device=dev, dtype=torch.float64)
    checks.append(Check("for scale: the fp32 reference (cuDNN, TF32 allowed), up2", "3x40x33x35",
                        rel_err(ops.upfirdn2d(x.float(), f, up=2, padding=(2, 1, 2, 1), impl="ref"),
                                ops.upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), impl="ref")), 1e-2))
    return checks


CHECK_HEADERS = ["check", "worst rel. error", "on", "bound", "cases", ""]


def summarize_checks(checks: list[Check]) -> list[list]:
    """One row per check name: its worst case (a NaN counts as worst) and whether all passed."""
    groups: dict[str, list[Check]] = {}
    for c in checks:
        groups.setdefault(c.name, []).append(c)
    rows = []
    for name, cs in groups.items():
        worst = max(cs, key=lambda c: math.inf if math.isnan(c.err) else c.err)
        rows.append([name, worst.err, worst.detail, worst.bound, len(cs), "ok" if all(c.ok for c in cs) else "FAIL"])
    return rows


def _dn(dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


# ---------------------------------------------------------------- op timings


def op_timings(args, copy_gbs) -> list[list]:
    dev = torch.device("cuda")
    rows = []
    for res in args.resolutions:
        for case in selected_cases(res, args.cases):
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                for layout in args.layouts:
                    if layout == "nhwc" and case.shape[1] < 16:
                        continue  # channels_last is not how 3-channel images are stored
                    rows += time_case(case, dtype, dname, layout, dev, args, copy_gbs)
                    torch.cuda.empty_cache()
    return rows


def time_case(case, dtype, dname, layout, dev, args, copy_gbs) -> list[list]:
    x = torch.randn(case.shape, device=dev, dtype=dtype)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(case.shape[1], device=dev, dtype=dtype)
    f = filt(dev, scale=4.0 if case.kwargs.get("up", 1) == 2 else 1.0)
    xg = x.detach().requires_grad_()
    g = torch.randn(case.out_shape(), device=dev, dtype=dtype)
    if layout == "nhwc":
        g = g.to(memory_format=torch.channels_last)

    impls = {"cuda": lambda x_: run_op(case, x_, b, f, "cuda"), "ref": lambda x_: run_op(case, x_, b, f, "ref")}
    if not args.no_compile and not args.short:
        impls["cuda+compile"] = torch.compile(impls["cuda"], dynamic=False)
    if not args.no_compile and (not args.short or case.op == "upfirdn2d"):  # the target compares upfirdn2d only
        impls["ref+compile"] = torch.compile(lambda x_: run_op(case, x_, b, f, "ref"), dynamic=False)

    rows = []
    for backward in (False, True):
        ms = {}
        for name, fn in impls.items():
            if backward:
                def step(fn=fn):
                    torch.autograd.grad(fn(xg), xg, g)
            else:
                def step(fn=fn):
                    with torch.no_grad():
                        fn(x)
            try:
                ms[name] = time_ms(step, args.warmup, args.reps)
            except Exception as e:  # noqa: BLE001 -- a failing column must not sink the table
                print(f"  {case.name} {name}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                ms[name] = float("nan")
        gbs = case.ideal_bytes(x.element_size(), backward) / (ms["cuda"] * 1e-3) / 1e9
        rows.append([
            case.name, "x".join(map(str, case.shape)), dname, layout, "fwd+bwd" if backward else "fwd",
            ms["cuda"], ms.get("cuda+compile"), ms["ref"], ms.get("ref+compile"),
            ms["ref"] / ms["cuda"], (ms["ref+compile"] / ms["cuda"]) if "ref+compile" in ms else None,
            gbs, 100 * gbs / copy_gbs,
        ])
        print("  " + " | ".join(_fmt(v) for v in rows[-1]), flush=True)
    return rows


OP_HEADERS = ["op", "input", "dtype", "layout", "pass", "kernels ms", "kernels+compile ms", "ref ms",
              "ref+compile ms", "x vs ref", "x vs ref+compile", "kernels GB/s", "% of copy"]


# ---------------------------------------------------------------- training step


def training_step_timings(args) -> list[list] | None:
    try:
        from cartoon_stylegan.networks import Discriminator, Generator
        from cartoon_stylegan.training.losses import d_logistic_loss, d_r1_loss, g_nonsaturating_loss
    except ImportError as e:
        print(f"  training step skipped: {e}", file=sys.stderr)
        return None
    dev = torch.device("cuda")
    torch.manual_seed(0)
    G = Generator(256, channel_multiplier=2).to(dev)
    D = Discriminator(256, channel_multiplier=2).to(dev)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    batch = 16
    real = torch.randn(batch, 3, 256, 256, device=dev)
    z = torch.randn(batch, 512, device=dev)

    def step():
        # D: logistic loss + R1 (second order through D's ops), then G: non-saturating.
        G.requires_grad_(False)
        D.requires_grad_(True)
        fake = G(z)
        real_in = real.detach().requires_grad_()
        real_pred = D(real_in)
        loss_d = d_logistic_loss(real_pred, D(fake)) + 5.0 * d_r1_loss(real_pred, real_in)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss_g = g_nonsaturating_loss(D(G(z)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

    rows = []
    old = os.environ.get(backend.ENV_IMPL)
    try:
        for impl in ("cuda", "ref"):
            os.environ[backend.ENV_IMPL] = impl
            ms = time_ms(step, max(3, args.warmup // 2), args.train_steps)
            rows.append([impl, batch, ms, batch / (ms * 1e-3), torch.cuda.max_memory_allocated() / 2**30])
            torch.cuda.reset_peak_memory_stats()
            print("  " + " | ".join(_fmt(v) for v in rows[-1]), flush=True)
    finally:
        if old is None:
            os.environ.pop(backend.ENV_IMPL, None)
        else:
            os.environ[backend.ENV_IMPL] = old
    rows[0].append(rows[1][2] / rows[0][2])
    rows[1].append(1.0)
    return rows


TRAIN_HEADERS = ["ops", "batch", "ms / step", "img / s", "peak GiB", "speed-up"]


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for res in args.resolutions:
            for case in selected_cases(res, args.cases):
                print(f"{case.name}: {case.op} {'x'.join(map(str, case.shape))} {case.kwargs or ''}; "
                      f"{', '.join(args.dtypes)}; {', '.join(args.layouts)}")
        return 0
    require_cuda()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")

    t0 = time.time()
    backend.load_extension(required=True)
    path = build.find_build(build.build_key(), build.device_arches())
    print(f"kernels: {path} (ready in {time.time() - t0:.1f} s)")

    print("checking the kernels against the reference ..." if not args.short else
          "checks left to pytest -m gpu (--short)")
    checks = correctness_checks(dev) if not args.short else []
    failed = [c for c in checks if not c.ok]
    check_rows = summarize_checks(checks)
    print(format_table(CHECK_HEADERS, check_rows))
    print(f"{len(checks) - len(failed)}/{len(checks)} checks passed")
    for c in failed:
        print(f"  FAILED: {c.name} ({c.detail}): {c.err:.3e} > {c.bound:.1e}")

    copy_gbs = copy_bandwidth_gbs(args.warmup, args.reps)
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s")
    print("timing the ops ...")
    op_rows = op_timings(args, copy_gbs)
    train_rows = None
    if not args.no_train:
        print("timing a training step ...")
        train_rows = training_step_timings(args)

    md = [
        f"# Ops benchmark: {name}",
        "",
        f"`python benchmarks/ops.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
        f"{datetime.date.today().isoformat()}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{platform.python_implementation()} {platform.python_version()}. Median of {args.reps} runs after "
        f"{args.warmup} warm-up runs, CUDA events. Device-to-device copy: **{copy_gbs:.0f} GB/s**; "
        "GB/s = ideal bytes (each input read once, each output written once) / time.",
        "",
        "## Correctness",
        "",
        *([f"{len(checks) - len(failed)}/{len(checks)} checks passed (worst case per check below).", "",
           format_table(CHECK_HEADERS, check_rows)] if not args.short else
          ["Not run here (--short): `pytest -m gpu tests/ops` checks the kernels against the reference."]),
        "",
        "## Ops",
        "",
        format_table(OP_HEADERS, op_rows),
    ]
    if train_rows:
        md += ["", "## Training step (256 px, G + D, D loss + R1 every step, G loss)", "",
               format_table(TRAIN_HEADERS, train_rows)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"ops-{device_slug(name)}.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, target)
    print(f"wrote {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
