"""Eval stage: FID / KID / precision-recall per variant and for the source, plus structure distance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pipeline.config import spec


@dataclass
class EvalConfig:
    n_samples: int = spec(1000, min=16, help="generated images per model (paper configs: 50000)")
    n_real: Optional[int] = spec(None, min=16, help="real images used (null: all in the shards)")
    metrics: list[Literal["fid", "kid", "pr"]] = spec(factory=lambda: ["fid", "kid", "pr"], help="which metrics")
    kid_subset_size: int = spec(1000, min=2, help="KID subset size (capped at the sample count)")
    batch: int = spec(64, min=1, help="batch size for sampling and Inception")
    truncation: float = spec(1.0, min=0.0, max=1.0, help="truncation psi when sampling")
    structure_n: int = spec(256, min=4, help="latents for the structure distance")
    real_floor: bool = spec(True, help="also score n_samples held-out source images (after the first n_real) "
                            "against the reference: what a perfect generator would get at these sample sizes")
    untrained_baseline: bool = spec(True, help="also score an untrained generator against the source shards")
    source_vs_target: bool = spec(False, help="also score the source generator against the target shards "
                                  "(how far from cartoons fine-tuning started)")


def run(ctx):
    from stages import generation as gen

    return gen.run_eval(ctx)
