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

Resume under DeepSpeed (``deepspeed_store.DeepSpeedCheckpoints``): ``resume-<nimg>.ds/`` holding
``G/`` and ``D/`` (DeepSpeed's own checkpoint of each engine: the weights written by rank 0
and, under ZeRO, one optimiser partition file per rank) and ``loop.pt`` (our state: step,
images seen, G_ema, the EMA and ADA state, the path-length mean, RNG). It is written under
``.partial-resume-<nimg>.ds/`` and renamed once every rank has finished writing, so a killed
job never leaves a directory that looks complete.

The DeepSpeed config files and their checks are in ``deepspeed_config.py``; its checkpoint store in
``deepspeed_store.py``.
"""
from __future__ import annotations

import json

import torch

from cartoon_stylegan.training.deepspeed_config import DeepSpeedConfigError, check_deepspeed_config, load_deepspeed_config
from cartoon_stylegan.training.deepspeed_store import DeepSpeedCheckpoints
from cartoon_stylegan.training.state import CheckpointStore, LocalCheckpoints

__all__ = ["BACKENDS", "DDPBackend", "DeepSpeedBackend", "make_backend"]

BACKENDS = ("ddp", "deepspeed")


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


# ----------------------------------------------------------------------------- choice

def make_backend(accelerator, name: str = "ddp", *, deepspeed_config: str | dict = "zero2", batch: int | None = None):
    """The backend called ``name`` ("ddp" or "deepspeed")."""
    if name == "ddp":
        return DDPBackend(accelerator)
    if name == "deepspeed":
        return DeepSpeedBackend(accelerator, deepspeed_config, batch=batch)
    raise ValueError(f"unknown training backend {name!r}; known: {', '.join(BACKENDS)}")
