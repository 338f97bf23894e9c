"""``python -m pipeline cartoonize PHOTO``: each face of a photo, aligned, projected into the source generator
and drawn by a fine-tuned variant."""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.artifacts import write_json
from pipeline.registry import Command
from stages.use.trained import UseError, check_out, load_sampler


def _cartoonize_arguments(p) -> None:
    p.usage = "python -m pipeline cartoonize PHOTO [PHOTO ...] --variant NAME --out DIR [options] [KEY=VALUE ...]"
    p.add_argument("--variant", required=True, help="the fine-tuned variant that draws the cartoon (NAME or NAME-seedK)")
    p.add_argument("--swap-res", type=int, default=None, help="draw with the source's layers up to this resolution")
    p.add_argument("--steps", type=int, default=200, help="projection steps: more is closer to the photo (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="projection learning rate, > 0 (default %(default)s)")
    p.add_argument("--crop", choices=("face", "center"), default="face",
                   help="face (default): every face found, aligned as FFHQ's faces were (needs the faces extra); "
                        "center: the largest centred square")
    p.add_argument("--box", default=None, help="crop box x,y,w,h inside the photo, as shown (EXIF orientation applied); "
                        "wins over --crop")
    p.add_argument("--out", required=True, help="folder: per face the crop, reconstruction, cartoon and a strip")


def run_cartoonize(reg, cfg, args) -> int:
    import sys

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from cartoon_stylegan.imageutil import save_png, tile_images, to_uint8
    from cartoon_stylegan.photo import PhotoError, photo_squares, read_photo
    from cartoon_stylegan.project import project
    from stages.paths import StagePaths
    from stages.models import device, load_weights, source_path

    photos = args.names  # the positional arguments that are not KEY=VALUE overrides
    try:
        if not photos:
            raise UseError("give at least one PHOTO")
        if not 1 <= args.steps <= 100_000:
            raise UseError(f"--steps {args.steps}: 1..100000")
        if not (math.isfinite(args.lr) and args.lr > 0):
            raise UseError(f"--lr {args.lr}: expected a positive number (default 0.1)")
        box = None
        if args.box:
            try:
                box = tuple(int(v) for v in args.box.split(","))
                assert len(box) == 4 and box[2] > 0 and box[3] > 0
            except (ValueError, AssertionError):
                raise UseError(f"--box {args.box!r}: expected x,y,w,h (pixels, w and h > 0)") from None
        res = cfg.data.resolution
        crops, sources = [], []  # one square per face (or per photo with --box / --crop center)
        for ph in photos:
            try:
                squares = photo_squares(read_photo(ph), res, crop=args.crop, box=box, name=ph)
            except PhotoError as e:
                raise UseError(str(e)) from None
            for k, (sq, how) in enumerate(squares):
                crops.append(sq)
                sources.append((ph, k if len(squares) > 1 else None, how))
        out = check_out(args.out)
        dev = device()
        if args.variant == "source":
            raise UseError("--variant: name a fine-tuned variant (the source draws the reconstruction)")
        target, network = load_sampler(cfg, args.variant, swap_res=args.swap_res, truncation=1.0, device=dev)
        src_file, fmt = source_path(cfg, StagePaths(cfg, "finetune"))
        try:
            nets = load_weights(cfg, src_file, fmt)
        except (ValueError, OSError, RuntimeError) as e:
            raise UseError(str(e).splitlines()[0]) from None
        if nets.get("d") is None:
            raise UseError(f"{src_file} holds no discriminator: the projection's perceptual term needs the source's D")
    except UseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    G_src = nets["g_ema"].eval().requires_grad_(False).to(dev)
    D_src = nets["d"].eval().requires_grad_(False).to(dev)
    x = torch.from_numpy(np.stack([np.asarray(c) for c in crops])).permute(0, 3, 1, 2).float() / 127.5 - 1
    bar = tqdm(total=args.steps, unit="step", desc=f"projecting {len(crops)} face(s) of {len(photos)} photo(s)")

    def progress(step, rec):
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix_str(f"pixel mse {rec['pixel_mse']:.4f} feature mse {rec['feature_mse']:.4f}", refresh=False)
    wplus, history = project(G_src, D_src, x.to(dev), steps=args.steps, lr=args.lr, progress=progress)
    bar.close()
    with torch.no_grad():
        recon = to_uint8(G_src(wplus, input_is="wplus", noise_mode="const").float()).cpu()
        cartoon = to_uint8(target.G(wplus, input_is="wplus", noise_mode="const").float()).cpu()
    crop_u8 = to_uint8(x)
    results = []
    for i, (ph, face, how) in enumerate(sources):
        stem = f"{i:02d}-{Path(ph).stem[:40]}" + (f"-face{face + 1}" if face is not None else "")
        files = {}
        for kind, img in (("crop", crop_u8[i]), ("reconstruction", recon[i]), ("cartoon", cartoon[i])):
            files[kind] = save_png(img.permute(1, 2, 0).numpy(), out / f"{stem}-{kind}.png").name
        files["strip"] = save_png(tile_images(torch.stack([crop_u8[i], recon[i], cartoon[i]]), 3),
                                  out / f"{stem}-strip.png").name
        err = float(((recon[i].float() - crop_u8[i].float()) / 127.5).pow(2).mean())
        psnr = 10 * math.log10(4.0 / max(err, 1e-12))  # images in [-1, 1]: peak-to-peak 2
        results.append({"photo": str(ph), "face": face, "crop": how, "files": files,
                        "reconstruction_mse": round(err, 6), "reconstruction_psnr_db": round(psnr, 2)})
    record = {"command": "cartoonize", "experiment": cfg.experiment, "variant": args.variant,
              "swap_res": args.swap_res, "network": str(network), "source": str(src_file), "steps": args.steps,
              "lr": args.lr, "box": box, "crop_mode": "box" if box else args.crop, "perceptual": "source discriminator features + pixel MSE",
              "photos": results, "history": history[::max(1, args.steps // 100)] + history[-1:]}
    write_json(out / "cartoonize.json", record)
    first, last = history[0]["pixel_mse"], history[-1]["pixel_mse"]
    print(f"{len(crops)} face(s) of {len(photos)} photo(s) -> {out}: pixel MSE {first:.4f} -> {last:.4f} over {args.steps} steps")
    return 0


COMMANDS = [
    Command("cartoonize", "Turn photos into cartoons: crop, project into the source generator's W+ (perceptual loss "
            "from the source discriminator, no download), draw the same W+ with the fine-tuned variant.",
            _cartoonize_arguments, run_cartoonize),
]
