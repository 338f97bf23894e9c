"""Pretrain stage: StyleGAN2 on the source shards (or import a checkpoint and train on from it)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import spec
from stages.common import InitConfig, LoopConfig


@dataclass
class PretrainConfig(LoopConfig):
    init: InitConfig = spec(factory=InitConfig, help="start from these weights (kimg 0: import only)")


def preflight(cfg):
    cfg.train.init.preflight("train")


def run(ctx):
    from stages import training_common as tc

    return tc.run_training(ctx, section=ctx.cfg.train, data_name="source", variant=None)
