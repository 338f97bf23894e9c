"""The root config: top-level keys plus one section per stage (declared in stages/)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import spec
from stages.common import DataConfig, LaunchConfig, ModelConfig, TrackingConfig
from stages.evaluate import EvalConfig
from stages.finetune import FinetuneConfig
from stages.pretrain import PretrainConfig
from stages.shard import ShardConfig
from stages.swap import SwapConfig


@dataclass
class RootConfig:
    experiment: str = spec("default", help="experiment name: MLflow experiment and runs/<experiment>/")
    run_root: str = spec("runs", help="root of all outputs (relative paths: to the current directory)")
    seed: int = spec(0, min=0, help="global seed")
    data: DataConfig = spec(factory=DataConfig, help="datasets")
    model: ModelConfig = spec(factory=ModelConfig, help="architecture")
    shard: ShardConfig = spec(factory=ShardConfig, help="shard stage")
    train: PretrainConfig = spec(factory=PretrainConfig, help="pretrain stage (the training loop on the source)")
    finetune: FinetuneConfig = spec(factory=FinetuneConfig, help="finetune stage")
    swap: SwapConfig = spec(factory=SwapConfig, help="swap stage")
    eval: EvalConfig = spec(factory=EvalConfig, help="eval stage")
    launch: LaunchConfig = spec(factory=LaunchConfig, help="process launch")
    tracking: TrackingConfig = spec(factory=TrackingConfig, help="MLflow")
    config_path: str = field(default="", metadata={"help": "(set by the loader)"})

    def __post_init__(self):
        import re
        from pipeline.config import ConfigError
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.experiment):
            raise ConfigError(f"experiment: {self.experiment!r} must be letters, digits, '_', '-', '.'")
        self.finetune.validate_against(self)
        self.swap.validate_against(self)
