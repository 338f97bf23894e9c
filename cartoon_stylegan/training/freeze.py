"""Freezing plans: which generator / discriminator parameters a run trains.

Parameters are picked by the resolution the networks report for them
(`Generator.layer_resolution`, `Discriminator.layer_resolution`), never by substring,
so `convs.1` can not be confused with `convs.10`. `FreezePlan.apply` sets `requires_grad`
once, before the models are wrapped by Accelerate; the optimisers are then built over
the trainable parameters only (`build_optimizers`), so frozen parameters get no
gradient, no optimiser state and no EMA update, and stay bit-identical.

The options (the paper's variants are combinations of them, configured in stages/finetune.py):
  freeze_d_above=R      FreezeD: D blocks reading inputs larger than R are frozen (the
                        head, `final_*`, always trains)
  freeze_g_up_to=R      G synthesis layers at resolutions <= R are frozen (the const input,
                        conv1 and to_rgb1 belong to 4x4); the mapping network is NOT frozen
                        by this option
  freeze_mapping=True   the mapping network (`style.*`) is frozen
  freeze_style_up_to=R  the W+ entries of layers <= R come from the frozen *source* mapping
                        network (sampling.Sampler); freezes no parameter by itself

  FreezeG (reference)   freeze_g_up_to + freeze_mapping: the low-resolution blocks and every
                        style stay the source's; only the blocks above R adapt
  FreezeSG              freeze_g_up_to + freeze_style_up_to, mapping trainable: the
                        low-resolution blocks keep receiving the source's styles while the
                        target mapping adapts the styles of the layers above -- the two
                        differ only because the mapping may train
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Iterable

import torch

from cartoon_stylegan.training.options import FreezeOptions

__all__ = ["FreezePlan", "trainable_parameters", "lazy_ratio", "build_optimizers"]


@dataclass(frozen=True)
class FreezePlan(FreezeOptions):
    """What to freeze (the options: training/options.py, declared once) and the queries on it;
    every option None/False = train everything."""

    # ------------------------------------------------------------------ queries
    @property
    def needs_source(self) -> bool:
        """True when the loop needs the frozen source generator (W+ injection)."""
        return self.freeze_style_up_to is not None

    def is_g_frozen(self, G, name: str) -> bool:
        res = G.layer_resolution(name)
        if res == "mapping":  # only freeze_mapping: FreezeSG trains the mapping with frozen blocks
            return self.freeze_mapping
        return self.freeze_g_up_to is not None and res <= self.freeze_g_up_to

    def is_d_frozen(self, D, name: str) -> bool:
        res = D.layer_resolution(name)
        if res == "head":
            return False
        return self.freeze_d_above is not None and res > self.freeze_d_above

    def g_trainable(self, G) -> set[str]:
        """Names of the G parameters this plan trains (never those G's forward does not read)."""
        unused = G.unused_parameter_names()
        return {n for n, _ in G.named_parameters() if n not in unused and not self.is_g_frozen(G, n)}

    def d_trainable(self, D) -> set[str]:
        """Names of the D parameters this plan trains."""
        return {n for n, _ in D.named_parameters() if not self.is_d_frozen(D, n)}

    def n_wplus_prefix(self, G) -> int:
        """How many leading W+ entries come from the source mapping (0 = none)."""
        return 0 if self.freeze_style_up_to is None else int(G.n_wplus_up_to(self.freeze_style_up_to))

    # ------------------------------------------------------------------ action
    def apply(self, G: torch.nn.Module, D: torch.nn.Module) -> tuple[set[str], set[str]]:
        """Set requires_grad on every parameter of G and D; returns (G names, D names) trained.

        Call once, before `accelerator.prepare`. Raises if G or D would train nothing.
        """
        g_names, d_names = self.g_trainable(G), self.d_trainable(D)
        if not g_names:
            raise ValueError(f"{self} freezes every generator parameter")
        if not d_names:
            raise ValueError(f"{self} freezes every discriminator parameter")
        for n, p in G.named_parameters():
            p.requires_grad_(n in g_names)
        for n, p in D.named_parameters():
            p.requires_grad_(n in d_names)
        return g_names, d_names

    def to_dict(self) -> dict:
        return asdict(self)


def trainable_parameters(module: torch.nn.Module, names: Iterable[str]) -> list[torch.nn.Parameter]:
    """The parameters of `module` named in `names`, in named_parameters order."""
    names = set(names)
    params = [p for n, p in module.named_parameters() if n in names]
    missing = names - {n for n, _ in module.named_parameters()}
    if missing:
        raise KeyError(f"not parameters of {type(module).__name__}: {sorted(missing)[:8]}")
    return params


def lazy_ratio(every: int | None, active: bool = True) -> float:
    """Lazy-regularisation correction c = every / (every + 1) (1 when not regularising)."""
    if not active or not every:
        return 1.0
    return every / (every + 1)


def build_optimizers(G, D, g_names, d_names, *, lr_g, lr_d, betas=(0.0, 0.99), g_reg_every=None,
                     d_reg_every=None, g_reg=True, d_reg=True, eps=1e-8, lr_mapping=1.0):
    """Adam for G and D over their trainable parameters only.

    With lazy regularisation every k steps, lr *= c and beta ** c, c = k / (k + 1)
    (StyleGAN2, appendix B), so that the regularisation steps do not shift the momentum.
    ``lr_mapping``: the mapping network's (``style.*``) learning rate as a multiple of G's, in a
    parameter group of its own (at 1, one group: exactly the optimiser of before).
    """
    cg = lazy_ratio(g_reg_every, g_reg)
    cd = lazy_ratio(d_reg_every, d_reg)
    pg, pd = trainable_parameters(G, g_names), trainable_parameters(D, d_names)
    g_params = pg
    mapping = {id(p) for p in trainable_parameters(G, [n for n in g_names if n.startswith("style.")])}
    if lr_mapping != 1.0 and mapping:  # a frozen mapping has nothing to scale
        pg = [{"params": [p for p in g_params if id(p) not in mapping]},
              {"params": [p for p in g_params if id(p) in mapping], "lr": lr_g * cg * lr_mapping}]
    opt_g = torch.optim.Adam(pg, lr=lr_g * cg, betas=(betas[0] ** cg, betas[1] ** cg), eps=eps,
                             **adam_kernel(g_params))
    opt_d = torch.optim.Adam(pd, lr=lr_d * cd, betas=(betas[0] ** cd, betas[1] ** cd), eps=eps,
                             **adam_kernel(pd))
    return opt_g, opt_d


ADAM_KERNEL_ENV = "CARTOON_STYLEGAN_ADAM"  # "torch" (default: torch's own choice) | "fused" | "loop"


def adam_kernel(params) -> dict:
    """Adam's implementation. torch's own choice by default: the fused kernel is faster per call but the
    whole training step measured the same (benchmarks/results/design-measurements-cpu.md), and it changes
    the last bits of each update -- so the default stays, which keeps the demo's figures reproducible.
    ``CARTOON_STYLEGAN_ADAM=fused`` (CPU tensors) or ``loop`` chooses."""
    params = list(params)
    choice = os.environ.get(ADAM_KERNEL_ENV, "torch").strip().lower()
    if choice not in ("torch", "fused", "loop"):
        raise ValueError(f"{ADAM_KERNEL_ENV}={choice!r}: expected torch, fused or loop")
    if choice == "fused" and params and all(p.device.type == "cpu" for p in params):
        return {"fused": True}
    return {"foreach": False} if choice == "loop" else {}
