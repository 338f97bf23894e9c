"""CPU speed of the reference ops against a naive rosinality-style formulation.

    python benchmarks/ops_cpu.py [--threads 1] [--reps 20] [--batch 32] [--channels 64] [--sizes 16 32]

For each case it checks that both give the same output, then prints the best-of-`reps`
wall time of forward, and of forward + backward (grad of ones), in milliseconds. The
naive version below is the well-known portable fallback: reshape every channel into its
own single-channel image, zero-insert by view + pad, pad, crop, run one full 2-D
convolution over the N*C images, stride-slice, reshape back.
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

from cartoon_stylegan.ops import fused_bias_act, setup_filter, upfirdn2d


def naive_upfirdn2d(x, k, up=1, down=1, pad=(0, 0, 0, 0)):
    """Pad + reshape + single-channel full 2-D convolution (k: 2-D filter, true convolution)."""
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    kh, kw = k.shape
    out = x.reshape(n * c, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1])
    out = out.reshape(n * c, 1, h * up, w * up)
    out = F.pad(out, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    out = out[:, :, max(-py0, 0):out.shape[2] - max(-py1, 0), max(-px0, 0):out.shape[3] - max(-px1, 0)]
    out = F.conv2d(out, k.flip([0, 1]).reshape(1, 1, kh, kw).to(x.dtype))
    out = out[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[2], out.shape[3])


def naive_bias_lrelu(x, b, alpha=0.2, gain=math.sqrt(2)):
    return F.leaky_relu(x + b.reshape(1, -1, 1, 1), alpha) * gain


def best_ms(fn, args, reps, backward):
    times, grad = [], None
    for i in range(reps + 2):  # two warm-up runs
        t0 = time.perf_counter()
        y = fn(*args)
        if backward:
            grad = torch.ones_like(y) if grad is None else grad
            y.backward(grad)
        if i >= 2:
            times.append(time.perf_counter() - t0)
        for a in args:
            a.grad = None
    return 1e3 * min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    f = setup_filter([1, 3, 3, 1])  # 4x4, normalised: StyleGAN2's blur kernel
    k_up = f * 4
    cases = {  # name: (ours, naive) as functions of x
        "up2 (upsample2d)": (lambda x: upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4),
                             lambda x: naive_upfirdn2d(x, k_up, up=2, pad=(2, 1, 2, 1))),
        "down2 (downsample2d)": (lambda x: upfirdn2d(x, f, down=2, padding=1),
                                 lambda x: naive_upfirdn2d(x, f, down=2, pad=(1, 1, 1, 1))),
        "blur pad 2,2 (D conv)": (lambda x: upfirdn2d(x, f, padding=2),
                                  lambda x: naive_upfirdn2d(x, f, pad=(2, 2, 2, 2))),
        "blur pad 1,1 (G up conv)": (lambda x: upfirdn2d(x, f, padding=1),
                                     lambda x: naive_upfirdn2d(x, f, pad=(1, 1, 1, 1))),
        "blur pad 2,1 (filter2d)": (lambda x: upfirdn2d(x, f, padding=(2, 1, 2, 1)),
                                    lambda x: naive_upfirdn2d(x, f, pad=(2, 1, 2, 1))),
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), N={args.batch} C={args.channels}, "
          f"best of {args.reps}, ms")
    print(f"| {'op':26s} | {'H':>3s} | {'ours fwd':>8s} | {'naive fwd':>9s} | {'ours f+b':>8s} | "
          f"{'naive f+b':>9s} | {'speed-up f+b':>12s} |")
    print(f"|{'-' * 28}|{'-' * 5}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 11}|{'-' * 14}|")
    for h in args.sizes:
        x = torch.randn(args.batch, args.channels, h, h, requires_grad=True)
        rows = list(cases.items())
        b = torch.randn(args.channels, requires_grad=True)
        rows.append(("fused_bias_act lrelu", (lambda x: fused_bias_act(x, b), lambda x: naive_bias_lrelu(x, b))))
        for name, (ours, naive) in rows:
            with torch.no_grad():
                torch.testing.assert_close(ours(x), naive(x), rtol=1e-5, atol=1e-6)
            t = [best_ms(fn, (x,), args.reps, bwd) for bwd in (False, True) for fn in (ours, naive)]
            print(f"| {name:26s} | {h:3d} | {t[0]:8.2f} | {t[1]:9.2f} | {t[2]:8.2f} | {t[3]:9.2f} | "
                  f"{t[3] / t[2]:11.1f}x |")


if __name__ == "__main__":
    main()
