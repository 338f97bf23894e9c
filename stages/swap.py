"""Swap stage: layer-swap grids between the source and each fine-tuned generator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pipeline.config import ConfigError, spec


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
        res = root.data.resolution
        for k in ("min_res", "export_at"):
            v = getattr(self, k)
            if v is not None and v > res:
                raise ConfigError(f"swap.{k}: {v} is above data.resolution ({res})")


def run(ctx):
    from stages import generation as gen

    return gen.run_swap(ctx)
