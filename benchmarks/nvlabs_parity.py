"""Imported NVlabs networks vs NVlabs' own code: same images, same logits.

Needs a checkout of NVlabs' stylegan2-ada-pytorch (or stylegan3, whose networks_stylegan2.py
has the same classes), which this repository does not contain:

    python benchmarks/nvlabs_parity.py --repo /path/to/stylegan2-ada-pytorch [--out results.md]

For each size it builds their Generator and Discriminator with random weights (biases, noise
strengths and w_avg randomised too, so that every term counts), pickles them exactly as their
training loop does (``pickle.dump`` of ``{"G", "D", "G_ema", ...}``), imports the file with
``cartoon_stylegan.checkpoint.nvlabs.import_nvlabs`` (which runs none of it), and compares, on the CPU in
float32 with NVlabs' reference ops (``force_fp32=True``, ``noise_mode='const'``):

- their ``G(z, None, truncation_psi)`` with our ``Sampler(g_ema, truncation=psi)(z, noise_mode="const")``;
- their ``D(img, None)`` with our ``d(img)``;
- the naive float64 reading of their arithmetic in tests/interop/nvlabs_reference.py with their output.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = [  # (resolution, w_dim, mapping layers, channel_base, channel_max, batch)
    (32, 64, 2, 16384 * 2, 64, 4),
    (64, 128, 4, 16384, 128, 4),
    (256, 512, 8, 32768, 512, 2),  # config-f at 256 px, as stylegan2-ada-pytorch's --cfg=stylegan2
]


def randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("resample_filter"):
                continue
            if name.endswith("noise_strength") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name.endswith("affine.bias") else 0.0))
            elif name.endswith("w_avg"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)


def _load_reference():
    import importlib.util

    spec = importlib.util.spec_from_file_location("nvlabs_reference",
                                                  os.path.join(ROOT, "tests", "interop", "nvlabs_reference.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, help="checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--sizes", default="32,64,256", help="resolutions to check (default %(default)s)")
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.repo))
    from training import networks  # their code, from their checkout

    from cartoon_stylegan.checkpoint.nvlabs import import_nvlabs
    from cartoon_stylegan.sampling import Sampler
    ref = _load_reference()

    torch.set_grad_enabled(False)
    want = {int(s) for s in args.sizes.split(",")}
    rows = []
    for res, w_dim, n_map, cbase, cmax, batch in SIZES:
        if res not in want:
            continue
        torch.manual_seed(res)
        G = networks.Generator(z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=res, img_channels=3,
                               mapping_kwargs=dict(num_layers=n_map),
                               synthesis_kwargs=dict(channel_base=cbase, channel_max=cmax, num_fp16_res=0,
                                                     conv_clamp=None)).eval()
        D = networks.Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=cbase,
                                   channel_max=cmax, num_fp16_res=0, conv_clamp=None).eval()
        randomise(G, res)
        randomise(D, res + 1)
        buf = io.BytesIO()
        pickle.dump(dict(G=G, D=D, G_ema=G, training_set_kwargs=dict(resolution=res)), buf)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"nvlabs-parity-{res}.pkl")
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        t0 = time.perf_counter()
        nets = import_nvlabs(path)
        t_import = time.perf_counter() - t0
        z = torch.randn(batch, w_dim, generator=torch.Generator().manual_seed(7))
        theirs = G(z, None, truncation_psi=args.psi, noise_mode="const", force_fp32=True)
        ours = Sampler(nets["g_ema"].eval(), truncation=args.psi)(z, noise_mode="const")
        naive = ref.generate({k: v for k, v in G.state_dict().items()}, z.double(), res, n_map, psi=args.psi)
        img = theirs.clamp(-1, 1)
        d_theirs = D(img, None)
        d_ours = nets["d"].eval()(img)
        span = float(theirs.abs().max())
        rows.append((res, w_dim, cmax, batch, t_import, span, float((ours - theirs).abs().max()),
                     float((naive.float() - theirs).abs().max()),
                     int(((ours.clamp(-1, 1) + 1) * 127.5).round().ne(((theirs.clamp(-1, 1) + 1) * 127.5).round())
                         .sum()), float(d_theirs.abs().max()), float((d_ours - d_theirs).abs().max())))
        os.unlink(path)
    from parity_report import report

    report(["px", "w_dim", "ch max", "batch", "import s", "max abs(img)", "ours - theirs", "naive - theirs",
            "uint8 pixels differing", "max abs(D)", "D ours - theirs"],
           [[str(r[0]), str(r[1]), str(r[2]), str(r[3]), f"{r[4]:.2f}", f"{r[5]:.3f}", f"{r[6]:.2e}", f"{r[7]:.2e}",
             str(r[8]), f"{r[9]:.3f}", f"{r[10]:.2e}"] for r in rows],
           title=f"NVlabs import parity (CPU, float32, psi={args.psi}, noise const)",
           command=f"python benchmarks/nvlabs_parity.py --repo <stylegan2-ada-pytorch> --out {args.out}", out=args.out)

if __name__ == "__main__":
    main()
