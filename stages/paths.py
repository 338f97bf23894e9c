"""Where this project's stages put what they make, under ``<run_root>/<experiment>/<stage>/``: the
runner's :class:`pipeline.artifacts.StagePaths` (the stage folder, its control files, validated sub-run
folders) plus the files of these stages. Handed to the runner as ``Registry.paths``."""
from __future__ import annotations

from pathlib import Path

from pipeline import artifacts

__all__ = ["StagePaths", "FINAL_NETWORK"]

FINAL_NETWORK = "network-final.pt"


class StagePaths(artifacts.StagePaths):
    # shard
    def dataset_dir(self, name: str) -> Path:
        """The shards of image set ``name`` (source, target)."""
        return artifacts.experiment_dir(self.cfg) / "shard" / name

    # training
    def checkpoint_dir(self, variant: str | None = None) -> Path:
        return self.train_dir(variant) / "checkpoints"

    def final_network(self, variant: str | None = None) -> Path:
        """The network a training (sub-)run leaves when it has finished (a transfer file)."""
        return self.checkpoint_dir(variant) / FINAL_NETWORK

    # eval
    @property
    def metrics_file(self) -> Path:
        return self.stage_dir / "metrics.json"

    @property
    def stats_cache(self) -> Path:
        """Reference-set features for FID/KID, shared by every experiment of the run root."""
        return artifacts.run_root(self.cfg) / "cache" / "fid-stats"
