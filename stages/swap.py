"""Swap stage: layer-swap grids between the source and each fine-tuned generator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pipeline.artifacts import write_json
from pipeline.dag import StageStopped
from pipeline.config import ConfigError, spec
from pipeline.registry import Stage


@dataclass
class SwapConfig:
    seeds: int = spec(8, min=1, max=64, help="columns: latents drawn from seeds 0..N-1")
    kinds: list[Literal["weight", "activation"]] = spec(factory=lambda: ["weight", "activation"],
                                                        help="weight swapping (toonify) and/or activation swapping (reference code)")
    min_res: int = spec(4, min=4, pow2=True, help="first swap resolution row")
    mapping: Literal["source", "target"] = spec("source", help="weight swap: which mapping network")
    blend_width: float = spec(0.0, min=0.0, help="weight swap: smooth blend width in octaves (0 = hard)")
    truncation: float = spec(1.0, min=0.0, max=1.0, help="truncation psi for the grid")
    export_at: Optional[int] = spec(None, min=4, pow2=True, help="also save the weight-swapped generator at this resolution")

    def validate_against(self, root):
        if not self.kinds:
            raise ConfigError("swap.kinds: empty; give weight and/or activation")
        res = root.data.resolution
        for k in ("min_res", "export_at"):
            v = getattr(self, k)
            if v is not None and v > res:
                raise ConfigError(f"swap.{k}: {v} is above data.resolution ({res})")


def run(ctx):
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.swap import swap_grid, weight_swap
    from stages.finetune import variant_logger
    from stages.models import device, load_source, load_variants

    cfg, sc = ctx.cfg, ctx.cfg.swap
    dev = device()
    G_src = load_source(cfg, ctx.paths, dev)
    variants = load_variants(cfg, ctx.paths, G_src, dev)
    ctx.log_params({"swap": sc})
    res = cfg.data.resolution
    resolutions = [r for r in (2 ** k for k in range(2, 11)) if sc.min_res <= r <= res]
    out = {}
    for run, sampler in variants:
        name = run.dir
        vlog = variant_logger(ctx, run)
        for kind in sc.kinds:
            grid, labels = swap_grid(G_src, sampler, seeds=list(range(sc.seeds)), resolutions=resolutions, kind=kind,
                                     truncation=sc.truncation, mapping=sc.mapping, blend_width=sc.blend_width)
            path = ctx.paths.stage_dir / f"{name}-{kind}.png"
            ctx.log_image(grid, path, "grids")
            if vlog is not None:  # also on the variant's own MLflow run, beside its samples and scores
                vlog.artifact(path, "swap")
            out[f"{name}/{kind}"] = {"grid": str(path), "rows": labels}
            ctx.say(f"[swap] {name} ({kind}): {path}")
        if sc.export_at:
            G_sw = weight_swap(G_src, sampler.G, sc.export_at, mapping=sc.mapping, blend_width=sc.blend_width)
            dst = ctx.paths.stage_dir / f"{name}-swap{sc.export_at}.pt"
            checkpoint.save_transfer(dst, g=G_sw, d=None, g_ema=G_sw,
                                     meta={"swap_at": sc.export_at, "variant": name, "mapping": sc.mapping})
            out[f"{name}/export"] = str(dst)
        if ctx.should_stop():  # grids are cheap and written whole: a rerun draws them all again
            raise StageStopped(f"swap stopped after {name}; the next run draws every grid again")
    write_json(ctx.paths.stage_dir / "swap.json", out)
    return out


STAGE = Stage(name="swap", run=run, config=SwapConfig, needs=("finetune",), reads=("seed", "swap"),
              makes="swap/<variant>-<kind>.png", help="swap stage: layer-swap grids",
              resources=lambda cfg: {"gpu": True, "cpus": 2, "procs": 1})
