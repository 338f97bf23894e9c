"""The loop's state at a step boundary: what a resume file holds, and where resume files live.

Three parts, each replaceable on its own:

* naming: ``<ckpt_dir>/resume-<images seen:09d>.pt`` (:func:`resume_path`; a directory
  ``resume-<images seen:09d>.ds`` under DeepSpeed), newest = most images seen
  (:func:`find_latest_resume`, :func:`read_resume_step`);
* storage: a :class:`CheckpointStore` saves and loads the state dict. :class:`LocalCheckpoints`
  is the one-file-per-snapshot store written by the main process (atomic temp + rename,
  through :mod:`cartoon_stylegan.checkpoint`); the DeepSpeed backend's store
  (``deepspeed_store.DeepSpeedCheckpoints``) writes a directory with a file per rank and holds
  the networks and optimisers itself (the keys its backend lists in ``held``);
* content: :func:`capture_state` turns the loop's objects (:class:`LoopState`) into a plain
  dict of tensors, numbers and strings, :func:`restore_state` loads such a dict back after
  checking it was written for the same networks, freezing plan and global batch.

A resume file that cannot be read (truncated, or not ours) is skipped with a warning
naming it; the previous intact one is used instead.
"""
from __future__ import annotations

import abc
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cartoon_stylegan import checkpoint as ckpt

__all__ = [
    "RESUME_FORMAT", "resume_path", "resume_files", "find_latest_resume", "read_resume_step",
    "rng_state", "set_rng_state", "newest_readable", "SnapshotMismatch", "own_resume_files",
    "resume_files_of_kind", "CheckpointStore", "LocalCheckpoints", "LoopState", "capture_state",
    "restore_state",
]

RESUME_FORMAT = ckpt.RESUME_FORMAT
_RESUME_RE = re.compile(r"^resume-(\d{9,})\.(pt|ds)$")


# ----------------------------------------------------------------------------- naming

def resume_path(ckpt_dir: str | os.PathLike, nimg: int, kind: str = ".pt") -> Path:
    """ckpt_dir/resume-<images seen:09d>.pt (kind ".ds": the DeepSpeed backend's directory)"""
    return Path(ckpt_dir) / f"resume-{int(nimg):09d}{kind}"


def resume_files(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The resume files (and DeepSpeed resume directories) in ckpt_dir, oldest (fewest images seen) first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _RESUME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


class SnapshotMismatch(ValueError):
    """A snapshot that is intact but was written for another setup (world size, ZeRO stage): resuming
    must stop with this message, not fall back to an older snapshot or a fresh start."""


_BACKEND_OF_KIND = {".pt": "ddp", ".ds": "deepspeed"}


def resume_files_of_kind(ckpt_dir: str | os.PathLike, kind: str) -> list[Path]:
    return [p for p in resume_files(ckpt_dir) if p.suffix == kind]


def own_resume_files(ckpt_dir: str | os.PathLike, kind: str) -> list[Path]:
    """The resume files of ``kind`` (".pt" DDP, ".ds" DeepSpeed) in ckpt_dir, oldest first; refuses (ValueError)
    when the newest snapshot there is of the other kind: another backend's run, not to be restarted silently."""
    files = resume_files(ckpt_dir)
    if files and files[-1].suffix != kind:
        other, mine = _BACKEND_OF_KIND[files[-1].suffix], _BACKEND_OF_KIND[kind]
        raise ValueError(f"{files[-1]} was written by launch.backend={other}; this run uses launch.backend={mine}. "
                         f"Resume it with launch.backend={other}, or move the checkpoints aside to start over")
    return resume_files_of_kind(ckpt_dir, kind)


def newest_readable(files: list[Path], load: Callable[[Path], dict]) -> tuple[Path, dict] | None:
    """(path, state) of the newest file ``load`` can read; warns about each newer one it skips.
    A :class:`SnapshotMismatch` is raised, not skipped."""
    for path in reversed(files):
        try:
            return path, load(path)
        except SnapshotMismatch:
            raise
        except Exception as e:  # noqa: BLE001 -- truncated zip, foreign pickle, wrong format: all mean "skip"
            warnings.warn(f"resume file {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "falling back to the previous one", RuntimeWarning, stacklevel=3)
    return None


def _peek(path: Path) -> dict:
    """The state of a resume file with its tensors memory-mapped (cheap: checks the file, reads little)."""
    return ckpt.load_resume(path / "loop.pt" if path.is_dir() else path, mmap=True)


def find_latest_resume(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest readable resume file in ckpt_dir (most images seen), or None: where `train` resumes."""
    found = newest_readable(resume_files(ckpt_dir), _peek)
    return None if found is None else found[0]


def read_resume_step(ckpt_dir: str | os.PathLike) -> int:
    """The step `train` would resume at (0 for a fresh run)."""
    found = newest_readable(resume_files(ckpt_dir), _peek)
    return 0 if found is None else int(found[1]["step"])


# ----------------------------------------------------------------------------- storage

class CheckpointStore(abc.ABC):
    """Where the loop's state dicts go. Every process calls every method; the store decides who writes."""

    @abc.abstractmethod
    def latest(self) -> tuple[str, dict] | None:
        """(where, state) of the newest intact snapshot, or None for a fresh run."""

    @abc.abstractmethod
    def save(self, state: dict, nimg: int) -> str:
        """Write ``state`` as the snapshot at ``nimg`` images; returns where (the same on every process)."""

    @abc.abstractmethod
    def load(self, path: str | os.PathLike) -> dict:
        """The state dict of one snapshot."""

    @abc.abstractmethod
    def path_for(self, nimg: int) -> Path:
        """Where the snapshot at ``nimg`` images goes."""

    def restore(self, path: str | os.PathLike) -> None:
        """Load what the store holds itself (not in the state dict) from snapshot ``path``; called by
        the loop after the state dict is restored. Nothing for a one-file store."""

    @abc.abstractmethod
    def prune(self) -> None:
        """Delete the snapshots the store no longer keeps."""


class LocalCheckpoints(CheckpointStore):
    """One resume file per snapshot in ``ckpt_dir``, written by the main process (``writer``) only;
    the newest ``keep`` are kept."""

    def __init__(self, ckpt_dir: str | os.PathLike, keep: int = 3, *, writer: bool = True):
        if keep < 1:
            raise ValueError(f"LocalCheckpoints: keep must be >= 1, got {keep}")
        self.dir, self.keep, self.writer = Path(ckpt_dir), int(keep), bool(writer)

    def path_for(self, nimg: int) -> Path:
        return resume_path(self.dir, nimg)

    def latest(self) -> tuple[str, dict] | None:
        found = newest_readable(own_resume_files(self.dir, ".pt"), self.load)
        return None if found is None else (str(found[0]), found[1])

    def save(self, state: dict, nimg: int) -> str:
        path = self.path_for(nimg)
        if self.writer:
            ckpt.save_resume(path, state)  # temp file + fsync + rename
            self.prune()
        return str(path)

    def load(self, path: str | os.PathLike) -> dict:
        return ckpt.load_resume(path)

    def prune(self) -> None:
        if self.writer:
            for old in resume_files_of_kind(self.dir, ".pt")[:-self.keep]:
                old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- content

def rng_state() -> dict:
    """The global RNG states (torch CPU, CUDA, numpy, python) as tensors and plain data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (CUDA only when the same number of devices is visible)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


@dataclass
class LoopState:
    """Everything a run's trajectory depends on at a step boundary (the modules unwrapped)."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: Any                     # training.ema.EMA
    ada: Any                     # training.ada.AdaptiveAugment or None
    phases: Any                  # training.phases.StyleGAN2Phases (holds the running path-length mean)
    step: int = 0
    nimg: int = 0
    rank: int = 0                # this process; picks its own running path-length mean on restore
    pl_means: Any = None         # every process's path-length mean (1-d, by rank), gathered before a save


def capture_state(s: LoopState, *, run: dict, scaler=None, held=frozenset()) -> dict:
    """The resume dict of ``s``. ``run``: what the run was started with (``batch_total``, ``world_size``,
    ``opts``, ``freeze``, ``structure``), checked again by :func:`restore_state`. ``held``: keys
    ("g", "d", "opt_g", "opt_d") the checkpoint store writes itself, left out here."""
    state = {
        "format": RESUME_FORMAT,
        "step": s.step,
        "nimg": s.nimg,
        **run,
        "g_config": dict(s.G.config),
        "d_config": dict(s.D.config),
        "g": s.G.state_dict(),
        "d": s.D.state_dict(),
        "g_ema": s.G_ema.state_dict(),
        "opt_g": s.opt_g.state_dict(),
        "opt_d": s.opt_d.state_dict(),
        "ema": s.ema.state_dict(),
        "ada": s.ada.state_dict() if s.ada is not None else None,
        "pl_mean": (s.pl_means if s.pl_means is not None else s.phases.pl_mean).detach().cpu(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
    }
    for key in held:
        del state[key]
    return state


def restore_state(s: LoopState, state: dict, *, run: dict, held=frozenset()) -> dict | None:
    """Load ``state`` into ``s`` (modules, optimisers, EMA, ADA, phases, counters, global RNGs).

    Refuses (ValueError) a state written for other networks, another freezing plan, another
    global batch or another ADA setting. ``held``: keys the checkpoint store restores itself.
    Returns the grad scaler's state (or None), which can
    only be loaded once Accelerate has made the scaler.
    """
    if state.get("format") != RESUME_FORMAT:
        raise ValueError(f"not a resume checkpoint (format {state.get('format')!r})")
    if dict(state["g_config"]) != dict(s.G.config) or dict(state["d_config"]) != dict(s.D.config):
        raise ValueError(f"resume checkpoint was written for other networks: {state['g_config']} / {state['d_config']}")
    if dict(state["freeze"]) != run["freeze"]:
        raise ValueError(f"resume checkpoint was written with freeze plan {state['freeze']}, now {run['freeze']}")
    if int(state["batch_total"]) != run["batch_total"]:
        raise ValueError(f"resume checkpoint used a global batch of {state['batch_total']}, now {run['batch_total']}")
    if (state["ada"] is None) != (s.ada is None):
        raise ValueError("resume checkpoint and options disagree on ADA")
    for module, key in ((s.G, "g"), (s.D, "d"), (s.G_ema, "g_ema")):
        if key not in held:
            ckpt.check_compatible(module, state[key])
            module.load_state_dict(state[key], strict=True)
    for opt, key in ((s.opt_g, "opt_g"), (s.opt_d, "opt_d")):
        if key not in held:
            opt.load_state_dict(state[key])
    s.ema.load_state_dict(state["ema"])
    if s.ada is not None:
        s.ada.load_state_dict(state["ada"])
    pl = state["pl_mean"]
    if pl.ndim == 1:  # one per process: each rank's mean follows its own batches (as in NVlabs' and rosinality's)
        # the same processes: each its own; another number of them: all start from the mean of the means
        pl = pl[s.rank] if pl.numel() == int(run.get("world_size", pl.numel())) else pl.mean()
    s.phases.pl_mean = pl.to(s.phases.pl_mean.device)
    s.step, s.nimg = int(state["step"]), int(state["nimg"])
    set_rng_state(state["rng"])
    return state.get("scaler")
