"""Commands that use what the pipeline trained (``python -m pipeline generate ...``).

Each works on a finished experiment: the current config's (``--config`` and ``KEY=VALUE``
overrides such as ``run_root=...`` ``experiment=...`` as for every command), writes PNGs and a
JSON of what it did, and says in one line what is missing when it cannot.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.registry import Command


class UseError(Exception):
    """A missing experiment, variant or checkpoint: one line for the user."""


def parse_seeds(text: str) -> list[int]:
    """'0-15', '1,5,9', '0-3,10' -> seeds (at most 4096, each in [0, 2**31))."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UseError(f"--seeds: {text!r}: expected numbers and ranges like 0-15 or 1,5,9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise UseError(f"--seeds: range {part!r} goes down")
        seeds.extend(range(lo, hi + 1))
        if len(seeds) > 4096:
            raise UseError("--seeds: at most 4096 seeds")
    if not seeds or max(seeds) >= 2**31:
        raise UseError(f"--seeds: {text!r}: give seeds in [0, 2**31)")
    return seeds


def _trained(cfg) -> dict[str, Path]:
    """{name: final network file} of every model the experiment has: 'source' and each trained variant run."""
    from pipeline.artifacts import StagePaths
    from stages.models import source_path

    out = {}
    src, fmt = source_path(cfg, StagePaths(cfg, "finetune"))
    if Path(src).is_file():
        out["source"] = Path(src)
    for run in cfg.finetune.runs(cfg.seed):
        f = StagePaths(cfg, "finetune").final_network(run.dir)
        if f.is_file():
            out[run.dir] = f
    return out


def load_sampler(cfg, variant: str, *, swap_res: int | None, truncation: float, device):
    """The sampler of ``variant`` ('source', a variant run's folder name, or a variant name with one run),
    optionally weight-swapped at ``swap_res`` (source layers up to it, the variant's above)."""
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.sampling import Sampler
    from cartoon_stylegan.swap import weight_swap
    from pipeline.artifacts import StagePaths
    from stages.models import arch, load_source, source_path

    where = f"experiment {cfg.experiment!r} under {cfg.run_root}"
    src_file, _ = source_path(cfg, StagePaths(cfg, "finetune"))
    if not Path(src_file).is_file():
        raise UseError(f"no source generator in {where} ({src_file} is missing): run `python -m pipeline run "
                       "pretrain` first, or set finetune.init.path")
    G_src = load_source(cfg, StagePaths(cfg, "finetune"), device)
    if variant == "source":
        if swap_res is not None:
            raise UseError("--swap-res needs a fine-tuned --variant (the source swapped with itself is the source)")
        return Sampler(G_src, truncation=truncation), Path(src_file)
    runs = cfg.finetune.runs(cfg.seed)
    matches = [r for r in runs if r.dir == variant] or [r for r in runs if r.variant == variant]
    trained = sorted(n for n in _trained(cfg) if n != "source")
    if len(matches) > 1:
        raise UseError(f"--variant {variant!r} was trained with several seeds: name one of "
                       f"{', '.join(r.dir for r in matches)}")
    if not matches:
        known = variant in cfg.finetune.variants
        raise UseError(f"--variant {variant!r} " + ("is not among this config's finetune.run_variants" if known
                                                     else f"is not a variant of {where}")
                       + f"; trained: {', '.join(['source', *trained])}")
    run = matches[0]
    f = StagePaths(cfg, "finetune").final_network(run.dir)
    if not f.is_file():
        raise UseError(f"--variant {run.dir!r} has no trained network ({f} is missing): run `python -m pipeline run "
                       f"finetune finetune.run_variants=[{run.variant}]`; trained: {', '.join(['source', *trained])}")
    g_cfg, d_cfg = arch(cfg)
    nets = checkpoint.load_transfer(f, expect_g_config=g_cfg, expect_d_config=d_cfg)
    G = nets["g_ema"].eval().requires_grad_(False).to(device)
    if swap_res is None:
        return Sampler.for_variant(G, G_src, nets.get("meta") or {}, truncation=truncation), f
    res = cfg.data.resolution
    if swap_res < 4 or swap_res > res or swap_res & (swap_res - 1):
        raise UseError(f"--swap-res {swap_res}: a power of two from 4 to {res} (data.resolution)")
    return Sampler(weight_swap(G_src, G, swap_res, mapping="source"), truncation=truncation), f


# ----------------------------------------------------------------------------- generate

def _generate_arguments(p) -> None:
    p.add_argument("--variant", default="source",
                   help="source, or a fine-tuned variant (its name, or NAME-seedK when trained with several seeds)")
    p.add_argument("--swap-res", type=int, default=None,
                   help="weight swap: the source's layers up to this resolution, the variant's above")
    p.add_argument("--seeds", default="0-15", help="latent seeds, e.g. 0-15 or 1,5,9 (default %(default)s)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi, 0..1 (default %(default)s)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass")
    p.add_argument("--out", required=True, help="folder for the images, grid.png and generate.json")


def _check_out(out: str) -> Path:
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise UseError(f"--out {out}: exists and is not a folder")
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_generate(reg, cfg, args) -> int:
    import torch
    from tqdm.auto import tqdm

    from cartoon_stylegan.imageutil import save_png, tile_images, to_uint8
    from stages.models import device

    try:
        if args.items and any("=" not in a for a in args.items):
            raise UseError(f"generate takes no stage names: {[a for a in args.items if '=' not in a]}")
        if not 0.0 <= args.truncation <= 1.0:
            raise UseError(f"--truncation {args.truncation}: expected 0..1")
        if args.batch < 1:
            raise UseError("--batch: at least 1")
        seeds = parse_seeds(args.seeds)
        out = _check_out(args.out)
        dev = device()
        try:
            sampler, network = load_sampler(cfg, args.variant, swap_res=args.swap_res, truncation=args.truncation,
                                            device=dev)
        except (ValueError, OSError, RuntimeError) as e:  # a checkpoint of another architecture, unreadable, ...
            raise UseError(str(e).splitlines()[0] + (" (does the config match the experiment's?)"
                                                     if "does not match" in str(e) else "")) from None
    except UseError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 2
    files, images = [], []
    with torch.no_grad():
        bar = tqdm(total=len(seeds), unit="img", desc=f"generate {args.variant}")
        for i in range(0, len(seeds), args.batch):
            chunk = seeds[i:i + args.batch]
            z = torch.stack([torch.randn(sampler.style_dim, generator=torch.Generator().manual_seed(s))
                             for s in chunk]).to(dev)
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
    tmp = out / ".generate.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out / "generate.json")
    print(f"{len(files)} images and {grid} from {args.variant}"
          + (f" swapped at {args.swap_res} px" if args.swap_res else "") + f" ({network})")
    return 0


COMMANDS = [
    Command("generate", "Images from a trained generator: the source, a fine-tuned variant, or the two layer-swapped "
            "(one PNG per seed, grid.png, generate.json).", _generate_arguments, run_generate),
]
