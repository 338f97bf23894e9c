"""How the loop's gradients are reduced and its optimisers stepped: DDP (Accelerate) or DeepSpeed ZeRO.

The loop (``loop.py``) and the phases (``phases.py``) talk to a backend through six calls:

==================  =====================================================================
``prepare``         wrap G and D (and their Adam optimisers); returns the modules the
                    phases run their forwards through
``backward(l, n)``  back-propagate loss ``l`` of network ``n`` ("G" or "D")
``zero_grad(n)``    clear ``n``'s gradients before a phase
``step(n)``         apply ``n``'s optimiser after a phase
``store(...)``      the :class:`~cartoon_stylegan.training.state.CheckpointStore` for resume state
``held``            the resume-state keys the store writes itself (not in the loop's dict)
==================  =====================================================================

:class:`DDPBackend` is Accelerate's ``prepare`` + ``backward``: DDP-wrapped modules, the
loop's torch Adam optimisers, one resume file written by rank 0 (``resume-<nimg>.pt``).

:class:`DeepSpeedBackend` makes G and D two DeepSpeed engines (plain ``deepspeed.initialize``,
one per network, each with the loop's own Adam over the *trainable* parameters only, so
frozen parameters carry no gradient and no optimiser state). Why not Accelerate's DeepSpeed
integration: one ``Accelerator`` holds one DeepSpeed model unless every model gets its own
plugin, it needs ``transformers`` installed, and the loop needs its own control of which
forward goes through which module (below). The processes are still started and joined by
``accelerate launch`` (DDP-style, one launcher per node), so local and SLURM launches are the
same for both backends; DeepSpeed adopts the process group Accelerate created.

The GAN step under DeepSpeed:

* every forward runs the **bare module** (``engine.module``), every backward goes through
  ``engine.backward`` and every update through ``engine.step``. ZeRO reduces gradients from
  hooks on the parameters, not from the forward, so bare forwards are reduced correctly;
  while a forward *through the engine* followed by a double backward (R1 w.r.t. D's input,
  path length w.r.t. W) or by a backward the engine did not start (G's loss through D) is
  refused by DeepSpeed ("Direct calls to tensor.backward() are not supported") under ZeRO-0
  and breaks its gradient buckets under ZeRO-1/2.
* precision: weights, gradients and the optimiser stay fp32 in DeepSpeed; on a GPU
  ``launch.mixed_precision=bf16`` runs the forwards under autocast, as the DDP path does.
  DeepSpeed's own ``fp16``/``bf16`` sections are refused: they turn the module's weights into
  half precision (the G_ema average and the regularisers' double backward need fp32 weights,
  and the bare forwards would get fp32 inputs). fp16 autocast needs a loss scaler that
  ZeRO's ``backward`` does not take from Accelerate, so it is refused too: use bf16.
* ZeRO-3 is refused: it partitions the parameters themselves, and every step reads all of
  G's weights (the EMA update, the sampler's bare forwards) and runs D's bare module for R1
  and for G's loss; gathering them outside the engine each phase would cost more than the
  partitioning saves for networks of StyleGAN2's size (30 M parameters at 1024 px).
  ZeRO-1 (optimiser state partitioned) and ZeRO-2 (gradients too) are what a GAN gains from.

Resume under DeepSpeed (:class:`DeepSpeedCheckpoints`): ``resume-<nimg>.ds/`` holding
``G/`` and ``D/`` (DeepSpeed's own checkpoint of each engine: the weights written by rank 0
and, under ZeRO, one optimiser partition file per rank) and ``loop.pt`` (our state: step,
images seen, G_ema, the EMA and ADA state, the path-length mean, RNG). It is written under
``.partial-resume-<nimg>.ds/`` and renamed once every rank has finished writing, so a killed
job never leaves a directory that looks complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

import torch

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.training.state import (
    CheckpointStore,
    LocalCheckpoints,
    SnapshotMismatch,
    newest_readable,
    own_resume_files,
    resume_files_of_kind,
    resume_path,
)
from toolbox import fsync_dir

__all__ = ["BACKENDS", "DDPBackend", "DeepSpeedBackend", "DeepSpeedCheckpoints", "DeepSpeedConfigError",
           "check_deepspeed_config", "deepspeed_config_path", "make_backend", "SHIPPED_DEEPSPEED"]

BACKENDS = ("ddp", "deepspeed")
# the presets are package data (pyproject: package-data), found through the package so that a wheel or
# a non-editable install has them too
SHIPPED_DEEPSPEED = Path(str(resources.files("cartoon_stylegan.training") / "deepspeed_presets"))
_NETS = ("G", "D")


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config this loop cannot train with (the message names the file and key)."""


# ----------------------------------------------------------------------------- DDP

class DDPBackend:
    """Accelerate's DDP: ``prepare`` wraps G and D, ``backward`` is ``accelerator.backward``."""

    name = "ddp"
    held: frozenset = frozenset()

    def __init__(self, accelerator):
        self.acc = accelerator
        self.opt: dict[str, torch.optim.Optimizer] = {}

    def prepare(self, G, D, opt_g, opt_d):
        G, D, self.opt["G"], self.opt["D"] = self.acc.prepare(G, D, opt_g, opt_d)
        return G, D

    @property
    def optimizers(self):
        return self.opt["G"], self.opt["D"]

    def backward(self, loss, net: str) -> None:
        self.acc.backward(loss)

    def zero_grad(self, net: str) -> None:
        self.opt[net].zero_grad(set_to_none=True)

    def step(self, net: str) -> None:
        self.opt[net].step()

    def store(self, ckpt_dir, keep: int, *, writer: bool) -> CheckpointStore:
        return LocalCheckpoints(ckpt_dir, keep, writer=writer)

    def describe(self) -> str:
        return f"ddp ({self.acc.num_processes} process{'es' if self.acc.num_processes > 1 else ''})"


# ----------------------------------------------------------------------------- DeepSpeed config

def deepspeed_config_path(name_or_path: str) -> Path:
    """A shipped config by name (``zero1``, ``zero2`` -> the package's deepspeed_presets/<name>.json) or a JSON file."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path):
        return SHIPPED_DEEPSPEED / f"{name_or_path}.json"
    return Path(name_or_path)


def check_deepspeed_config(cfg: dict, where: str = "the DeepSpeed config") -> dict:
    """``cfg`` checked for this loop; returns it. Raises DeepSpeedConfigError naming the key."""
    if not isinstance(cfg, dict):
        raise DeepSpeedConfigError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise DeepSpeedConfigError(f"{where}: zero_optimization must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if stage == 3:
        raise DeepSpeedConfigError(
            f"{where}: zero_optimization.stage 3 is not supported for the GAN loop: ZeRO-3 partitions the weights, "
            "but every step reads all of G's weights (EMA, sampling) and runs D's bare module for R1 and G's loss; "
            "use stage 1 (optimizer state partitioned) or 2 (gradients too)")
    if stage not in (0, 1, 2):
        raise DeepSpeedConfigError(f"{where}: zero_optimization.stage must be 0, 1 or 2, got {stage!r}")
    for key in ("fp16", "bf16", "torch_autocast"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("enabled", False):
            raise DeepSpeedConfigError(
                f"{where}: {key}.enabled is not supported: weights and optimizer stay fp32 under DeepSpeed; "
                "set launch.mixed_precision=bf16 for bf16 autocast on a GPU (as under DDP)")
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise DeepSpeedConfigError(
                f"{where}: remove the {key!r} section: the loop brings its own Adam per network (learning rates "
                "and betas corrected for lazy regularisation, set by pretrain/finetune lr_g, lr_d, betas)")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none") if isinstance(zero.get(key), dict) else "none"
        if device not in (None, "none"):
            raise DeepSpeedConfigError(
                f"{where}: zero_optimization.{key} is not supported (it needs DeepSpeed's CPU Adam, built from "
                "source, in place of the loop's optimizer)")
    gas = cfg.get("gradient_accumulation_steps", 1)
    if gas not in (1, "auto"):
        raise DeepSpeedConfigError(f"{where}: gradient_accumulation_steps must be 1 (each GAN phase is one "
                                   f"optimizer step), got {gas!r}")
    if cfg.get("gradient_clipping", 0) not in (0, 0.0):
        raise DeepSpeedConfigError(f"{where}: gradient_clipping is not used by StyleGAN2; set it to 0 or remove it")
    return cfg


def load_deepspeed_config(name_or_path: str) -> tuple[Path, dict]:
    path = deepspeed_config_path(name_or_path)
    if not path.is_file():
        shipped = sorted(p.stem for p in SHIPPED_DEEPSPEED.glob("*.json"))
        raise DeepSpeedConfigError(f"{name_or_path!r} is neither a shipped config ({', '.join(shipped)}) "
                                   f"nor a JSON file ({path} not found)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeepSpeedConfigError(f"{path}: not valid JSON ({e})") from None
    return path, check_deepspeed_config(cfg, str(path))


# ----------------------------------------------------------------------------- DeepSpeed

class DeepSpeedBackend:
    """G and D as two DeepSpeed engines over their trainable parameters (see the module docstring)."""

    name = "deepspeed"
    held = frozenset({"g", "d", "opt_g", "opt_d"})

    def __init__(self, accelerator, config: str | dict = "zero2", *, batch: int | None = None):
        if getattr(accelerator, "mixed_precision", "no") == "fp16":
            raise DeepSpeedConfigError("launch.mixed_precision=fp16 is not supported with launch.backend=deepspeed "
                                       "(ZeRO's backward takes no loss scaler from Accelerate); use bf16")
        self.acc = accelerator
        if isinstance(config, dict):
            self.where, cfg = "the DeepSpeed config", check_deepspeed_config(dict(config))
        else:
            path, cfg = load_deepspeed_config(config)
            self.where = str(path)
        self.config = dict(cfg)
        self.batch = batch
        self.engines: dict = {}

    @property
    def zero_stage(self) -> int:
        return int(self.config.get("zero_optimization", {}).get("stage", 0))

    def _engine_config(self) -> dict:
        cfg = json.loads(json.dumps(self.config))  # a deep copy DeepSpeed may annotate
        world = self.acc.num_processes
        per_rank = cfg.get("train_micro_batch_size_per_gpu", "auto")
        if self.batch is not None:
            if per_rank not in ("auto", self.batch):
                raise DeepSpeedConfigError(f"{self.where}: train_micro_batch_size_per_gpu is {per_rank}, but the stage's "
                                           f"batch (per process) is {self.batch}; remove the key or set it to 'auto'")
            per_rank = self.batch
        if per_rank == "auto":
            per_rank = 1  # only DeepSpeed's bookkeeping reads it: the loop brings its own batches
        total = cfg.get("train_batch_size", "auto")
        if total not in ("auto", per_rank * world):
            raise DeepSpeedConfigError(f"{self.where}: train_batch_size is {total}, but {world} processes x "
                                       f"{per_rank} per process = {per_rank * world}; remove the key or set it to 'auto'")
        # gradient_clipping: DeepSpeed clips to norm 1.0 unless told otherwise; StyleGAN2 never clips
        cfg.update(train_micro_batch_size_per_gpu=per_rank, train_batch_size=per_rank * world,
                   gradient_accumulation_steps=1, zero_allow_untested_optimizer=True, gradient_clipping=0.0)
        cfg.setdefault("steps_per_print", 2**31 - 1)
        cfg.setdefault("wall_clock_breakdown", False)
        return cfg

    def prepare(self, G, D, opt_g, opt_d):
        try:
            import deepspeed
        except ImportError:
            raise DeepSpeedConfigError("launch.backend=deepspeed needs the deepspeed package: "
                                       "pip install -e '.[deepspeed]'") from None
        import logging

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self._single_process_group()
        cfg = self._engine_config()
        for net, module, opt in (("G", G, opt_g), ("D", D, opt_d)):
            engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=cfg)
            self.engines[net] = engine
        return self.engines["G"].module, self.engines["D"].module

    def _single_process_group(self) -> None:
        """DeepSpeed needs a process group. Under a launcher it exists (or its environment does); a stage
        run in the runner's own process gets a one-process rendezvous environment from the runner
        (pipeline.launch.one_process_group): this library only joins it, it never writes it."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return
        if self.acc.num_processes != 1:
            raise RuntimeError("DeepSpeed: several processes but no torch.distributed process group")
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if self.acc.device.type == "cuda" else "gloo",
                                   auto_mpi_discovery=False, verbose=False)

    @property
    def optimizers(self):
        return self.engines["G"].optimizer, self.engines["D"].optimizer

    def backward(self, loss, net: str) -> None:
        self.engines[net].backward(loss)

    def zero_grad(self, net: str) -> None:
        self.engines[net].zero_grad()

    def step(self, net: str) -> None:
        self.engines[net].step()

    def store(self, ckpt_dir, keep: int, *, writer: bool) -> CheckpointStore:
        return DeepSpeedCheckpoints(ckpt_dir, keep, engines=self.engines, writer=writer,
                                    world=self.acc.num_processes, zero_stage=self.zero_stage,
                                    barrier=self.acc.wait_for_everyone)

    def describe(self) -> str:
        n = self.acc.num_processes
        return f"deepspeed ZeRO-{self.zero_stage} ({n} process{'es' if n > 1 else ''}, {self.where})"


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


# ----------------------------------------------------------------------------- choice

def make_backend(accelerator, name: str = "ddp", *, deepspeed_config: str | dict = "zero2", batch: int | None = None):
    """The backend called ``name`` ("ddp" or "deepspeed")."""
    if name == "ddp":
        return DDPBackend(accelerator)
    if name == "deepspeed":
        return DeepSpeedBackend(accelerator, deepspeed_config, batch=batch)
    raise ValueError(f"unknown training backend {name!r}; known: {', '.join(BACKENDS)}")
