"""Config sections shared by several stages (data, model, training loop, launch, tracking)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pipeline.config import ConfigError, spec

SYNTHETIC_DOMAINS = ("faces", "cartoons")


@dataclass
class DatasetConfig:
    input: str = spec(help="image folder, .zip of images, or synthetic:faces / synthetic:cartoons")
    count: Optional[int] = spec(None, min=1, help="number of images for synthetic inputs (required there); "
                                "for folders/zips an optional cap")

    def __post_init__(self):
        if self.input.startswith("synthetic:"):
            domain = self.input.split(":", 1)[1]
            if domain not in SYNTHETIC_DOMAINS:
                raise ConfigError(f"input: {self.input!r}: unknown synthetic domain {domain!r}; "
                                  f"accepted: {', '.join('synthetic:' + d for d in SYNTHETIC_DOMAINS)}")
            if self.count is None:
                raise ConfigError(f"count: a synthetic input ({self.input}) needs a count")


@dataclass
class DataConfig:
    resolution: int = spec(32, min=16, max=1024, pow2=True, help="training resolution in pixels (power of two)")
    source: DatasetConfig = spec(factory=lambda: DatasetConfig("synthetic:faces", 4000), help="source domain (photos)")
    target: DatasetConfig = spec(factory=lambda: DatasetConfig("synthetic:cartoons", 2000), help="target domain (cartoons)")
    xflip: bool = spec(True, help="random horizontal flips in the loader")
    num_workers: int = spec(0, min=0, max=64, help="loader worker processes per training process")
    shuffle_buffer: int = spec(1000, min=0, help="WebDataset shuffle buffer (samples)")


@dataclass
class ModelConfig:
    style_dim: int = spec(512, min=8, max=4096, help="W dimension")
    n_mlp: int = spec(8, min=1, max=16, help="mapping network depth")
    channel_multiplier: int = spec(2, min=1, max=4, help="config-f uses 2")
    channel_max: int = spec(512, min=4, max=1024, help="cap on every channel count (tiny CPU models: 32-64)")
    lr_mlp: float = spec(0.01, min=0.0, help="mapping network learning-rate multiplier")
    use_noise: bool = spec(True, help="per-layer noise inputs (false: none, and their strengths do not train; "
                                      "tiny models otherwise spend themselves on speckle)")


@dataclass
class InitConfig:
    path: Optional[str] = spec(None, help="checkpoint to start from (transfer: weights only)")
    format: Literal["native", "rosinality"] = spec("native", help="native (our transfer file) or rosinality (.pt of stylegan2-pytorch)")

    def preflight(self, key: str):
        from pathlib import Path

        if self.path and not Path(self.path).is_file():
            raise ConfigError(f"{key}.init.path: {self.path!r} is not a file (expected a "
                              f"{self.format} checkpoint)")


@dataclass
class LoopConfig:
    """The training-loop settings (mapped onto cartoon_stylegan.training.LoopOptions)."""
    kimg: float = spec(100.0, min=0.0, help="training budget in thousands of real images shown")
    batch: int = spec(32, min=1, max=4096, help="batch size per process")
    lr_g: float = spec(0.002, min=0.0, max=1.0, help="generator learning rate")
    lr_d: float = spec(0.002, min=0.0, max=1.0, help="discriminator learning rate")
    r1_gamma: float = spec(10.0, min=0.0, help="R1 regularisation weight")
    r1_every: int = spec(16, min=1, help="lazy R1 interval (minibatches)")
    pl_weight: Optional[float] = spec(2.0, min=0.0, help="path-length regularisation weight (0 = off; "
                                      "null in finetune = off when G blocks are frozen, else 2)")
    pl_every: int = spec(4, min=1, help="lazy path-length interval (minibatches)")
    mixing_prob: float = spec(0.9, min=0.0, max=1.0, help="style-mixing probability")
    ema_kimg: float = spec(10.0, min=0.0, help="G_ema half-life in kimg")
    ema_rampup: Optional[float] = spec(0.05, min=0.0, help="EMA ramp-up ratio (null = off)")
    ada: bool = spec(False, help="adaptive discriminator augmentation")
    ada_target: float = spec(0.6, min=0.0, max=1.0, help="ADA target for E[sign(D(real))]")
    ada_kimg: float = spec(500.0, min=0.001, help="ADA adjustment speed (kimg for p to go 0 -> 1)")
    tick_kimg: float = spec(1.0, min=0.001, help="report metrics every N kimg")
    sample_kimg: float = spec(10.0, min=0.001, help="sample grid every N kimg")
    snapshot_kimg: float = spec(10.0, min=0.001, help="resume checkpoint every N kimg")
    keep_checkpoints: int = spec(3, min=1, help="resume checkpoints kept")
    grid: list[int] = spec(factory=lambda: [8, 4], help="sample grid columns, rows")

    def __post_init__(self):
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ConfigError(f"grid: {self.grid!r} must be [columns, rows], both >= 1")


LOOP_FIELDS = tuple(LoopConfig.__dataclass_fields__)


@dataclass
class LaunchConfig:
    num_processes: int = spec(1, min=1, max=1024, help="processes on this machine (>1: accelerate launch, DDP)")
    mixed_precision: Literal["no", "fp16", "bf16"] = spec("no", help="GPU only; CPU always trains in fp32")
    cpu: Optional[bool] = spec(None, help="force CPU (null: CPU when no CUDA device)")
    accelerate_config: Optional[str] = spec(None, help="accelerate config file passed to accelerate launch")
    main_process_port: int = spec(0, min=0, max=65535, help="rendezvous port for local multi-process (0: a free one)")


@dataclass
class TrackingConfig:
    uri: Optional[str] = spec(None, help="MLflow tracking URI (default sqlite:///<run_root>/mlflow.db; "
                              "MLFLOW_TRACKING_URI wins over this)")
    enabled: bool = spec(True, help="log to MLflow")
