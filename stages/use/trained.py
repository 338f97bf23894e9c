"""The service every model command stands on: which trained networks an experiment has, loading one as
a sampler (optionally layer-swapped), the seed lists and ``--out`` folders the commands take, and the
one-line error they all raise (:class:`UseError`).

Public: ``generate``, ``cartoonize``, ``sefa``, ``mix``, ``export`` and the ``serve`` page import it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path



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


def trained_networks(cfg) -> dict[str, Path]:
    """{name: final network file} of every model the experiment has: 'source' and each trained variant run."""
    from stages.paths import StagePaths
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


def missing_source_hint(cfg, src_file) -> str:
    """What to do when the source generator is not there: it depends on where it comes from."""
    if cfg.finetune.init.path:
        return f"finetune.init.path {src_file} is not a file; give the pretrained generator you fine-tuned from"
    return f"{src_file} is missing: run `python -m pipeline run pretrain` first, or set finetune.init.path"


def load_sampler(cfg, variant: str, *, swap_res: int | None, truncation: float, device):
    """The sampler of ``variant`` ('source', a variant run's folder name, or a variant name with one run),
    optionally weight-swapped at ``swap_res`` (source layers up to it, the variant's above), and its file.
    Raises UseError (one line) for anything missing or unreadable."""
    try:
        return _load_sampler(cfg, variant, swap_res=swap_res, truncation=truncation, device=device)
    except (ValueError, OSError, RuntimeError) as e:  # another architecture, unreadable, refused (a ValueError)
        raise UseError(str(e).splitlines()[0] + (" (does the config match the experiment's?)"
                                                 if "does not match" in str(e) else "")) from None


def _load_sampler(cfg, variant: str, *, swap_res: int | None, truncation: float, device):
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.sampling import Sampler
    from cartoon_stylegan.swap import weight_swap
    from stages.paths import StagePaths
    from stages.models import arch, load_source, source_path

    where = f"experiment {cfg.experiment!r} under {cfg.run_root}"
    src_file, _ = source_path(cfg, StagePaths(cfg, "finetune"))
    if not Path(src_file).is_file():
        raise UseError(f"no source generator in {where}: {missing_source_hint(cfg, src_file)}")
    G_src = load_source(cfg, StagePaths(cfg, "finetune"), device)
    if variant == "source":
        if swap_res is not None:
            raise UseError("--swap-res needs a fine-tuned --variant (the source swapped with itself is the source)")
        return Sampler(G_src, truncation=truncation), Path(src_file)
    runs = cfg.finetune.runs(cfg.seed)
    matches = [r for r in runs if r.dir == variant] or [r for r in runs if r.variant == variant]
    trained = sorted(n for n in trained_networks(cfg) if n != "source")
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


def check_out(out: str) -> Path:
    """``--out`` as a folder that exists (made) and is writable, else a UseError naming it."""
    return writable_folder(Path(out), out)
