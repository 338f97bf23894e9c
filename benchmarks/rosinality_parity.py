"""Our rosinality export loaded by rosinality's own ``model.Generator`` / ``Discriminator``: same images,
same logits; and his checkpoint imported by us.

Needs a checkout of rosinality/stylegan2-pytorch, which this repository does not contain:

    python benchmarks/rosinality_parity.py --repo /path/to/stylegan2-pytorch [--out results.md]

His ``op`` package compiles CUDA extensions at import; here ``torch.utils.cpp_extension.load`` is
replaced by a stub while importing it, so his own CPU code paths (``upfirdn2d_native``, the CPU branch
of ``fused_leaky_relu``) run. For each size: our random G (biases, noise strengths randomised) and D
-> ``cartoon_stylegan.checkpoint.export.to_rosinality`` -> ``torch.save`` -> his classes ``load_state_dict(strict=True)``
-> his ``g_ema([z], truncation=psi, truncation_latent=ckpt["latent_avg"], randomize_noise=False)`` vs our
``Sampler(G, truncation=psi)(z, noise_mode="const")``; his D vs ours; then his networks saved as his
train.py does and read back with ``import_rosinality``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = [(32, 512, 8, 2, 4), (256, 512, 8, 2, 2)]  # (px, style_dim, n_mlp, channel_multiplier, batch)


def his_modules(repo):
    import torch.utils.cpp_extension as ext

    real = ext.load
    ext.load = lambda *a, **k: None  # his op/ builds CUDA code at import; the CPU paths need none of it
    sys.path.insert(0, os.path.abspath(repo))
    try:
        import model
    finally:
        ext.load = real
    return model


def randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if "modulation" in name else 0.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, help="checkout of rosinality/stylegan2-pytorch")
    ap.add_argument("--sizes", default="32,256")
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = his_modules(args.repo)

    from cartoon_stylegan.checkpoint import import_rosinality
    from cartoon_stylegan.checkpoint.export import to_rosinality
    from cartoon_stylegan.networks import Discriminator, Generator
    from cartoon_stylegan.sampling import Sampler

    torch.set_grad_enabled(False)
    want = {int(s) for s in args.sizes.split(",")}
    rows = []
    tmp = tempfile.mkdtemp()
    for size, dim, n_mlp, cm, batch in SIZES:
        if size not in want:
            continue
        torch.manual_seed(size)
        G = Generator(size, style_dim=dim, n_mlp=n_mlp, channel_multiplier=cm).eval()
        D = Discriminator(size, channel_multiplier=cm).eval()
        randomise(G, 1)
        randomise(D, 2)
        t0 = time.perf_counter()
        ck = to_rosinality(G, g=G, d=D)
        path = os.path.join(tmp, f"ours-{size}.pt")
        torch.save(ck, path)
        t_export = time.perf_counter() - t0
        loaded = torch.load(path, weights_only=True)  # what his scripts do under torch >= 2.6
        hisG = model.Generator(size, dim, n_mlp, channel_multiplier=cm).eval()
        hisG.load_state_dict(loaded["g_ema"], strict=True)
        hisD = model.Discriminator(size, channel_multiplier=cm).eval()
        hisD.load_state_dict(loaded["d"], strict=True)
        z = torch.randn(batch, dim, generator=torch.Generator().manual_seed(3))
        his_img, _ = hisG([z], truncation=args.psi, truncation_latent=loaded["latent_avg"][None],
                          randomize_noise=False)
        our_img = Sampler(G, truncation=args.psi)(z, noise_mode="const")
        img = his_img.clamp(-1, 1)
        d_his, d_ours = hisD(img), D(img)
        # his train.py checkpoint (args as his argparse.Namespace) read back by us
        back = os.path.join(tmp, f"his-{size}.pt")
        torch.save({"g": hisG.state_dict(), "d": hisD.state_dict(), "g_ema": hisG.state_dict(),
                    "args": argparse.Namespace(size=size, latent=dim, n_mlp=n_mlp, channel_multiplier=cm)}, back)
        nets = import_rosinality(back)
        again = Sampler(nets["g_ema"].eval(), truncation=args.psi)(z, noise_mode="const")
        rows.append((size, dim, cm, batch, t_export, float(his_img.abs().max()), float((our_img - his_img).abs().max()),
                     float(d_his.abs().max()), float((d_ours - d_his).abs().max()),
                     float((again - his_img).abs().max())))
    from parity_report import report

    report(["px", "style_dim", "channel_multiplier", "batch", "export s", "max abs(img)", "ours - his", "max abs(D)",
            "D ours - his", "his file imported - his"],
           [[str(r[0]), str(r[1]), str(r[2]), str(r[3]), f"{r[4]:.2f}", f"{r[5]:.3f}", f"{r[6]:.2e}", f"{r[7]:.3f}",
             f"{r[8]:.2e}", f"{r[9]:.2e}"] for r in rows],
           title=f"rosinality export/import parity (CPU, float32, psi={args.psi}, noise const)",
           command=f"python benchmarks/rosinality_parity.py --repo <stylegan2-pytorch> --out {args.out}", out=args.out)

if __name__ == "__main__":
    main()
