"""``python -m pipeline sefa`` and ``mix``: SeFa directions and style mixing on a trained generator."""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import write_json
from pipeline.registry import Command
from stages.use.trained import UseError, check_use_args, load_sampler, parse_seeds, writable_folder


def _png_out(out: str) -> Path:
    p = Path(out)
    if p.suffix.lower() != ".png":
        raise UseError(f"--out {out}: give a .png file (a JSON of what was done goes beside it)")
    if p.exists() and p.is_dir():
        raise UseError(f"--out {out}: is a folder; give a .png file")
    writable_folder(p.parent, out)
    return p


def _write_record(png: Path, record: dict) -> Path:
    return write_json(png.with_suffix(".json"), record)


def _common_model_args(p, seeds: str) -> None:
    p.add_argument("--variant", default="source", help="source, or a fine-tuned variant (NAME or NAME-seedK)")
    p.add_argument("--seeds", default=seeds, help="latent seeds, e.g. 0-3 or 1,5 (default %(default)s)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi, 0..1 (default %(default)s)")
    p.add_argument("--out", required=True, help="the grid PNG (a JSON of what was done is written beside it)")


def _sefa_arguments(p) -> None:
    _common_model_args(p, "0-3")
    p.add_argument("--components", type=int, default=5, help="top-K directions, one row each (default %(default)s)")
    p.add_argument("--strength", type=float, default=3.0, help="columns at -S, 0, +S along each direction")
    p.add_argument("--directions-from", choices=("variant", "source"), default="variant",
                   help="whose style-modulation weights are factorised (default: the variant's)")


def run_sefa(reg, cfg, args) -> int:
    import sys

    import torch

    from cartoon_stylegan.edit import sefa_directions, sefa_edit
    from cartoon_stylegan.imageutil import save_png, tile_images, to_uint8
    from cartoon_stylegan.sampling import seed_latents
    from stages.models import device

    try:
        check_use_args(args, "sefa")
        if not 1 <= args.components <= 64:
            raise UseError(f"--components {args.components}: 1..64")
        seeds = parse_seeds(args.seeds)
        png = _png_out(args.out)
        dev = device()
        target, network = load_sampler(cfg, args.variant, swap_res=None, truncation=args.truncation, device=dev)
        source = None if args.variant == "source" else load_sampler(cfg, "source", swap_res=None,
                                                                      truncation=args.truncation, device=dev)[0]
    except UseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    G_dirs = (source or target).G if args.directions_from == "source" else target.G
    vals, dirs = sefa_directions(G_dirs, args.components)
    strengths = [-args.strength, 0.0, args.strength]
    z = seed_latents(seeds, target.style_dim, dev)
    rows, labels = [], []
    for k in range(dirs.shape[0]):
        for name, s in (("source", source), (args.variant, target)):
            if s is None:
                continue
            img = sefa_edit(s, z, dirs[k], strengths)  # strength-major: (3 * N)
            img = img.view(len(strengths), len(seeds), *img.shape[1:]).transpose(0, 1).reshape(-1, *img.shape[1:])
            rows.append(to_uint8(img.float()).cpu())
            labels.append(f"direction {k} on {name}")
    grid = torch.cat(rows)
    save_png(tile_images(grid.expand(-1, 3, -1, -1) if grid.shape[1] == 1 else grid, len(seeds) * len(strengths)), png)
    rec = _write_record(png, {
        "command": "sefa", "experiment": cfg.experiment, "variant": args.variant, "network": str(network),
        "directions_from": args.directions_from, "eigenvalues": [round(float(v), 6) for v in vals],
        "directions": [[round(float(x), 7) for x in d] for d in dirs], "strengths": strengths, "seeds": seeds,
        "truncation": args.truncation, "rows": labels,
        "layout": "row per (direction, generator); per seed the columns -S, 0, +S"})
    print(f"{png}: {dirs.shape[0]} directions x {len(seeds)} seeds"
          + (" on the source and " + args.variant if source is not None else "") + f"; {rec}")
    return 0


def _mix_arguments(p) -> None:
    _common_model_args(p, "0-3")
    p.add_argument("--cols", default="4-7", help="seeds of the columns: their fine styles (default %(default)s)")
    p.add_argument("--crossover", type=int, default=None,
                   help="W+ index where the columns' styles start (default: half the W+ length)")


def run_mix(reg, cfg, args) -> int:
    import sys

    import torch

    from cartoon_stylegan.edit import style_mix
    from cartoon_stylegan.imageutil import save_png, tile_images, to_uint8
    from cartoon_stylegan.sampling import seed_latents
    from stages.models import device

    try:
        check_use_args(args, "mix")
        rows_s, cols_s = parse_seeds(args.seeds), parse_seeds(args.cols, "--cols")
        png = _png_out(args.out)
        dev = device()
        sampler, network = load_sampler(cfg, args.variant, swap_res=None, truncation=args.truncation, device=dev)
        n = sampler.G.n_latent
        cross = args.crossover if args.crossover is not None else n // 2
        if not 1 <= cross < n:
            raise UseError(f"--crossover {cross}: 1..{n - 1} (W+ has {n} entries at this resolution)")
    except UseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with torch.no_grad():
        zr, zc = seed_latents(rows_s, sampler.style_dim, dev), seed_latents(cols_s, sampler.style_dim, dev)
        row_img = to_uint8(sampler(zr, noise_mode="const").float()).cpu()
        col_img = to_uint8(sampler(zc, noise_mode="const").float()).cpu()
        mixed = to_uint8(style_mix(sampler, zr, zc, cross).float()).cpu()
    blank = torch.zeros_like(row_img[:1])
    cells = [blank, col_img]
    for r in range(len(rows_s)):
        cells += [row_img[r:r + 1], mixed[r * len(cols_s):(r + 1) * len(cols_s)]]
    grid = torch.cat(cells)
    save_png(tile_images(grid.expand(-1, 3, -1, -1) if grid.shape[1] == 1 else grid, len(cols_s) + 1), png)
    rec = _write_record(png, {"command": "mix", "experiment": cfg.experiment, "variant": args.variant,
                              "network": str(network), "rows": rows_s, "cols": cols_s, "crossover": cross,
                              "truncation": args.truncation,
                              "layout": "top row: the columns' images; left column: the rows'; cell (r, c): "
                                        "W+ [0, crossover) from row r, the rest from column c"})
    print(f"{png}: {len(rows_s)} x {len(cols_s)} mixes at W+ index {cross}; {rec}")
    return 0


COMMANDS = [
    Command("sefa", "Closed-form factorisation (SeFa) of the style-modulation weights: the top-K directions applied to "
            "a few seeds, on the source and the variant side by side.", _sefa_arguments, run_sefa),
    Command("mix", "Style mixing: the rows' coarse styles with the columns' fine styles.", _mix_arguments, run_mix),
]
