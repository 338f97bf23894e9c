"""The only place that builds output paths under <run_root>/<experiment>/."""
from __future__ import annotations

import json
import os
from pathlib import Path


def experiment_dir(cfg) -> Path:
    return Path(cfg.run_root).resolve() / cfg.experiment


def run_root(cfg) -> Path:
    return Path(cfg.run_root).resolve()


def write_json(path: Path, obj) -> Path:
    """Atomic JSON write (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


class StagePaths:
    """Paths of one stage's outputs (and read access to the other stages' outputs)."""

    def __init__(self, cfg, stage: str):
        self.cfg = cfg
        self.stage = stage
        self.stage_dir = experiment_dir(cfg) / stage

    def of(self, stage: str) -> "StagePaths":
        return StagePaths(self.cfg, stage)

    def ensure(self) -> "StagePaths":
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        return self

    # state and control files
    @property
    def state_file(self) -> Path:
        return self.stage_dir / "stage.json"

    @property
    def stop_file(self) -> Path:
        return self.stage_dir / ".stop-request"

    @property
    def result_file(self) -> Path:
        return self.stage_dir / "result.json"

    @property
    def resolved_config(self) -> Path:
        return self.stage_dir / "resolved-config.yaml"

    @property
    def slurm_file(self) -> Path:
        return self.stage_dir / "slurm.json"

    # shard
    def dataset_dir(self, name: str) -> Path:
        return experiment_dir(self.cfg) / "shard" / name

    # training
    def train_dir(self, variant: str | None = None) -> Path:
        return self.stage_dir / variant if variant else self.stage_dir

    def checkpoint_dir(self, variant: str | None = None) -> Path:
        return self.train_dir(variant) / "checkpoints"

    def final_network(self, variant: str | None = None) -> Path:
        return self.checkpoint_dir(variant) / "network-final.pt"

    # eval
    @property
    def metrics_file(self) -> Path:
        return self.stage_dir / "metrics.json"

    @property
    def stats_cache(self) -> Path:
        return run_root(self.cfg) / "cache" / "fid-stats"


def slurm_log_dir(cfg) -> Path:
    return experiment_dir(cfg) / "slurm-logs"


def default_tracking_uri(cfg) -> str:
    return f"sqlite:///{run_root(cfg) / 'mlflow.db'}"


def default_artifact_root(cfg) -> Path:
    return run_root(cfg) / "mlartifacts"
