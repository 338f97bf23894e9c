"""The only place that builds output paths under <run_root>/<experiment>/."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from toolbox import atomic_write_text, sha256_file


def experiment_dir(cfg) -> Path:
    return run_root(cfg) / cfg.experiment


def run_root(cfg) -> Path:
    """The run root, absolute (``~`` expanded: a literal ``~`` folder is never what was meant)."""
    return Path(cfg.run_root).expanduser().resolve()


def check_run_root(cfg) -> Path:
    """The run root is (or can become) a writable folder; else one ConfigError line naming it."""
    from pipeline.config import ConfigError

    root = run_root(cfg)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run_root: {root} is a file, not a folder")
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"run_root: {root} is not writable (no write permission on {probe})")
    try:  # permissions are not the whole story (root, read-only mounts, /proc): make it and write there
        root.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise ConfigError(f"run_root: {root} cannot be created or written ({e.strerror or e})") from None
    return root


def inside(path: Path, root: Path) -> Path:
    """``path``, after checking that it resolves to a place below ``root`` (never outside the run root)."""
    resolved = Path(path).resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise ValueError(f"{path} resolves to {resolved}, outside {root}: refused")
    return Path(path)


def write_json(path: Path, obj) -> Path:
    """Atomic JSON write (temp file + rename)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    return sha256_file(path)


def digest_of(obj) -> str:
    """A short SHA-256 of JSON-able data (a stage's record of what it wrote)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


class StagePaths:
    """The runner's paths of one stage: its folder, its state and control files, and a validated named
    sub-folder per sub-run. A registry extends it with what its stages write (``Registry.paths``); the
    runner knows no file a stage makes."""

    def __init__(self, cfg, stage: str):
        self.cfg = cfg
        self.stage = stage
        self.stage_dir = experiment_dir(cfg) / stage

    def of(self, stage: str) -> "StagePaths":
        return type(self)(self.cfg, stage)

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

    # a grid stage's points (pipeline/grid.py): each point's record, lock, stop request, result, config
    def point_file(self, point: str | None, kind: str) -> Path:
        """``kind`` of one point, in its own folder ``points/<point>/``: ``point.json`` (the runner's record),
        ``lock``, ``stop``, ``result.json``, ``config.yaml``; ``point`` None: the stage's own file of that
        kind (a stage run whole)."""
        if point is None:
            return {"stop": self.stop_file, "result.json": self.result_file,
                    "config.yaml": self.resolved_config}[kind]
        from pipeline.settings import check_name

        return self.stage_dir / "points" / check_name(point, f"{self.stage} point") / kind

    # a stage's sub-runs (e.g. one per fine-tuning variant), each in a validated folder of the stage
    def train_dir(self, variant: str | None = None) -> Path:
        if not variant:
            return self.stage_dir
        from pipeline.settings import check_name

        return inside(self.stage_dir / check_name(variant, f"{self.stage} variant"), self.stage_dir)



def slurm_log_dir(cfg) -> Path:
    return experiment_dir(cfg) / "slurm-logs"


def default_tracking_uri(cfg) -> str:
    return f"sqlite:///{run_root(cfg) / 'mlflow.db'}"


def default_artifact_root(cfg) -> Path:
    return run_root(cfg) / "mlartifacts"
