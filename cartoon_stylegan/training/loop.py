"""The one GAN training loop (pretraining and fine-tuning), written against HF Accelerate.

This file schedules; its neighbours do the work:
  * ``phases.py``  the losses of a step (D main, lazy R1, G main + structure, lazy path length);
  * ``state.py``   what a resume file holds and where it goes (``CheckpointStore``);
  * ``options.py`` the settings (``LoopOptions``) and the result (``TrainResult``);
  * ``cartoon_stylegan.sampling`` how the generator is sampled (FreezeSG's source W+ prefix).
One step = the phases ``StyleGAN2Phases.schedule(step)`` lists, each followed by its
optimiser's step, then the G_ema update and the ADA tuning. Side effects (files, reports,
the progress bar) happen on the main process only.

Randomness and exact resume
---------------------------
Every random number the loop draws comes from the phases' torch.Generator on the device
and host ``random.Random``, both re-seeded at the start of every step from (opts.seed,
process index, step). The loop never uses the global RNGs, so a run's trajectory depends
only on its state at a step boundary; that state (G, D, G_ema, both optimisers, EMA
counters, ADA state, each process's running path-length mean, step, images seen, the grad
scaler) is what a resume checkpoint holds (``state.capture_state``; under DeepSpeed the networks
and optimisers go to the engines' own per-rank files, see ``backends.py``). The global RNG states (torch CPU,
CUDA, numpy, python) are also saved and restored, for code outside the loop.

The data stream can not be checkpointed. `data` is therefore either
  * a callable `data(start_step) -> iterator of batches` (the preferred form): the loop
    calls it with the step it starts (or resumes) at, and the iterator must yield the
    batches of steps start_step, start_step + 1, ... For bitwise-exact resume the batch
    of step s must be a function of (seed, s) only. A shuffling loader can come close by
    re-seeding with a seed derived from start_step (statistically equivalent stream,
    not identical), or be exact by skipping `start_step * batch` samples; or
  * any iterable of batches (resume then continues with whatever it yields next).
A batch is a (N, C, H, W) float tensor in [-1, 1] (or a tuple/list whose first item is).
`find_latest_resume(ckpt_dir)` and `read_resume_step(ckpt_dir)` let the caller see, before
calling `train`, where a run will resume.

On CPU with fixed seeds, an interrupted and resumed run equals an uninterrupted one
bit for bit (tests/training/test_loop.py). On CUDA, kernels with non-deterministic
reductions (atomics in backward) make runs differ in the last bits either way.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.imageutil import tile_images, to_uint8
from cartoon_stylegan.ops import backend as ops_backend
from cartoon_stylegan.sampling import Sampler
from cartoon_stylegan.training.ada import AdaptiveAugment, make_augment_pipe
from cartoon_stylegan.training.backends import DDPBackend
from cartoon_stylegan.training.ema import EMA
from cartoon_stylegan.training.freeze import FreezePlan, build_optimizers
from cartoon_stylegan.training.losses import StructureLoss
from cartoon_stylegan.training.options import LoopOptions, NonFiniteLossError, TrainResult
from cartoon_stylegan.training.phases import StyleGAN2Phases, step_seed
from cartoon_stylegan.training.state import (
    RESUME_FORMAT,
    CheckpointStore,
    LoopState,
    capture_state,
    find_latest_resume,
    read_resume_step,
    restore_state,
    resume_path,
)

__all__ = ["TrainingLoop", "train", "find_latest_resume", "read_resume_step", "resume_path", "RESUME_FORMAT"]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _crossed(prev_nimg: int, nimg: int, every_kimg: float) -> bool:
    every = max(int(round(every_kimg * 1000)), 1)
    return nimg // every > prev_nimg // every


class _Tick:
    """Figures summed between two reports, and the time spent training in between."""

    def __init__(self, nimg: int):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.nimg, self.start, self.train_time = nimg, time.perf_counter(), 0.0

    def add(self, names, vals, seconds: float) -> None:
        for k, v in zip(names, vals):
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.train_time += seconds

    def sec_per_kimg(self, nimg: int) -> float:
        return self.train_time / max((nimg - self.nimg) / 1000, 1e-9)

    def metrics(self, nimg: int) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        out.update({
            "Timing/sec_per_kimg": self.sec_per_kimg(nimg),
            "Timing/img_per_s": (nimg - self.nimg) / max(self.train_time, 1e-9),
            "Timing/tick_wall_s": time.perf_counter() - self.start,
        })
        return out


class TrainingLoop:
    """State of one `train` call (see `train` for the arguments); `train_step()` runs one step.

    backend: how gradients are reduced and optimisers stepped (``training.backends``: DDPBackend,
        the default, or DeepSpeedBackend).
    store: where resume files go; default: the backend's (``LocalCheckpoints(ckpt_dir, keep)`` for DDP).
    """

    def __init__(self, accelerator, *, G, D, G_ema, data, opts: LoopOptions, ckpt_dir, report, report_image=None,
                 G_source=None, freeze: FreezePlan | None = None, structure: StructureLoss | None = None,
                 should_stop=lambda: False, state: dict | None = None, store: CheckpointStore | None = None,
                 backend=None):
        self.acc, self.opts, self.ckpt_dir = accelerator, opts, Path(ckpt_dir)
        self.report, self.report_image, self.should_stop = report, report_image, should_stop
        self.freeze = freeze or FreezePlan()
        self.structure = structure if (structure is not None and structure.weight > 0) else None
        self.main, self.device = accelerator.is_main_process, accelerator.device
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch_total = opts.batch * self.world
        self.total_nimg = int(round(opts.kimg * 1000))
        self.backend = backend if backend is not None else DDPBackend(accelerator)
        if state is not None and self.backend.held:
            raise ValueError(f"a resume dict cannot be passed to the {self.backend.name} backend: its checkpoint "
                             "store holds the networks and optimizers; let it find its newest snapshot")

        if opts.compile and self.backend.name != "ddp":
            raise ValueError(f"compile: true is not supported with the {self.backend.name} backend (its engines "
                             "wrap the networks' backward); set compile: false or launch.backend: ddp")
        if (self.freeze.needs_source or self.structure is not None) and G_source is None:
            raise ValueError("freeze_style_up_to and the structure loss need G_source (the frozen source generator)")
        if G_ema is G or G_source is G:
            raise ValueError("G_ema and G_source must be separate modules from G (e.g. copy.deepcopy(G))")
        if G.config != G_ema.config:
            raise ValueError(f"G and G_ema configs differ: {G.config} vs {G_ema.config}")
        if G_source is not None and G_source.config != G.config:
            raise ValueError("G_source must have the same architecture as G")
        self.n_prefix = self.freeze.n_wplus_prefix(G)
        # every rank on one implementation of the custom ops; on a GPU node the local main process
        # builds the kernels once while the others wait (ops.backend.settle)
        self.ops_impl = ops_backend.settle(accelerator, say=lambda m: print(m, file=sys.stderr, flush=True))

        # Freezing happens once, before Accelerate wraps anything.
        g_names, d_names = self.freeze.apply(G, D)
        G.train().to(self.device)
        D.train().to(self.device)
        G_ema.eval().requires_grad_(False).to(self.device)
        if G_source is not None:
            G_source = G_source.eval().requires_grad_(False).to(self.device)
        opt_g, opt_d = build_optimizers(
            G, D, g_names, d_names, lr_g=opts.lr_g, lr_d=opts.lr_d, betas=opts.betas, g_reg_every=opts.pl_every,
            d_reg_every=opts.r1_every, g_reg=opts.pl_weight > 0, d_reg=opts.r1_gamma > 0, lr_mapping=opts.lr_mapping)
        ema = EMA(G_ema, param_names=g_names, ema_kimg=opts.ema_kimg, rampup=opts.ema_rampup)
        ada = None
        if opts.ada:
            pipe = make_augment_pipe(opts.ada_preset, p=opts.ada_p_init).to(self.device)
            ada = AdaptiveAugment(pipe, target=opts.ada_target, ada_kimg=opts.ada_kimg, interval=opts.ada_interval)

        self.G, self.D = self.backend.prepare(G, D, opt_g, opt_d)
        self.opt_g, self.opt_d = self.backend.optimizers
        self.G_raw, self.D_raw = accelerator.unwrap_model(self.G), accelerator.unwrap_model(self.D)
        self.store = store or self.backend.store(self.ckpt_dir, opts.keep_checkpoints, writer=self.main)
        self.sampler = Sampler(self.G_raw, source=G_source, prefix_len=self.n_prefix)
        self.phases = StyleGAN2Phases(accelerator, G=self.G, D=self.D, sampler=self.sampler, opts=opts, ada=ada,
                                      G_source=G_source, structure=self.structure, backend=self.backend)
        if opts.compile:
            if self.main:
                print("[train] compile: torch.compile of G and D for the main phases; the first steps include "
                      "the compile", file=sys.stderr, flush=True)
            self.phases.compile_main()
        self.s = LoopState(G=self.G_raw, D=self.D_raw, G_ema=G_ema, opt_g=self.opt_g, opt_d=self.opt_d, ema=ema,
                           ada=ada, phases=self.phases, rank=self.rank)

        self.resumed_from = None
        if state is None:
            found = self.store.latest()
            if found is not None:
                self.resumed_from, state = found
        if state is not None:
            scaler = restore_state(self.s, state, run=self._run_record(), held=self.backend.held)
            if self.resumed_from is not None:
                self.store.restore(self.resumed_from)
            if scaler is not None and getattr(accelerator, "scaler", None) is not None:
                accelerator.scaler.load_state_dict(scaler)
        self.last_checkpoint = self.resumed_from
        self.start_step = self.s.step
        self.data_iter = iter(data(self.s.step)) if callable(data) and not hasattr(data, "__next__") else iter(data)

    @property
    def step(self) -> int:
        """Steps done (a benchmark may set it: `step % every` picks the lazy phases)."""
        return self.s.step

    @step.setter
    def step(self, value: int) -> None:
        self.s.step = int(value)

    @property
    def nimg(self) -> int:
        return self.s.nimg

    def _run_record(self) -> dict:
        """What this run was started with; a resume file must agree on freeze and batch_total."""
        return {"batch_total": self.batch_total, "world_size": self.world, "opts": self.opts.to_dict(),
                "freeze": self.freeze.to_dict(),
                "structure": asdict(self.structure) if self.structure is not None else None}

    def _next_real(self) -> torch.Tensor:
        batch = next(self.data_iter)
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not torch.is_tensor(batch) or batch.ndim != 4 or batch.shape[0] != self.opts.batch:
            raise ValueError(f"data must yield (batch={self.opts.batch}, C, H, W) tensors, got "
                             f"{getattr(batch, 'shape', type(batch))}")
        return batch.to(self.device, torch.float32, non_blocking=True)

    # ------------------------------------------------------------------ checkpoints
    def _save_resume(self) -> str:
        # each process keeps its own running path-length mean: gather them all, so each resumes with its own
        self.s.pl_means = (self.acc.gather(self.phases.pl_mean.detach().reshape(1)) if self.world > 1
                           else self.phases.pl_mean.detach().reshape(1))
        state = capture_state(self.s, run=self._run_record(), scaler=getattr(self.acc, "scaler", None),
                              held=self.backend.held)
        path = self.store.save(state, self.s.nimg)
        self.acc.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def _save_final(self) -> str:
        path = self.ckpt_dir / "network-final.pt"
        if self.main:
            run = self._run_record()
            ckpt.save_transfer(path, g=self.G_raw, d=self.D_raw, g_ema=self.s.G_ema, meta={
                "step": self.s.step, "kimg": self.s.nimg / 1000, "opts": run["opts"], "freeze": run["freeze"],
                "structure": run["structure"], **self.sampler.meta()})  # how to sample it: Sampler.for_variant
        self.acc.wait_for_everyone()
        return str(path)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, torch.Tensor]:
        """One full step; returns this step's figures as 0-d tensors (not yet synced)."""
        s, o = self.s, self.opts
        self.phases.begin_step(o.seed, self.rank, s.step)
        real = self._next_real()
        figures: dict[str, torch.Tensor] = {}
        for phase in self.phases.schedule(s.step):
            net = phase[0]  # "D" or "G"
            self.backend.zero_grad(net)
            figures.update(self.phases.accumulate_gradients(phase, real))
            self.backend.step(net)
        s.nimg += self.batch_total
        s.step += 1
        s.ema.update(self.G_raw, batch_total=self.batch_total, images_seen=s.nimg)
        if s.ada is not None:
            reduce = (lambda t: self.acc.reduce(t.to(self.device), "sum")) if self.world > 1 else None
            s.ada.tune(self.batch_total, reduce)
        return figures

    # ------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        cols, rows = self.opts.grid
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.opts.seed, 0, 0, stream=2))
        z = torch.randn(cols * rows, self.sampler.style_dim, generator=gen, device=self.device)
        sampler = self.sampler.replace(G=self.s.G_ema)
        out = []
        for zb in z.split(max(self.opts.batch, 1)):
            with self.acc.autocast():
                out.append(sampler(zb, noise_mode="const").float())
        return tile_images(to_uint8(torch.cat(out)).expand(-1, 3, -1, -1), cols)

    def emit_samples(self) -> None:
        if self.report_image is not None and self.main:
            self.report_image("samples", self.sample_grid(), self.s.step)

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        s, o, acc = self.s, self.opts, self.acc
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_nimg, initial=s.nimg, unit="kimg", unit_scale=1e-3, disable=not self.main,
                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]")
        if s.step == 0:
            self.emit_samples()
        tick = _Tick(s.nimg)
        status = "done"
        try:
            while s.nimg < self.total_nimg:
                t0 = time.perf_counter()
                prev_nimg = s.nimg
                figures = self.train_step()
                names = list(figures)
                values = torch.stack([figures[k].float() for k in names])
                stop = bool(self.should_stop())
                flags = torch.tensor([float(not torch.isfinite(values).all()), float(stop)], device=self.device)
                if self.world > 1:
                    flags = acc.reduce(flags, "sum")
                vals = values.cpu().tolist()
                if flags[0].item() > 0:
                    bad = [k for k, v in zip(names, vals) if not math.isfinite(v)] or ["(on another process)"]
                    raise NonFiniteLossError(s.step - 1, bad, self.last_checkpoint, kimg=prev_nimg / 1000)
                tick.add(names, vals, time.perf_counter() - t0)
                # clamp: the last batch may overshoot the budget, and tqdm cannot format n > total
                bar.update(min(s.nimg, self.total_nimg) - min(prev_nimg, self.total_nimg))
                if self.main and s.step % o.log_every == 0:
                    bar.set_postfix_str(f"G {vals[names.index('Loss/G')]:.3f} D {vals[names.index('Loss/D')]:.3f} "
                                        f"p {s.ada.p if s.ada else 0:.3f} {tick.sec_per_kimg(s.nimg):.1f} s/kimg",
                                        refresh=False)
                if _crossed(prev_nimg, s.nimg, o.tick_kimg) or s.nimg >= self.total_nimg:
                    metrics = tick.metrics(s.nimg)
                    metrics.update({"ADA/p": s.ada.p if s.ada else 0.0, "ADA/rt": s.ada.rt if s.ada else 0.0,
                                    "Resources/peak_mem_mb": _peak_memory_mb(self.device),
                                    "Progress/kimg": s.nimg / 1000})
                    if self.main:
                        self.report(metrics, s.step)
                    tick = _Tick(s.nimg)
                if _crossed(prev_nimg, s.nimg, o.sample_kimg):
                    self.emit_samples()
                if flags[1].item() > 0:
                    self._save_resume()
                    status = "stopped"
                    break
                if _crossed(prev_nimg, s.nimg, o.snapshot_kimg) and s.nimg < self.total_nimg:
                    self._save_resume()
        finally:
            bar.close()

        final = None
        if status == "done":
            if self.last_checkpoint != str(self.store.path_for(s.nimg)):
                self._save_resume()
            if not _crossed(s.nimg - self.batch_total, s.nimg, o.sample_kimg) and s.step > self.start_step:
                self.emit_samples()
            final = self._save_final()
        return TrainResult(status=status, kimg=s.nimg / 1000, step=s.step, last_checkpoint=self.last_checkpoint,
                           start_step=self.start_step, resumed_from=self.resumed_from, final_network=final)


def train(
    accelerator,
    *,
    G: torch.nn.Module,
    D: torch.nn.Module,
    G_ema: torch.nn.Module,
    data: Callable[[int], Iterable] | Iterable,
    opts: LoopOptions,
    ckpt_dir: str | os.PathLike,
    report: Callable[[dict[str, float], int], None],
    report_image: Callable[[str, np.ndarray, int], None] | None = None,
    G_source: torch.nn.Module | None = None,
    freeze: FreezePlan | None = None,
    structure: StructureLoss | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    state: dict | None = None,
    backend=None,
) -> TrainResult:
    """Train G and D with `opts` until `opts.kimg` thousand images have been shown.

    accelerator: an `accelerate.Accelerator` (device, processes, mixed precision).
    G, D, G_ema: the networks (G_ema: a copy of G's architecture holding the average;
        at a fresh start it should equal G). They are moved to the device here.
    data: `data(start_step) -> iterator` (preferred, see the module docstring) or an
        iterable of (batch, C, H, W) tensors in [-1, 1]; this process's shard.
    ckpt_dir: where resume files (`resume-<nimg:09d>.pt`) and `network-final.pt` go; the
        newest intact resume file there is loaded on start (unless `state` is given).
    report(metrics, step) / report_image(name, uint8 HWC, step): main process only.
    G_source: the frozen source generator (fine-tuning with freeze_style_up_to or the
        structure loss).
    freeze: which parameters train (`FreezePlan`); None trains everything.
    structure: the structure loss setting; None or weight 0 = off.
    should_stop: polled after every step; True -> checkpoint and return "stopped".
    state: a resume dict (as written by this loop) to start from instead of ckpt_dir's (DDP only).
    backend: ``training.backends.DDPBackend`` (default) or ``DeepSpeedBackend``.
    Raises NonFiniteLossError (no checkpoint written) if a loss becomes NaN/Inf.
    """
    loop = TrainingLoop(accelerator, G=G, D=D, G_ema=G_ema, data=data, opts=opts, ckpt_dir=ckpt_dir, report=report,
                        report_image=report_image, G_source=G_source, freeze=freeze, structure=structure,
                        should_stop=should_stop, state=state, backend=backend)
    return loop.run()
