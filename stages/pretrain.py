"""Pretrain stage: StyleGAN2 on the source shards (or import a checkpoint and train on from it)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import spec
from pipeline.registry import Stage
from stages.common import (InitConfig, check_compile_backend, check_deepspeed_config, init_file_inputs, loop_section,
                           source_from_file, training_resources)


@dataclass
class PretrainConfig(loop_section("PretrainLoop", exclude=("lr_mapping",))):
    """The training loop's settings (cartoon_stylegan.training.LoopOptions) and where to start."""
    init: InitConfig = spec(factory=InitConfig, help="start from these weights (kimg 0: import only)")

    def validate_against(self, root):
        check_deepspeed_config(root)  # launch.deepspeed: what both training stages train with
        check_compile_backend(root, "pretrain.compile", self.compile)


def preflight(cfg):
    from stages.models import check_init

    check_init(cfg, "pretrain", cfg.pretrain.init)


def run(ctx):
    from stages.models import fresh_models, load_weights
    from stages.training import run_training

    cfg = ctx.cfg
    init = cfg.pretrain.init
    nets = load_weights(cfg, init.path, init.format) if init.path else fresh_models(cfg, cfg.seed)
    return run_training(ctx, section=cfg.pretrain, data_name="source", nets=nets)


def digest(cfg) -> str:
    from pipeline.artifacts import file_digest
    from stages.paths import StagePaths

    return file_digest(StagePaths(cfg, "pretrain").final_network())[:16]




STAGE = Stage(
    name="pretrain", run=run, config=PretrainConfig, needs=("shard",), preflight=preflight, distributed=True, resources=training_resources,
    digest=digest, inputs=init_file_inputs("pretrain"), left_out=source_from_file, makes="pretrain/checkpoints/network-final.pt",
    reads=("seed", "data.resolution", "data.source", "data.xflip", "data.shuffle_buffer", "model", "pretrain"),
    help="pretrain stage: the training loop on the source domain (was `train`)")
