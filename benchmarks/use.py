"""Using a trained model, on this machine: cartoonize seconds per photo and generate images per second.

    python benchmarks/use.py [--config configs/default.yaml] [--variant freezesg] [--steps 200] [KEY=VALUE ...]

Needs a finished experiment (the default one: `python -m pipeline run all`). Times, in this process,
after a warm-up: the projection of one photo (matplotlib's public-domain sample photo grace_hopper.jpg,
centre-cropped) for --steps steps with the source generator and discriminator, then its drawing by the
variant; and generating 256 images in batches of 16 (truncation 0.7, constant noise). Prints a table
and writes benchmarks/results/use-<cpu|cuda>.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--variant", default="freezesg")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import matplotlib
    import numpy as np
    import torch
    from PIL import Image

    from cartoon_stylegan.imageutil import to_uint8
    from cartoon_stylegan.photo import center_crop_square
    from cartoon_stylegan.project import project
    from stages.paths import StagePaths
    from stages import load_config
    from stages.use.trained import load_sampler
    from stages.models import device, load_weights, source_path

    cfg = load_config(args.config, args.overrides)
    dev = device()
    variant, _ = load_sampler(cfg, args.variant, swap_res=None, truncation=0.7, device=dev)
    src_file, fmt = source_path(cfg, StagePaths(cfg, "finetune"))
    nets = load_weights(cfg, src_file, fmt)
    G, D = nets["g_ema"].eval().to(dev), nets["d"].eval().to(dev)
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    crop = center_crop_square(Image.open(photo), cfg.data.resolution)
    x = torch.from_numpy(np.asarray(crop)).permute(2, 0, 1)[None].float().to(dev) / 127.5 - 1

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    project(G, D, x, steps=5)  # warm-up
    sync()
    t0 = time.perf_counter()
    wplus, hist = project(G, D, x, steps=args.steps)
    with torch.no_grad():
        to_uint8(variant.G(wplus, input_is="wplus", noise_mode="const"))
    sync()
    t_toon = time.perf_counter() - t0
    n, batch = 256, 16
    with torch.no_grad():
        variant(torch.randn(batch, variant.style_dim, device=dev), noise_mode="const")  # warm-up
        sync()
        t0 = time.perf_counter()
        for i in range(n // batch):
            z = torch.randn(batch, variant.style_dim, generator=torch.Generator().manual_seed(i)).to(dev)
            to_uint8(variant(z, noise_mode="const")).cpu()
        sync()
        t_gen = time.perf_counter() - t0
    mse = hist[-1]["pixel_mse"]
    psnr = 10 * np.log10(4.0 / mse)  # images in [-1, 1]: peak-to-peak 2
    where = torch.cuda.get_device_name(0) if dev.type == "cuda" else \
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    table = "\n".join([
        f"# Using the model: experiment {cfg.experiment}, {cfg.data.resolution} px, variant {args.variant}", "",
        f"{where}; torch {torch.__version__}; benchmarks/use.py", "",
        "| what | figure |", "|---|---:|",
        f"| cartoonize: seconds per photo ({args.steps} projection steps + drawing) | {t_toon:.2f} |",
        f"| generate: images per second (batches of {batch}) | {n / t_gen:.0f} |",
        f"| projection of grace_hopper.jpg: pixel MSE start -> end | {hist[0]['pixel_mse']:.3f} -> {mse:.3f} |",
        f"| reconstruction PSNR (dB) | {psnr:.1f} |"])
    print(table)
    out = REPO / "benchmarks" / "results" / f"use-{'cuda' if dev.type == 'cuda' else 'cpu'}.md"
    out.write_text(table + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
