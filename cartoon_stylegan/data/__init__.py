"""Data: synthetic domains, image sources, the WebDataset shard writer and the training loader.

``make_loader`` / ``ShardLoader`` import torch and webdataset; they are loaded on
first use so that the shard writer's worker processes start without torch.
"""
from .shards import MANIFEST, ShardingStopped, read_manifest, write_shards
from .sources import SkipImage, check_spec, iter_source
from .synthetic import (SYNTHETIC_DOMAINS, Factors, draw, preview_grid, render, render_batch,
                        sample_factors)

__all__ = [
    "SYNTHETIC_DOMAINS", "Factors", "draw", "preview_grid", "render", "render_batch", "sample_factors",
    "SkipImage", "check_spec", "iter_source", "write_shards", "ShardingStopped", "read_manifest", "MANIFEST",
    "ShardLoader", "make_loader",
]


def __getattr__(name):
    if name in ("ShardLoader", "make_loader", "decode_image"):
        from . import loader
        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
