"""Resume state under DeepSpeed: ``resume-<nimg>.ds/`` with each engine's own checkpoint (G/, D/: the weights
from rank 0, one optimiser partition per rank under ZeRO) and ``loop.pt`` (the loop's state), written
under ``.partial-resume-<nimg>.ds/`` and renamed once every rank has finished (see backends.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.training.state import (
    CheckpointStore,
    SnapshotMismatch,
    newest_readable,
    own_resume_files,
    resume_files_of_kind,
    resume_path,
)
from toolbox import fsync_dir

__all__ = ["DeepSpeedCheckpoints", "partition_files"]

_NETS = ("G", "D")


def partition_files(tag_dir: Path, world: int, zero_stage: int) -> list[Path]:
    """The files DeepSpeed writes for one engine (tag) of ``world`` ranks at ``zero_stage``."""
    files = [tag_dir / "mp_rank_00_model_states.pt"]
    if zero_stage > 0:
        files += [tag_dir / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    return files


class DeepSpeedCheckpoints(CheckpointStore):
    """``resume-<nimg>.ds/{G,D,loop.pt}`` directories; every rank writes its own optimiser partition.

    The engines load their part in :meth:`restore` (called by the loop after the loop state).
    """

    kind = ".ds"

    def __init__(self, ckpt_dir, keep: int = 3, *, engines: dict, writer: bool, world: int, zero_stage: int,
                 barrier=lambda: None):
        if keep < 1:
            raise ValueError(f"DeepSpeedCheckpoints: keep must be >= 1, got {keep}")
        self.dir, self.keep, self.engines, self.writer = Path(ckpt_dir), int(keep), engines, bool(writer)
        self.world, self.zero_stage, self.barrier = int(world), int(zero_stage), barrier

    def path_for(self, nimg: int) -> Path:
        return resume_path(self.dir, nimg, kind=self.kind)

    def latest(self):
        found = newest_readable(own_resume_files(self.dir, self.kind), self.load)
        return None if found is None else (str(found[0]), found[1])

    def load(self, path) -> dict:
        path = Path(path)
        state = ckpt.load_resume(path / "loop.pt")
        world = int(state.get("world_size", self.world))
        if world != self.world:
            raise SnapshotMismatch(f"{path} was written by {world} processes, now {self.world}: DeepSpeed's "
                                   "partitioned optimizer state resumes on the same number of processes (set "
                                   f"launch.num_processes / --nodes to give {world}, or move the checkpoints aside)")
        stage = int(state.get("zero_stage", self.zero_stage))
        if stage != self.zero_stage:
            raise SnapshotMismatch(f"{path} was written with ZeRO stage {stage}, now {self.zero_stage}: resume with "
                                   f"the same launch.deepspeed config, or move the checkpoints aside")
        missing = [str(f.relative_to(path)) for net in _NETS for f in partition_files(path / net, world, self.zero_stage)
                   if not f.is_file()]
        if missing:
            raise ValueError(f"incomplete DeepSpeed checkpoint, missing {', '.join(missing[:4])}")
        return state

    def restore(self, path) -> None:
        """Load each engine's weights and optimiser partition from snapshot ``path``."""
        for net in _NETS:
            loaded, _ = self.engines[net].load_checkpoint(str(path), tag=net, load_module_strict=True,
                                                          load_optimizer_states=True, load_lr_scheduler_states=False)
            if loaded is None:
                raise RuntimeError(f"DeepSpeed could not load {Path(path) / net}")

    def save(self, state: dict, nimg: int) -> str:
        final = self.path_for(nimg)
        partial = final.with_name(f".partial-{final.name}")
        if self.writer:
            shutil.rmtree(partial, ignore_errors=True)  # left by a killed attempt
            partial.mkdir(parents=True)
        self.barrier()
        for net in _NETS:
            self.engines[net].save_checkpoint(str(partial), tag=net, save_latest=False)
        if self.writer:
            ckpt.save_resume(partial / "loop.pt", {**state, "zero_stage": self.zero_stage})
        self.barrier()  # every rank's partition is on disk
        if self.writer:
            _fsync_tree(partial)
            if final.exists():  # the same images-seen count again: replace it
                old = final.with_name(f".old-{final.name}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(partial, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(partial, final)
            fsync_dir(self.dir)
            self.prune()
        self.barrier()
        return str(final)

    def prune(self) -> None:
        if not self.writer:
            return
        for old in resume_files_of_kind(self.dir, self.kind)[:-self.keep]:
            gone = old.with_name(f".deleting-{old.name}")  # a kill mid-delete leaves no half snapshot behind
            os.replace(old, gone)
            shutil.rmtree(gone, ignore_errors=True)
        for stale in [*self.dir.glob(".partial-resume-*"), *self.dir.glob(".old-resume-*"),
                      *self.dir.glob(".deleting-resume-*")]:
            shutil.rmtree(stale, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


