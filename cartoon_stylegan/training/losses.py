"""GAN losses as small pure functions (no module state, no optimiser, no RNG of their own).

The formulas are StyleGAN2's (Karras et al. 2020): the non-saturating logistic loss,
the R1 gradient penalty on reals and the path-length regulariser; plus the structure
loss of Cartoon-StyleGAN (Jang et al. 2021, arXiv 2106.12445): the mean (or the sum), over
the low-resolution generator blocks, of the MSE between the source and target generators'
per-block outputs for the same latents and noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

STRUCTURE_ON = ("rgb", "features")
STRUCTURE_REDUCE = ("mean", "sum")
STRUCTURE_SOURCE_W = ("target", "own")

__all__ = [
    "d_logistic_loss",
    "d_r1_loss",
    "g_nonsaturating_loss",
    "g_path_regularize",
    "structure_loss",
    "StructureLoss",
    "STRUCTURE_ON",
    "STRUCTURE_REDUCE",
    "STRUCTURE_SOURCE_W",
]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 (reductions of squares); float32/64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Discriminator logistic loss: E[softplus(-D(x))] + E[softplus(D(G(z)))]."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: E[softplus(-D(G(z)))]."""
    return F.softplus(-fake_pred).mean()


def d_r1_loss(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """R1 penalty E[||grad_x D(x)||^2] over the batch (without the gamma/2 factor).

    `real_img` must require grad and `real_pred` must depend on it. The graph is kept
    (create_graph=True) so that the penalty can be back-propagated into D.
    """
    (grad,) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_img, create_graph=True)
    return _wide(grad).square().reshape(grad.shape[0], -1).sum(1).mean()


def g_path_regularize(
    fake_img: torch.Tensor,
    latents: torch.Tensor,
    mean_path_length: torch.Tensor | float,
    decay: float = 0.01,
    noise: torch.Tensor | None = None,
):
    """Path-length penalty.

    With y ~ N(0, I) / sqrt(H*W) (pass `noise` for determinism; drawn with the global RNG
    otherwise), the path length of each sample is ||J_w^T y||_2 averaged over the W+
    entries, J_w = d G(w) / d w. Returns (penalty, new running mean (detached), lengths):
    penalty = E[(length - a)^2] with `a` the running mean moved by `decay` towards the
    batch mean.
    """
    if noise is None:
        noise = torch.randn_like(fake_img)
    noise = noise / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = torch.autograd.grad(outputs=(fake_img * noise).sum(), inputs=latents, create_graph=True)
    path_lengths = _wide(grad).square().sum(2).mean(1).sqrt()
    mean_path_length = torch.as_tensor(mean_path_length, dtype=path_lengths.dtype, device=path_lengths.device)
    path_mean = mean_path_length + decay * (path_lengths.mean() - mean_path_length)
    path_penalty = (path_lengths - path_mean).square().mean()
    return path_penalty, path_mean.detach(), path_lengths


def structure_loss(source_outputs: Sequence[torch.Tensor], target_outputs: Sequence[torch.Tensor],
                   reduce: str = "mean") -> torch.Tensor:
    """MSE(target_k, source_k) per block, then their mean (``reduce="mean"``) or sum (``"sum"``);
    the lists are aligned block by block.

    The caller picks the blocks (the low-resolution ones) and detaches the source side.
    """
    if reduce not in STRUCTURE_REDUCE:
        raise ValueError(f"structure_loss: reduce must be one of {STRUCTURE_REDUCE}, got {reduce!r}")
    if len(source_outputs) != len(target_outputs) or len(source_outputs) == 0:
        raise ValueError(
            f"structure_loss needs two non-empty aligned lists, got {len(source_outputs)} and {len(target_outputs)}"
        )
    terms = []
    for k, (s, t) in enumerate(zip(source_outputs, target_outputs)):
        if s.shape != t.shape:
            raise ValueError(f"structure_loss block {k}: source {tuple(s.shape)} vs target {tuple(t.shape)}")
        terms.append(F.mse_loss(_wide(t), _wide(s).to(_wide(t).dtype)))
    stacked = torch.stack(terms)
    return stacked.mean() if reduce == "mean" else stacked.sum()


@dataclass(frozen=True)
class StructureLoss:
    """The fine-tuning structure loss of Cartoon-StyleGAN, as a setting of the loop.

    up_to:    highest block resolution compared; the blocks from 8 px up to it take part
              (the 4x4 input block has no upsampling yet). The paper (and the reference code's
              3 layers) uses 8, 16 and 32 px at 256 px: up_to=32.
    weight:   lambda, multiplies the loss before it is added to the generator loss.
    on:       "rgb" compares the per-block RGB skip outputs, "features" the feature maps.
    reduce:   "mean" (the paper's text) or "sum" (the reference code) of the per-block MSEs.
    source_w: the W+ the source generator runs on. "target": the target's own W+ (detached),
              so the loss sees only the synthesis layers; "own" (the reference code): the
              source's mapping for the same z, z2 and crossover, so a target mapping that drifts
              away from the source's is penalised too. Under FreezeSG the injected prefix is
              the source's own W, so the frozen blocks compare equal either way.

    The defaults (rgb, mean, target) are this loss as it was before reduce and source_w existed.
    """

    up_to: int
    weight: float = 1.0
    on: str = "rgb"
    reduce: str = "mean"
    source_w: str = "target"

    def __post_init__(self):
        if self.up_to < 8 or self.up_to & (self.up_to - 1):
            raise ValueError(f"StructureLoss.up_to must be a power of two >= 8, got {self.up_to}")
        if self.weight < 0 or not math.isfinite(self.weight):
            raise ValueError(f"StructureLoss.weight must be finite and >= 0, got {self.weight}")
        for name, allowed in (("on", STRUCTURE_ON), ("reduce", STRUCTURE_REDUCE), ("source_w", STRUCTURE_SOURCE_W)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"StructureLoss.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def n_blocks(self) -> int:
        """Number of synthesis blocks compared (8 px is the first)."""
        return int(math.log2(self.up_to)) - 2

    @property
    def extras_key(self) -> str:
        """The key of Generator.synthesis' extras holding the per-block outputs."""
        return "rgbs" if self.on == "rgb" else "features"

    @property
    def returns(self) -> dict:
        """The keyword arguments that make ``Generator.synthesis`` return what this loss compares."""
        return {"return_rgbs": self.on == "rgb", "return_features": self.on == "features"}

    def source_wplus(self, target_wplus: torch.Tensor, own_wplus) -> torch.Tensor:
        """The W+ the source runs on, without a graph: the target's (``source_w="target"``), or
        ``own_wplus()`` (a callable, so that the source's mapping only runs when asked)."""
        with torch.no_grad():
            return target_wplus.detach() if self.source_w == "target" else own_wplus().detach()

    def __call__(self, source_extras: dict, target_extras: dict) -> torch.Tensor:
        """Unweighted loss from the extras dicts of one synthesis pass of each generator."""
        key, n = self.extras_key, self.n_blocks
        src, tgt = list(source_extras[key])[1:n + 1], list(target_extras[key])[1:n + 1]  # [0] is 4 px
        if len(src) < n or len(tgt) < n:
            raise ValueError(f"StructureLoss(up_to={self.up_to}) needs {n} blocks, got {len(src)} / {len(tgt)}")
        return structure_loss([s.detach() for s in src], tgt, reduce=self.reduce)
