"""``python -m pipeline generate``: images from a trained generator (source, variant, or the two layer-swapped)."""
from __future__ import annotations

from pipeline.artifacts import write_json
from pipeline.registry import Command
from stages.use.trained import UseError, check_out, check_use_args, load_sampler, parse_seeds


def _generate_arguments(p) -> None:
    p.add_argument("--variant", default="source",
                   help="source, or a fine-tuned variant (its name, or NAME-seedK when trained with several seeds)")
    p.add_argument("--swap-res", type=int, default=None,
                   help="weight swap: the source's layers up to this resolution, the variant's above")
    p.add_argument("--seeds", default="0-15", help="latent seeds, e.g. 0-15 or 1,5,9 (default %(default)s)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi, 0..1 (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass")
    p.add_argument("--out", required=True, help="folder for the images, grid.png and generate.json")


def run_generate(reg, cfg, args) -> int:
    import torch
    from tqdm.auto import tqdm

    from cartoon_stylegan.imageutil import save_png, tile_images, to_uint8
    from cartoon_stylegan.sampling import seed_latents
    from stages.models import device

    try:
        check_use_args(args, "generate")
        if args.batch < 1:
            raise UseError("--batch: at least 1")
        seeds = parse_seeds(args.seeds)
        out = check_out(args.out)
        dev = device()
        sampler, network = load_sampler(cfg, args.variant, swap_res=args.swap_res, truncation=args.truncation,
                                        device=dev)
    except UseError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 2
    files, images = [], []
    with torch.no_grad():
        bar = tqdm(total=len(seeds), unit="img", desc=f"generate {args.variant}")
        for i in range(0, len(seeds), args.batch):
            chunk = seeds[i:i + args.batch]
            z = seed_latents(chunk, sampler.style_dim, dev)
            img = to_uint8(sampler(z, noise_mode="const").float())
            img = img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img
            for s, a in zip(chunk, img):
                files.append(save_png(a.permute(1, 2, 0).cpu().numpy(), out / f"seed{s:05d}.png").name)
            images.append(img.cpu())
            bar.update(len(chunk))
        bar.close()
    allimg = torch.cat(images)
    cols = min(len(seeds), 8)
    grid = save_png(tile_images(allimg, cols), out / "grid.png")
    record = {"command": "generate", "experiment": cfg.experiment, "variant": args.variant, "swap_res": args.swap_res,
              "seeds": seeds, "truncation": args.truncation, "noise": "const", "network": str(network),
              "images": files, "grid": grid.name, "grid_cols": cols}
    write_json(out / "generate.json", record)
    print(f"{len(files)} images and {grid} from {args.variant}"
          + (f" swapped at {args.swap_res} px" if args.swap_res else "") + f" ({network})")
    return 0


COMMANDS = [
    Command("generate", "Images from a trained generator: the source, a fine-tuned variant, or the two layer-swapped "
            "(one PNG per seed, grid.png, generate.json).", _generate_arguments, run_generate),
]
