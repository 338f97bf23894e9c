"""The one GAN training loop (pretraining and fine-tuning), written against HF Accelerate.

One step = D main (+ lazy R1 every `r1_every` steps) then G main (+ structure loss) (+ lazy
path-length regularisation every `pl_every` steps), then the G_ema update and the ADA
tuning. Side effects (files, reports, the progress bar) happen on the main process only.

Randomness and exact resume
---------------------------
Every random number the loop draws (latents, mixing decisions and crossovers, noise
inputs, ADA parameters, path-length noise) comes from a torch.Generator on the device
and a host `random.Random`, both re-seeded at the start of every step from
(opts.seed, process index, step). The loop never uses the global RNGs, so a run's
trajectory depends only on its state at a step boundary; that state (G, D, G_ema, both
optimisers, EMA counters, ADA state, the running path-length mean, step, images seen,
the grad scaler) is what a resume checkpoint holds. The global RNG states (torch CPU,
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

import contextlib
import math
import os
import random
import re
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.training.ada import AdaptiveAugment, make_augment_pipe
from cartoon_stylegan.training.ema import EMA
from cartoon_stylegan.training.freeze import FreezePlan, build_optimizers
from cartoon_stylegan.training.losses import (
    StructureLoss,
    d_logistic_loss,
    d_r1_loss,
    g_nonsaturating_loss,
    g_path_regularize,
)

__all__ = [
    "LoopOptions",
    "TrainResult",
    "NonFiniteLossError",
    "train",
    "find_latest_resume",
    "read_resume_step",
    "resume_path",
    "RESUME_FORMAT",
]

RESUME_FORMAT = ckpt.RESUME_FORMAT
_RESUME_RE = re.compile(r"^resume-(\d{9,})\.pt$")


@dataclass
class LoopOptions:
    """Every setting of the GAN loop (ranges are validated by pipeline/config.py)."""

    kimg: float = 100.0  # training budget in thousands of real images shown to D (all processes)
    batch: int = 4  # images per step per process (global batch = batch * num_processes)
    lr_g: float = 0.002  # Adam learning rate of G (before the lazy-regularisation correction)
    lr_d: float = 0.002  # Adam learning rate of D (before the lazy-regularisation correction)
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas of both optimisers
    r1_gamma: float = 10.0  # R1 weight gamma (penalty * gamma / 2); 0 disables R1
    r1_every: int = 16  # lazy R1: regularise D every this many steps (loss scaled by it)
    pl_weight: float = 2.0  # path-length regularisation weight; 0 disables it
    pl_every: int = 4  # lazy path-length regularisation every this many steps
    pl_batch_shrink: int = 2  # the path-length batch is batch // pl_batch_shrink
    pl_decay: float = 0.01  # decay of the running mean path length
    mixing_prob: float = 0.9  # probability of style mixing (two latents, random crossover)
    ema_kimg: float = 10.0  # G_ema half-life in thousands of images
    ema_rampup: float | None = 0.05  # half-life at most ema_rampup * images seen; None = off
    ada: bool = False  # adaptive discriminator augmentation on reals and fakes
    ada_target: float = 0.6  # ADA target for E[sign(D(real))]
    ada_kimg: float = 500.0  # ADA speed: p can go 0 -> 1 in this many kimg
    ada_interval: int = 4  # adjust p every this many steps
    ada_p_init: float = 0.0  # initial augmentation probability
    ada_preset: str = "bgc"  # transforms ADA uses (training.ada.AUGMENT_PRESETS)
    tick_kimg: float = 4.0  # report figures every this many kimg
    sample_kimg: float = 20.0  # draw the sample grid every this many kimg
    snapshot_kimg: float = 50.0  # write a resume checkpoint every this many kimg
    keep_checkpoints: int = 3  # keep only the newest K resume checkpoints
    seed: int = 0  # seed of every random draw of the loop (and of the sample grid)
    grid_size: tuple[int, int] = (8, 4)  # sample grid columns x rows
    log_every: int = 10  # refresh the progress bar figures every this many steps

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        self.grid_size = tuple(int(g) for g in self.grid_size)
        assert self.kimg >= 0, f"kimg must be >= 0, got {self.kimg}"
        assert self.batch >= 1, f"batch must be >= 1, got {self.batch}"
        assert self.lr_g >= 0 and self.lr_d >= 0, "learning rates must be >= 0"
        assert len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"bad betas {self.betas}"
        assert self.r1_gamma >= 0 and self.r1_every >= 1, "r1_gamma >= 0, r1_every >= 1"
        assert self.pl_weight >= 0 and self.pl_every >= 1 and self.pl_batch_shrink >= 1, "bad path-length settings"
        assert 0 <= self.mixing_prob <= 1, f"mixing_prob must be in [0, 1], got {self.mixing_prob}"
        assert self.ema_kimg >= 0, "ema_kimg must be >= 0"
        assert self.ema_rampup is None or self.ema_rampup >= 0, "ema_rampup must be >= 0 or None"
        assert 0 <= self.ada_p_init <= 1, "ada_p_init must be in [0, 1]"
        assert self.ada_interval >= 1 and self.ada_kimg > 0, "bad ADA settings"
        assert min(self.tick_kimg, self.sample_kimg, self.snapshot_kimg) > 0, "intervals must be > 0"
        assert self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"
        assert len(self.grid_size) == 2 and min(self.grid_size) >= 1, f"bad grid_size {self.grid_size}"
        assert self.log_every >= 1, "log_every must be >= 1"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"], d["grid_size"] = list(self.betas), list(self.grid_size)
        return d


@dataclass
class TrainResult:
    status: str  # "done" (budget reached) or "stopped" (should_stop; checkpoint written)
    kimg: float  # images seen at the end, in thousands
    step: int  # steps completed at the end
    last_checkpoint: str | None  # newest resume file written or resumed from
    start_step: int = 0  # the step this call started at (> 0 when it resumed)
    resumed_from: str | None = None  # the resume file loaded, if any
    final_network: str | None = None  # network-final.pt (transfer format) when status == "done"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/Inf; the run stops without writing a checkpoint.

    step: index of the failing step (0-based: the number of steps completed before it);
    names: the figures that were not finite, in phase order (D, R1, G, structure, PL);
    last_checkpoint: the newest resume file, untouched.
    """

    def __init__(self, step: int, names: list[str], last_checkpoint: str | None, kimg: float | None = None):
        self.step, self.names, self.last_checkpoint = step, names, last_checkpoint
        at = f" ({kimg:.3f} kimg done before it)" if kimg is not None else ""
        super().__init__(
            f"non-finite loss at step {step}{at}: {', '.join(names)} "
            f"(no checkpoint written; last good checkpoint: {last_checkpoint or 'none'})"
        )


# ----------------------------------------------------------------------------- resume files

def resume_path(ckpt_dir: str | os.PathLike, nimg: int) -> Path:
    """ckpt_dir/resume-<images seen:09d>.pt"""
    return Path(ckpt_dir) / f"resume-{int(nimg):09d}.pt"


def _resume_files(ckpt_dir) -> list[Path]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _RESUME_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_latest_resume(ckpt_dir) -> Path | None:
    """The newest resume file in ckpt_dir (most images seen), or None."""
    files = _resume_files(ckpt_dir)
    return files[-1] if files else None


def read_resume_step(ckpt_dir) -> int:
    """The step `train` would resume at (0 for a fresh run)."""
    path = find_latest_resume(ckpt_dir)
    return 0 if path is None else int(ckpt.load_resume(path)["step"])


# ----------------------------------------------------------------------------- helpers

def _step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, rank, step, stream]).generate_state(1, np.uint64)[0] >> 1)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _to_uint8_grid(images: torch.Tensor, cols: int, rows: int) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (rows*H, cols*W, 3) uint8, row-major."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    n, c, h, w = x.shape
    if c == 1:
        x = x.expand(n, 3, h, w)
    x = x.reshape(rows, cols, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, 3)
    return x.numpy()


@contextlib.contextmanager
def _no_param_grads(params: list[torch.nn.Parameter]):
    """Temporarily stop gradients into `params` (only ever the trainable ones)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _crossed(prev_nimg: int, nimg: int, every_kimg: float) -> bool:
    every = max(int(round(every_kimg * 1000)), 1)
    return nimg // every > prev_nimg // every


# ----------------------------------------------------------------------------- the loop

class _Loop:
    """State of one `train` call; see `train` for the arguments."""

    def __init__(self, accelerator, *, G, D, G_ema, data, opts: LoopOptions, ckpt_dir, report, report_image,
                 G_source, freeze: FreezePlan | None, structure: StructureLoss | None, should_stop, state):
        self.acc = accelerator
        self.opts = opts
        self.ckpt_dir = Path(ckpt_dir)
        self.report = report
        self.report_image = report_image
        self.should_stop = should_stop
        self.freeze = freeze or FreezePlan()
        self.structure = structure if (structure is not None and structure.weight > 0) else None
        self.main = accelerator.is_main_process
        self.device = accelerator.device
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.batch_total = opts.batch * self.world
        self.total_nimg = int(round(opts.kimg * 1000))

        if (self.freeze.needs_source or self.structure is not None) and G_source is None:
            raise ValueError("freeze_style_up_to and the structure loss need G_source (the frozen source generator)")
        if G_ema is G or G_source is G:
            raise ValueError("G_ema and G_source must be separate modules from G (e.g. copy.deepcopy(G))")
        if G.config != G_ema.config:
            raise ValueError(f"G and G_ema configs differ: {G.config} vs {G_ema.config}")
        self.n_latent = int(G.n_latent)
        self.style_dim = int(G.config["style_dim"])
        self.n_prefix = self.freeze.n_wplus_prefix(G)

        # Freezing happens once, before Accelerate wraps anything.
        self.g_names, self.d_names = self.freeze.apply(G, D)
        self.mapping_trainable = any(G.layer_resolution(n) == "mapping" for n in self.g_names)
        G.train().to(self.device)
        D.train().to(self.device)
        G_ema.eval().requires_grad_(False).to(self.device)
        if G_source is not None:
            G_source = G_source.eval().requires_grad_(False).to(self.device)
            if G_source.config != G.config:
                raise ValueError("G_source must have the same architecture as G")
        self.G_source = G_source
        self.G_ema = G_ema
        r1_on, pl_on = opts.r1_gamma > 0, opts.pl_weight > 0
        opt_g, opt_d = build_optimizers(
            G, D, self.g_names, self.d_names, lr_g=opts.lr_g, lr_d=opts.lr_d, betas=opts.betas,
            g_reg_every=opts.pl_every, d_reg_every=opts.r1_every, g_reg=pl_on, d_reg=r1_on)
        self.ema = EMA(G_ema, param_names=self.g_names, ema_kimg=opts.ema_kimg, rampup=opts.ema_rampup)
        self.ada = None
        if opts.ada:
            pipe = make_augment_pipe(opts.ada_preset, p=opts.ada_p_init).to(self.device)
            self.ada = AdaptiveAugment(pipe, target=opts.ada_target, ada_kimg=opts.ada_kimg,
                                       interval=opts.ada_interval)

        self.step = 0
        self.nimg = 0
        self._pending_scaler = None
        self.pl_mean = torch.zeros((), device=self.device)
        self.resumed_from = None
        if state is None:
            latest = find_latest_resume(self.ckpt_dir)
            if latest is not None:
                state = ckpt.load_resume(latest)
                self.resumed_from = str(latest)
        if state is not None:
            self._load_state(state, G, D, opt_g, opt_d)
        self.last_checkpoint = self.resumed_from
        self.start_step = self.step

        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        self.G_raw = accelerator.unwrap_model(self.G)
        self.D_raw = accelerator.unwrap_model(self.D)
        if self._pending_scaler is not None and getattr(accelerator, "scaler", None) is not None:
            accelerator.scaler.load_state_dict(self._pending_scaler)
        self.d_trainable = [p for n, p in self.D_raw.named_parameters() if n in self.d_names]

        self.gen = torch.Generator(device=self.device)
        self.data_iter = self._open_data(data)

    # ------------------------------------------------------------------ setup helpers
    def _open_data(self, data) -> Iterator:
        if callable(data) and not hasattr(data, "__next__"):
            return iter(data(self.step))
        return iter(data)

    def _next_real(self) -> torch.Tensor:
        batch = next(self.data_iter)
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if not torch.is_tensor(batch) or batch.ndim != 4 or batch.shape[0] != self.opts.batch:
            raise ValueError(f"data must yield (batch={self.opts.batch}, C, H, W) tensors, got "
                             f"{getattr(batch, 'shape', type(batch))}")
        return batch.to(self.device, torch.float32, non_blocking=True)

    # ------------------------------------------------------------------ state
    def _state_dict(self) -> dict:
        acc = self.acc
        return {
            "format": RESUME_FORMAT,
            "step": self.step,
            "nimg": self.nimg,
            "batch_total": self.batch_total,
            "world_size": self.world,
            "g_config": dict(self.G_raw.config),
            "d_config": dict(self.D_raw.config),
            "g": self.G_raw.state_dict(),
            "d": self.D_raw.state_dict(),
            "g_ema": self.G_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict(),
            "ada": self.ada.state_dict() if self.ada is not None else None,
            "pl_mean": self.pl_mean.detach().cpu(),
            "scaler": acc.scaler.state_dict() if getattr(acc, "scaler", None) is not None else None,
            "rng": _rng_state(),
            "opts": self.opts.to_dict(),
            "freeze": self.freeze.to_dict(),
            "structure": asdict(self.structure) if self.structure is not None else None,
        }

    def _load_state(self, state: dict, G, D, opt_g, opt_d) -> None:
        if state.get("format") != RESUME_FORMAT:
            raise ValueError(f"not a resume checkpoint (format {state.get('format')!r})")
        if dict(state["g_config"]) != dict(G.config) or dict(state["d_config"]) != dict(D.config):
            raise ValueError(f"resume checkpoint was written for other networks: {state['g_config']} / {state['d_config']}")
        if dict(state["freeze"]) != self.freeze.to_dict():
            raise ValueError(f"resume checkpoint was written with freeze plan {state['freeze']}, now {self.freeze.to_dict()}")
        if int(state["batch_total"]) != self.batch_total:
            raise ValueError(f"resume checkpoint used a global batch of {state['batch_total']}, now {self.batch_total}")
        for module, key in ((G, "g"), (D, "d"), (self.G_ema, "g_ema")):
            ckpt.check_compatible(module, state[key])
            module.load_state_dict(state[key], strict=True)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        if (state["ada"] is None) != (self.ada is None):
            raise ValueError("resume checkpoint and options disagree on ADA")
        if self.ada is not None:
            self.ada.load_state_dict(state["ada"])
        self.pl_mean = state["pl_mean"].to(self.device)
        self._pending_scaler = state.get("scaler")
        self.step, self.nimg = int(state["step"]), int(state["nimg"])
        _set_rng_state(state["rng"])

    def _save_resume(self) -> str:
        path = resume_path(self.ckpt_dir, self.nimg)
        state = self._state_dict() if self.main else None  # state_dict is cheap; only main writes
        if self.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt.save_resume(path, state)
            for old in _resume_files(self.ckpt_dir)[:-self.opts.keep_checkpoints]:
                old.unlink(missing_ok=True)
        self.acc.wait_for_everyone()
        self.last_checkpoint = str(path)
        return str(path)

    def _save_final(self) -> str:
        path = self.ckpt_dir / "network-final.pt"
        if self.main:
            ckpt.save_transfer(path, g=self.G_raw, d=self.D_raw, g_ema=self.G_ema, meta={
                "step": self.step, "kimg": self.nimg / 1000, "opts": self.opts.to_dict(),
                "freeze": self.freeze.to_dict(), "wplus_prefix_len": self.n_prefix,
                "structure": asdict(self.structure) if self.structure is not None else None,
            })
        self.acc.wait_for_everyone()
        return str(path)

    # ------------------------------------------------------------------ generation
    def _draw_latents(self, n: int, host: random.Random):
        z1 = torch.randn(n, self.style_dim, generator=self.gen, device=self.device)
        if self.opts.mixing_prob > 0 and host.random() < self.opts.mixing_prob:
            z2 = torch.randn(n, self.style_dim, generator=self.gen, device=self.device)
            return z1, z2, host.randint(1, self.n_latent - 1)
        return z1, None, None

    def _draw_noise(self, n: int) -> list[torch.Tensor]:
        return self.G_raw.make_noise(n, generator=self.gen)

    @torch.no_grad()
    def _source_prefix(self, z1, z2, crossover):
        """The W+ of G_source for the same latents (only its first n_prefix entries are used)."""
        if self.n_prefix == 0:
            return None
        Gs = self.G_source
        w2 = Gs.mapping(z2) if z2 is not None else None
        return Gs.make_wplus(Gs.mapping(z1), w2, crossover)

    def _generate(self, G_call, z1, z2, crossover, noise, *, noise_mode="random", **ret):
        return G_call(z1, input_is="z", noise_mode=noise_mode, noise=noise, mix_latents=z2, mix_index=crossover,
                      wplus_prefix=self._source_prefix(z1, z2, crossover), wplus_prefix_len=self.n_prefix, **ret)

    @torch.no_grad()
    def _wplus_constant(self, z1, z2, crossover) -> torch.Tensor:
        """The W+ `_generate` would feed G, computed without a graph."""
        G = self.G_raw
        wplus = G.make_wplus(G.mapping(z1), G.mapping(z2) if z2 is not None else None, crossover)
        prefix = self._source_prefix(z1, z2, crossover)
        if prefix is not None:
            wplus = torch.cat([prefix[:, :self.n_prefix], wplus[:, self.n_prefix:]], 1)
        return wplus.contiguous()

    def _augment(self, images):
        if self.ada is None:
            return images
        return self.ada.pipe(images, generator=self.gen)

    def _d_input(self, images):
        return self._augment(images)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, torch.Tensor]:
        """One full step; returns this step's figures as 0-d tensors (not yet synced)."""
        o, acc = self.opts, self.acc
        step = self.step
        self.gen.manual_seed(_step_seed(o.seed, self.rank, step))
        host = random.Random(_step_seed(o.seed, self.rank, step, stream=1))
        figures: dict[str, torch.Tensor] = {}
        real = self._next_real()
        n = o.batch

        # -- D main: logistic loss on (augmented) reals and fakes.
        with torch.no_grad(), acc.autocast():
            z1, z2, cross = self._draw_latents(n, host)
            fake = self._generate(self.G_raw, z1, z2, cross, self._draw_noise(n))
        with acc.autocast():
            fake_pred = self.D(self._d_input(fake.detach()))
            real_pred = self.D(self._d_input(real))
            loss_d = d_logistic_loss(real_pred.float(), fake_pred.float())
        self.opt_d.zero_grad(set_to_none=True)
        acc.backward(loss_d)
        self.opt_d.step()
        figures["Loss/D"] = loss_d.detach()
        figures["Scores/real"] = real_pred.detach().float().mean()
        figures["Scores/fake"] = fake_pred.detach().float().mean()
        if self.ada is not None:
            self.ada.accumulate(real_pred)

        # -- D reg: lazy R1 on reals (through the augmentation, gradient w.r.t. the clean reals).
        if o.r1_gamma > 0 and step % o.r1_every == 0:
            real_r = real.detach().requires_grad_(True)
            with acc.autocast():
                pred = self.D(self._d_input(real_r))
            r1 = d_r1_loss(pred.float(), real_r)
            self.opt_d.zero_grad(set_to_none=True)
            acc.backward(r1 * (o.r1_gamma / 2 * o.r1_every) + 0 * pred.float()[0].sum())
            self.opt_d.step()
            figures["Loss/R1"] = r1.detach()

        # -- G main: non-saturating loss (+ structure loss against the frozen source).
        z1, z2, cross = self._draw_latents(n, host)
        noise = self._draw_noise(n)
        want = {}
        if self.structure is not None:
            want = {"return_rgbs": self.structure.on == "rgb", "return_features": self.structure.on == "features"}
        with _no_param_grads(self.d_trainable), acc.autocast():
            img, extras = self._generate(self.G, z1, z2, cross, noise, return_latents=True, **want)
            loss_g = g_nonsaturating_loss(self.D_raw(self._d_input(img)).float())
            total = loss_g
            if self.structure is not None:
                with torch.no_grad():
                    _, src_extras = self.G_source.synthesis(extras["latents"].detach(), noise=noise,
                                                            stop_res=self.structure.up_to, **want)
                loss_s = self.structure(src_extras, extras)
                total = total + self.structure.weight * loss_s
                figures["Loss/structure"] = loss_s.detach()
        self.opt_g.zero_grad(set_to_none=True)
        acc.backward(total)
        self.opt_g.step()
        figures["Loss/G"] = loss_g.detach()

        # -- G reg: lazy path-length regularisation on a smaller batch.
        if o.pl_weight > 0 and step % o.pl_every == 0:
            m = max(1, n // o.pl_batch_shrink)
            z1, z2, cross = self._draw_latents(m, host)
            noise = self._draw_noise(m)
            with acc.autocast():
                if self.mapping_trainable:  # W+ comes out of the mapping network with its graph
                    img, extras = self._generate(self.G, z1, z2, cross, noise, return_latents=True)
                    wplus = extras["latents"]
                else:  # frozen mapping: W+ is a constant, make it a leaf to differentiate against
                    wplus = self._wplus_constant(z1, z2, cross).requires_grad_(True)
                    img = self.G(wplus, input_is="wplus", noise=noise)
            pl_noise = torch.randn(img.shape, generator=self.gen, device=self.device, dtype=img.dtype)
            penalty, self.pl_mean, lengths = g_path_regularize(img, wplus, self.pl_mean,
                                                               decay=o.pl_decay, noise=pl_noise)
            self.opt_g.zero_grad(set_to_none=True)
            acc.backward(penalty * (o.pl_weight * o.pl_every) + 0 * img.float()[:, 0, 0, 0].sum())
            self.opt_g.step()
            figures["Loss/PL"] = penalty.detach()
            figures["Loss/PL_length"] = lengths.detach().mean()

        # -- bookkeeping: G_ema, images seen, ADA.
        self.nimg += self.batch_total
        self.step += 1
        self.ema.update(self.G_raw, batch_total=self.batch_total, images_seen=self.nimg)
        if self.ada is not None:
            reduce = (lambda t: self.acc.reduce(t.to(self.device), "sum")) if self.world > 1 else None
            self.ada.tune(self.batch_total, reduce)
        return figures

    # ------------------------------------------------------------------ samples, reports
    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        cols, rows = self.opts.grid_size
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_step_seed(self.opts.seed, 0, 0, stream=2))
        z = torch.randn(cols * rows, self.style_dim, generator=gen, device=self.device)
        out = []
        for zb in z.split(max(self.opts.batch, 1)):
            with self.acc.autocast():
                out.append(self._generate(self.G_ema, zb, None, None, None, noise_mode="const").float())
        return _to_uint8_grid(torch.cat(out), cols, rows)

    def emit_samples(self) -> None:
        if self.report_image is not None:
            grid = self.sample_grid() if self.main else None
            if self.main:
                self.report_image("samples", grid, self.step)

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        o, acc = self.opts, self.acc
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_nimg, initial=self.nimg, unit="kimg", unit_scale=1e-3, disable=not self.main,
                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]")
        if self.step == 0:
            self.emit_samples()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        tick_nimg, tick_time, train_time = self.nimg, time.perf_counter(), 0.0
        status = "done"
        try:
            while self.nimg < self.total_nimg:
                t0 = time.perf_counter()
                prev_nimg = self.nimg
                figures = self.train_step()
                names = list(figures)
                values = torch.stack([figures[k].float() for k in names])
                stop = bool(self.should_stop())
                flags = torch.tensor([float(not torch.isfinite(values).all()), float(stop)], device=self.device)
                if self.world > 1:
                    flags = acc.reduce(flags, "sum")
                vals = values.cpu().tolist()
                train_time += time.perf_counter() - t0
                if flags[0].item() > 0:
                    bad = [k for k, v in zip(names, vals) if not math.isfinite(v)] or ["(on another process)"]
                    raise NonFiniteLossError(self.step - 1, bad, self.last_checkpoint, kimg=prev_nimg / 1000)
                for k, v in zip(names, vals):
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
                # clamp: the last batch may overshoot the budget, and tqdm cannot format n > total
                bar.update(min(self.nimg, self.total_nimg) - min(prev_nimg, self.total_nimg))
                if self.main and self.step % o.log_every == 0:
                    spk = train_time / max((self.nimg - tick_nimg) / 1000, 1e-9)
                    bar.set_postfix_str(f"G {vals[names.index('Loss/G')]:.3f} D {vals[names.index('Loss/D')]:.3f} "
                                        f"p {self.ada.p if self.ada else 0:.3f} {spk:.1f} s/kimg", refresh=False)

                if _crossed(prev_nimg, self.nimg, o.tick_kimg) or self.nimg >= self.total_nimg:
                    kimg_done = (self.nimg - tick_nimg) / 1000
                    metrics = {k: sums[k] / counts[k] for k in sums}
                    metrics.update({
                        "ADA/p": self.ada.p if self.ada else 0.0,
                        "ADA/rt": self.ada.rt if self.ada else 0.0,
                        "Timing/sec_per_kimg": train_time / max(kimg_done, 1e-9),
                        "Timing/img_per_s": (self.nimg - tick_nimg) / max(train_time, 1e-9),
                        "Timing/tick_wall_s": time.perf_counter() - tick_time,
                        "Resources/peak_mem_mb": _peak_memory_mb(self.device),
                        "Progress/kimg": self.nimg / 1000,
                    })
                    if self.main:
                        self.report(metrics, self.step)
                    sums, counts = {}, {}
                    tick_nimg, tick_time, train_time = self.nimg, time.perf_counter(), 0.0
                if _crossed(prev_nimg, self.nimg, o.sample_kimg):
                    self.emit_samples()
                if flags[1].item() > 0:
                    self._save_resume()
                    status = "stopped"
                    break
                if _crossed(prev_nimg, self.nimg, o.snapshot_kimg) and self.nimg < self.total_nimg:
                    self._save_resume()
        finally:
            bar.close()

        final = None
        if status == "done":
            if self.last_checkpoint != str(resume_path(self.ckpt_dir, self.nimg)):
                self._save_resume()
            if not _crossed(self.nimg - self.batch_total, self.nimg, o.sample_kimg) and self.step > self.start_step:
                self.emit_samples()
            final = self._save_final()
        return TrainResult(status=status, kimg=self.nimg / 1000, step=self.step, last_checkpoint=self.last_checkpoint,
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
) -> TrainResult:
    """Train G and D with `opts` until `opts.kimg` thousand images have been shown.

    accelerator: an `accelerate.Accelerator` (device, processes, mixed precision).
    G, D, G_ema: the networks (G_ema: a copy of G's architecture holding the average;
        at a fresh start it should equal G). They are moved to the device here.
    data: `data(start_step) -> iterator` (preferred, see the module docstring) or an
        iterable of (batch, C, H, W) tensors in [-1, 1]; this process's shard.
    ckpt_dir: where resume files (`resume-<nimg:09d>.pt`) and `network-final.pt` go; the
        newest resume file there is loaded on start (unless `state` is given).
    report(metrics, step) / report_image(name, uint8 HWC, step): main process only.
    G_source: the frozen source generator (fine-tuning with freeze_style_up_to or the
        structure loss).
    freeze: which parameters train (`FreezePlan`); None trains everything.
    structure: the structure loss setting; None or weight 0 = off.
    should_stop: polled after every step; True -> checkpoint and return "stopped".
    state: a resume dict (as written by this loop) to start from instead of ckpt_dir's.
    Raises NonFiniteLossError (no checkpoint written) if a loss becomes NaN/Inf.
    """
    loop = _Loop(accelerator, G=G, D=D, G_ema=G_ema, data=data, opts=opts, ckpt_dir=ckpt_dir, report=report,
                 report_image=report_image, G_source=G_source, freeze=freeze, structure=structure,
                 should_stop=should_stop, state=state)
    return loop.run()
