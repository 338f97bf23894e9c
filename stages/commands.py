"""Commands that use what the pipeline trained (``python -m pipeline generate ...``).

Each works on a finished experiment: the current config's (``--config`` and ``KEY=VALUE``
overrides such as ``run_root=...`` ``experiment=...`` as for every command), writes PNGs and a
JSON of what it did, and says in one line what is missing when it cannot.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from pipeline.artifacts import write_json
from pipeline.registry import Command


class UseError(Exception):
    """A missing experiment, variant or checkpoint: one line for the user."""


MAX_SEEDS = 4096


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """'0-15', '1,5,9', '0-3,10' -> seeds (at most MAX_SEEDS, each in [0, 2**31)); errors name ``option``.
    A range is counted before it is built: '0-99999999999' is refused, not expanded."""
    text = str(text)
    shown = repr(text if len(text) <= 40 else text[:37] + "...")
    parts = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UseError(f"{option}: {shown}: expected numbers and ranges like 0-15 or 1,5,9")
        # past 30 digits the value only needs to be too large (int() refuses 4,300 digits with a traceback)
        lo, hi = (int(g) if len(g) <= 30 else 10**30 for g in (m.group(1), m.group(2) or m.group(1)))
        if hi < lo:
            raise UseError(f"{option}: range {part!r} goes down")
        parts.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in parts)
    if count > MAX_SEEDS:
        raise UseError(f"{option}: {shown} is {count} seeds: at most {MAX_SEEDS}")
    if max(hi for _, hi in parts) >= 2**31:
        raise UseError(f"{option}: {shown}: give seeds in [0, 2**31)")
    return [s for lo, hi in parts for s in range(lo, hi + 1)]


def check_use_args(args, command: str) -> None:
    """What every model command checks alike: no stray positional arguments (KEY=VALUE overrides only),
    and a truncation psi in 0..1 where the command takes one."""
    if getattr(args, "names", None):
        raise UseError(f"{command} takes no positional arguments (KEY=VALUE overrides only): {args.names}")
    psi = getattr(args, "truncation", None)
    if psi is not None and not 0.0 <= psi <= 1.0:
        raise UseError(f"--truncation {psi}: expected 0..1")


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
    optionally weight-swapped at ``swap_res`` (source layers up to it, the variant's above), and its file.
    Raises UseError (one line) for anything missing or unreadable."""
    try:
        return _load_sampler(cfg, variant, swap_res=swap_res, truncation=truncation, device=device)
    except (ValueError, OSError, RuntimeError) as e:  # a checkpoint of another architecture, unreadable, ...
        raise UseError(str(e).splitlines()[0] + (" (does the config match the experiment's?)"
                                                 if "does not match" in str(e) else "")) from None


def _load_sampler(cfg, variant: str, *, swap_res: int | None, truncation: float, device):
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


def writable_folder(d: Path, out: str) -> Path:
    """``d`` made (with its parents) and writable, else a UseError naming ``--out {out}``: found before any compute,
    not as a traceback when the first image is saved."""
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UseError(f"--out {out}: {probe} exists and is not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UseError(f"--out {out}: cannot make the folder {d}: {e.strerror or e}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise UseError(f"--out {out}: the folder {d} is not writable")
    return d


def _check_out(out: str) -> Path:
    return writable_folder(Path(out), out)


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
        out = _check_out(args.out)
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


# ----------------------------------------------------------------------------- sefa, mix

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


# ----------------------------------------------------------------------------- cartoonize

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
    from pipeline.artifacts import StagePaths
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
        out = _check_out(args.out)
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


# ----------------------------------------------------------------------------- serve

def _serve_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; the page has no login, so any other "
                        "address lets whoever reaches it use this machine)")
    p.add_argument("--port", type=int, default=7860, help="port 0..65535 (0: a free one; default %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="default projection steps on the page (default %(default)s)")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def run_serve(reg, cfg, args) -> int:
    import socket
    import sys

    from werkzeug.serving import make_server

    from stages.webapp import STEPS_RANGE, create_app

    try:
        check_use_args(args, "serve")
        if not 0 <= args.port <= 65535:
            raise UseError(f"--port {args.port}: expected 0..65535 (0: a free one)")
        if not STEPS_RANGE[0] <= args.steps <= STEPS_RANGE[1]:
            raise UseError(f"--steps {args.steps}: expected {STEPS_RANGE[0]}..{STEPS_RANGE[1]}")
        app = create_app(cfg, steps=args.steps)
    except UseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except (OSError, socket.error, OverflowError) as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host}: this page has no authentication, and it is now reachable from the "
              f"network: anyone who can reach port {server.port} can upload photos, run projections on this machine "
              "and see the results; keep the default 127.0.0.1 and use an SSH tunnel to reach it from elsewhere",
              file=sys.stderr, flush=True)
    print(f"serving experiment {cfg.experiment!r} on http://{args.host}:{server.port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


COMMANDS = [
    Command("generate", "Images from a trained generator: the source, a fine-tuned variant, or the two layer-swapped "
            "(one PNG per seed, grid.png, generate.json).", _generate_arguments, run_generate),
    Command("sefa", "Closed-form factorisation (SeFa) of the style-modulation weights: the top-K directions applied to "
            "a few seeds, on the source and the variant side by side.", _sefa_arguments, run_sefa),
    Command("mix", "Style mixing: the rows' coarse styles with the columns' fine styles.", _mix_arguments, run_mix),
    Command("cartoonize", "Turn photos into cartoons: crop, project into the source generator's W+ (perceptual loss "
            "from the source discriminator, no download), draw the same W+ with the fine-tuned variant.",
            _cartoonize_arguments, run_cartoonize),
    Command("serve", "A local web page: cartoonize an uploaded photo, and generate with SeFa sliders.",
            _serve_arguments, run_serve),
]
