"""What a stage's run(ctx) gets: its config, paths, logging functions, and (training) an Accelerator."""
from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.artifacts import StagePaths
from pipeline.config import to_dict


class StageContext:
    def __init__(self, cfg, stage: str, logger, *, accelerator=None, is_main=True, stop_flag=None,
                 fingerprint: str = "", paths: type = StagePaths, point: str | None = None):
        self.cfg = cfg
        self.stage = stage
        self.fingerprint = fingerprint  # of this attempt (config it reads + its inputs), from the DAG
        self.paths = paths(cfg, stage).ensure() if is_main else paths(cfg, stage)  # the registry's class
        self.logger = logger if is_main else tracking.NullLogger()
        self.accelerator = accelerator
        self.is_main = is_main
        self.point = point  # a grid stage: the one point to run (pipeline/grid.py)
        self.stop_file = self.paths.point_file(point, "stop")
        self._stop_flag = stop_flag or (lambda: False)

    # -- output
    def say(self, msg: str):
        if self.is_main:
            print(msg, flush=True)

    def log_params(self, params: dict, logger=None):
        (logger or self.logger).params({k: to_dict(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict, step: int | None = None, logger=None):
        (logger or self.logger).metrics(metrics, step)

    def log_artifact(self, path, artifact_dir: str | None = None, logger=None):
        (logger or self.logger).artifact(Path(path), artifact_dir)

    def log_image(self, array, path, artifact_dir: str | None = None, logger=None):
        if self.is_main:
            tracking.log_image(logger or self.logger, array, path, artifact_dir)

    def child_logger(self, name: str, tags: dict | None = None, run_id: str | None = None):
        """The MLflow run ``name`` of a variant of this stage: a top-level run in the runs table (so that
        variants line up for comparison), tagged with the stage, its stage run and ``tags``;
        reattaches to ``run_id`` on resume."""
        return self.logger.child(name, tags={"stage": self.stage, **(tags or {})}, run_id=run_id, nested=False)

    # -- control
    def should_stop(self) -> bool:
        """True once a stop was requested (SIGUSR1/SIGTERM); agreed by all ranks."""
        local = bool(self._stop_flag()) or self.stop_file.exists()
        acc = self.accelerator
        if acc is None or acc.num_processes == 1:
            return local
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if local else 0.0], device=acc.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
