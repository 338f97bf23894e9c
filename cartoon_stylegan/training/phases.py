"""The four phases of a training step, as one loss object (NVlabs' ``StyleGAN2Loss.accumulate_gradients``).

==========  ==========  ==================================================================
phase       optimiser   loss (the pure functions of ``training.losses``)
==========  ==========  ==================================================================
``Dmain``   D           logistic loss on (augmented) reals and fakes
``Dreg``    D           lazy R1 on the reals, every ``r1_every`` steps, scaled by it
``Gmain``   G           non-saturating loss (+ lambda * structure loss against the source)
``Greg``    G           lazy path-length penalty on a smaller batch, every ``pl_every`` steps
==========  ==========  ==================================================================

:meth:`StyleGAN2Phases.schedule` says which phases a step runs; the loop zeroes the
phase's optimiser, calls :meth:`StyleGAN2Phases.accumulate_gradients` and steps it.

Randomness: every draw (latents, mixing decisions and crossovers, noise inputs, ADA
parameters, path-length noise) comes from this object's device ``torch.Generator`` and a
host ``random.Random``, both re-seeded by :meth:`begin_step` from (seed, process, step), in
a fixed order. So a step's outcome depends only on the state at its start.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from cartoon_stylegan.training.losses import (
    StructureLoss,
    d_logistic_loss,
    d_r1_loss,
    g_nonsaturating_loss,
    g_path_regularize,
)

__all__ = ["PHASES", "StyleGAN2Phases", "step_seed"]

PHASES = ("Dmain", "Dreg", "Gmain", "Greg")


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for one (run seed, process, step, stream)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, rank, step, stream]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def _no_param_grads(params: list[torch.nn.Parameter]):
    """Temporarily stop gradients into ``params`` (only ever the trainable ones)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class StyleGAN2Phases:
    """Losses and their backward passes for one GAN step.

    accelerator: supplies ``autocast()`` (and ``backward()`` when no backend is given).
    G, D: the networks as the backend prepared them (DDP-wrapped, or DeepSpeed's bare modules):
        the phases that train a network run it through these, so gradients are synchronised.
    sampler: ``cartoon_stylegan.sampling.Sampler`` of the bare G (FreezeSG's source prefix).
    opts: ``LoopOptions`` (batch, mixing_prob, r1_*, pl_*).
    ada: ``AdaptiveAugment`` or None; its pipe augments every D input, Dmain feeds its statistics.
    G_source, structure: the frozen source generator and the ``StructureLoss`` (None = off).
    backend: ``training.backends`` object whose ``backward(loss, net)`` each phase calls.
    """

    def __init__(self, accelerator, *, G, D, sampler, opts, ada=None, G_source=None,
                 structure: StructureLoss | None = None, backend=None):
        self.acc, self.G, self.D, self.sampler, self.opts = accelerator, G, D, sampler, opts
        # backward(loss, "G" | "D"): the training backend's (DeepSpeed: that network's engine)
        self.backward = backend.backward if backend is not None else (lambda loss, net: accelerator.backward(loss))
        self.D_raw = accelerator.unwrap_model(D)
        self.ada, self.G_source, self.structure = ada, G_source, structure
        self.device = accelerator.device
        G_raw = sampler.G
        self.n_latent, self.style_dim = int(G_raw.n_latent), int(G_raw.style_dim)
        self.mapping_trainable = any(p.requires_grad for p in G_raw.style.parameters())
        self.d_trainable = [p for p in self.D_raw.parameters() if p.requires_grad]
        self.gen = torch.Generator(device=self.device)
        self.host = random.Random(0)
        self.pl_mean = torch.zeros((), device=self.device)  # running mean path length (resume state)
        # the networks the main phases run (compile_main swaps in compiled ones); the regularisers
        # always run self.G / self.D / self.sampler.G
        self.D_main, self.D_for_G, self.G_main, self.G_fakes = self.D, self.D_raw, self.G, None

    def compile_main(self, compile_fn=None) -> None:
        """``torch.compile`` the networks of D main and G main (``compile_fn``: a stand-in for tests).

        Four call sites, three compiled modules: D as the backend prepared it (D main, whose
        gradients it reduces), the bare D (G's loss; the same object as the first in a single
        process), G as prepared (G main) and the bare G (D main's fakes, without gradients). The
        mapping network runs eagerly (``Sampler.wplus``). R1 and path length differentiate twice,
        which compiled graphs do not support: they keep the eager modules, sharing the parameters.
        """
        compile_fn = compile_fn or torch.compile
        self.D_main = compile_fn(self.D)
        self.D_for_G = self.D_main if self.D_raw is self.D else compile_fn(self.D_raw)
        G_main = compile_fn(self.G)
        G_fakes = G_main if self.sampler.G is self.G else compile_fn(self.sampler.G)
        # W+ is a broadcast view without style mixing and a new tensor with it: one memory layout
        # for the compiled graphs, or each G graph is compiled twice (a stride guard)
        self.G_main = lambda wplus, **kw: G_main(wplus.contiguous(), **kw)
        self.G_fakes = lambda wplus, **kw: G_fakes(wplus.contiguous(), **kw)

    # ------------------------------------------------------------------ schedule, randomness
    def schedule(self, step: int) -> list[str]:
        """The phases step ``step`` runs, in order."""
        o = self.opts
        out = ["Dmain"]
        if o.r1_gamma > 0 and step % o.r1_every == 0:
            out.append("Dreg")
        out.append("Gmain")
        if o.pl_weight > 0 and step % o.pl_every == 0:
            out.append("Greg")
        return out

    def begin_step(self, seed: int, rank: int, step: int) -> None:
        """Re-seed both random streams for this (run seed, process, step)."""
        self.gen.manual_seed(step_seed(seed, rank, step))
        self.host = random.Random(step_seed(seed, rank, step, stream=1))

    def _latents(self, n: int):
        """z1, and with probability mixing_prob z2 and a crossover in [1, n_latent - 1]."""
        z1 = torch.randn(n, self.style_dim, generator=self.gen, device=self.device)
        if self.opts.mixing_prob > 0 and self.host.random() < self.opts.mixing_prob:
            z2 = torch.randn(n, self.style_dim, generator=self.gen, device=self.device)
            return z1, z2, self.host.randint(1, self.n_latent - 1)
        return z1, None, None

    def _fakes(self, n: int, net=None, **returns):
        """Fresh latents and noise (in this order), then the sampler's images through ``net``;
        returns (images, noise, (z1, z2, crossover))."""
        z1, z2, cross = self._latents(n)
        noise = self.sampler.G.make_noise(n, generator=self.gen)
        return self.sampler(z1, z2=z2, crossover=cross, noise=noise, net=net, **returns), noise, (z1, z2, cross)

    def _augment(self, images):
        return images if self.ada is None else self.ada.pipe(images, generator=self.gen)

    # ------------------------------------------------------------------ phases
    def accumulate_gradients(self, phase: str, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run ``phase`` on the real batch and back-propagate its loss; returns its figures (0-d tensors)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; known: {PHASES}")
        return getattr(self, f"_{phase}")(real)

    def _Dmain(self, real):
        acc = self.acc
        with torch.no_grad(), acc.autocast():
            fake, _, _ = self._fakes(self.opts.batch, net=self.G_fakes)
        with acc.autocast():
            fake_pred = self.D_main(self._augment(fake.detach()))
            real_pred = self.D_main(self._augment(real))
            loss = d_logistic_loss(real_pred.float(), fake_pred.float())
        self.backward(loss, "D")
        if self.ada is not None:
            self.ada.accumulate(real_pred)
        return {"Loss/D": loss.detach(), "Scores/real": real_pred.detach().float().mean(),
                "Scores/fake": fake_pred.detach().float().mean()}

    def _Dreg(self, real):
        o, acc = self.opts, self.acc
        real_r = real.detach().requires_grad_(True)  # R1 through the augmentation, w.r.t. the clean reals
        with acc.autocast():
            pred = self.D(self._augment(real_r))
        r1 = d_r1_loss(pred.float(), real_r)
        self.backward(r1 * (o.r1_gamma / 2 * o.r1_every) + 0 * pred.float()[0].sum(), "D")
        return {"Loss/R1": r1.detach()}

    def _Gmain(self, real):
        acc, s = self.acc, self.structure
        figures = {}
        want = {} if s is None else s.returns
        with _no_param_grads(self.d_trainable), acc.autocast():
            (img, extras), noise, (z1, z2, cross) = self._fakes(self.opts.batch, net=self.G_main,
                                                                 return_latents=True, **want)
            loss = g_nonsaturating_loss(self.D_for_G(self._augment(img)).float())
            total = loss
            if s is not None:  # the source's blocks for the same noise, on the target's W+ or its own
                own = self.sampler.replace(G=self.G_source, source=None, prefix_len=0)
                wplus = s.source_wplus(extras["latents"], lambda: own.wplus(z1, z2, cross))
                with torch.no_grad():
                    _, src_extras = self.G_source.synthesis(wplus, noise=noise, stop_res=s.up_to, **want)
                loss_s = s(src_extras, extras)
                total = total + s.weight * loss_s
                figures["Loss/structure"] = loss_s.detach()
        self.backward(total, "G")
        figures["Loss/G"] = loss.detach()
        return figures

    def _Greg(self, real):
        o, acc = self.opts, self.acc
        m = max(1, o.batch // o.pl_batch_shrink)
        z1, z2, cross = self._latents(m)
        noise = self.sampler.G.make_noise(m, generator=self.gen)
        with acc.autocast():
            if self.mapping_trainable:  # W+ comes out of the mapping network with its graph
                wplus = self.sampler.wplus(z1, z2, cross)
            else:  # frozen mapping: W+ is a constant, made a leaf to differentiate against
                with torch.no_grad():
                    wplus = self.sampler.wplus(z1, z2, cross).contiguous()
                wplus.requires_grad_(True)
            img = self.G(wplus, input_is="wplus", noise=noise)
        pl_noise = torch.randn(img.shape, generator=self.gen, device=self.device, dtype=img.dtype)
        penalty, self.pl_mean, lengths = g_path_regularize(img, wplus, self.pl_mean, decay=o.pl_decay, noise=pl_noise)
        self.backward(penalty * (o.pl_weight * o.pl_every) + 0 * img.float()[:, 0, 0, 0].sum(), "G")
        return {"Loss/PL": penalty.detach(), "Loss/PL_length": lengths.detach().mean()}
