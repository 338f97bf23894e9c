"""Shard stage: both image sets -> WebDataset tars + manifest.json (+ preview grids)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import spec
from pipeline.registry import Stage
from stages.common import datasets_used, source_from_file


@dataclass
class ShardConfig:
    format: Literal["png", "jpeg"] = spec("png", help="encoding inside the tars (png is lossless)")
    quality: int = spec(95, min=1, max=100, help="JPEG quality")
    max_per_shard: int = spec(1000, min=1, help="samples per tar")
    workers: int = spec(2, min=1, max=256, help="encoder processes")
    min_size: int = spec(0, min=0, help="skip inputs whose shorter side is below this (pixels)")
    crop: Literal["center", "face"] = spec("center", later="center", help="how an image becomes the square: center (the largest "
                                           "centred square, then a Lanczos resize) or face (the most confident face, "
                                           "aligned as FFHQ's were; images without a face are skipped, with the "
                                           "reason in the manifest; needs the faces extra)")


def preflight(cfg):
    """The inputs this config uses exist and are of a kind we read (before any stage starts)."""
    from cartoon_stylegan.data.sources import check_spec
    from pipeline.config import ConfigError

    for name in datasets_used(cfg):
        ds = getattr(cfg.data, name)
        try:
            check_spec(ds.input, ds.count)
        except ValueError as e:
            raise ConfigError(f"data.{name}.input: {e}") from None
    if cfg.shard.crop == "face":
        from cartoon_stylegan.faces import FaceAlignError, detect_faces

        try:
            import numpy as np

            detect_faces(np.zeros((8, 8, 3), np.uint8))  # loads the models: missing packages say so here
        except FaceAlignError as e:
            raise ConfigError(f"shard.crop: face: {e}") from None


def run(ctx):

    from cartoon_stylegan.data import ShardingStopped, preview_grid, write_shards
    from pipeline.dag import StageStopped

    cfg = ctx.cfg
    res = cfg.data.resolution
    ctx.log_params({"data": cfg.data, "shard": cfg.shard})
    outputs = {}
    if source_from_file(cfg):
        ctx.say("sharding the target set only: the source generator is a file (finetune.init.path), "
                "so the source images are not needed")
    for name in datasets_used(cfg):
        ds = getattr(cfg.data, name)
        out_dir = ctx.paths.dataset_dir(name)
        ctx.say(f"sharding {name}: {ds.input} -> {out_dir}")
        try:
            manifest = write_shards(
                ds.input, out_dir, name, resolution=res, count=ds.count, seed=cfg.seed,
                fmt=cfg.shard.format, quality=cfg.shard.quality, max_per_shard=cfg.shard.max_per_shard,
                workers=cfg.shard.workers, min_size=cfg.shard.min_size, crop=cfg.shard.crop, progress=True,
                report=lambda m, _n=name: ctx.log_metrics({f"{_n}/{k}": v for k, v in m.items()}),
                should_stop=ctx.should_stop)
        except ShardingStopped as e:
            raise StageStopped(f"shard {e}; the next run shards this set again from the start") from None
        ctx.log_metrics({f"{name}/written": manifest["count"], f"{name}/skipped": len(manifest["skipped"]),
                         f"{name}/found": manifest["found"]})
        ctx.log_artifact(out_dir / "manifest.json", name)
        if ds.input.startswith("synthetic:"):
            grid = preview_grid(ds.input.split(":", 1)[1], cfg.seed, 32, res)
        else:
            grid = _grid_from_shards(out_dir)
        ctx.log_image(grid, ctx.paths.stage_dir / f"{name}-preview.png", "previews")
        outputs[name] = {"dir": str(out_dir), "count": manifest["count"], "skipped": len(manifest["skipped"])}
        if manifest["skipped"]:
            ctx.say(f"  {name}: {len(manifest['skipped'])} input(s) skipped; reasons in {out_dir / 'manifest.json'}")
    return outputs


def _grid_from_shards(shard_dir, n=32):
    from cartoon_stylegan.data import make_loader
    from cartoon_stylegan.imageutil import tile_images, to_uint8

    batch = next(iter(make_loader(shard_dir, batch_size=n, xflip=False, shuffle_buffer=0)))
    return tile_images(to_uint8(batch), cols=8)


def digest(cfg) -> str:
    """What the shards hold: every tar's SHA-256 (from the manifests), so a rerun that writes the
    same images leaves pretrain and finetune up to date."""
    from pipeline.artifacts import digest_of, read_json
    from stages.paths import StagePaths

    paths = StagePaths(cfg, "shard")
    return digest_of({name: [(s["file"], s["sha256"]) for s in read_json(paths.dataset_dir(name) / "manifest.json")["shards"]]
                      for name in datasets_used(cfg)})


STAGE = Stage(
    name="shard", run=run, config=ShardConfig, preflight=preflight, digest=digest,
    reads=lambda cfg: ("seed", "data.resolution", *(f"data.{n}" for n in datasets_used(cfg)), "shard.format",
                       "shard.quality", "shard.max_per_shard", "shard.min_size", "shard.crop"),
    # (not shard.workers: the same shards either way; data.source only when the source set is sharded)
    makes="shard/<dataset>/*.tar + manifest.json", help="shard stage",
    resources=lambda cfg: {"gpu": False, "cpus": cfg.shard.workers + 1, "procs": 1})
