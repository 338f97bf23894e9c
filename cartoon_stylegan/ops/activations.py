"""The activation table of `fused_bias_act`: one registry, read by the reference (`bias_act`) and by
the CUDA path (`cuda_impl`: the kernels' ids, defaults and which have a second derivative).

A leaf module (torch only), so that the op, its backend dispatch, the kernel build and the CUDA
bindings all import it without importing each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["Activation", "ACTIVATIONS", "register_activation", "SQRT2"]

SQRT2 = math.sqrt(2.0)

@dataclass(frozen=True)
class Activation:
    """One entry of the activation registry.

    func:        (x, alpha) -> y, built from differentiable torch ops (so any order of
                 gradient works).
    def_alpha:   alpha used when the caller passes `alpha=None` (lrelu's slope, elu's scale).
    def_gain:    gain used when the caller passes `gain=None`: the factor that keeps the
                 signal magnitude of a unit-variance input (sqrt(2) for relu-like acts).
    homogeneous: act(c * x) == c * act(x) for every c > 0. Lets the reference fold a
                 positive gain into the bias add (one fused multiply-add) before the act.
    inplace:     optional in-place variant of `func`, used on temporaries the op owns.
    cuda_id:     the kernels' id of this activation (`enum Act` in csrc/ops.h), or None when
                 only the reference implements it (everything `register_activation` adds).

    This registry is the only activation table: the CUDA path (`cuda_impl`) reads the ids,
    the defaults and `has_second_derivative` from it.
    """

    name: str
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float = 0.0
    def_gain: float = 1.0
    homogeneous: bool = False
    inplace: Optional[Callable[[torch.Tensor, float], torch.Tensor]] = None
    cuda_id: Optional[int] = None

    @property
    def cuda(self) -> bool:
        """Whether the CUDA kernels implement this activation."""
        return self.cuda_id is not None

    @property
    def has_second_derivative(self) -> bool:
        """act'' is not zero. A positively homogeneous act is linear on each half-line (act'' = 0),
        so the CUDA backward keeps x and b for a second derivative only for the others."""
        return not self.homogeneous


ACTIVATIONS: dict[str, Activation] = {}


def register_activation(name, func, *, def_alpha=0.0, def_gain=1.0, homogeneous=False, inplace=None):
    """Add an activation under a short name (reference implementation only)."""
    return _register(name, func, def_alpha=def_alpha, def_gain=def_gain, homogeneous=homogeneous, inplace=inplace)


def _register(name, func, *, def_alpha=0.0, def_gain=1.0, homogeneous=False, inplace=None, cuda_id=None):
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered")
    ACTIVATIONS[name] = Activation(
        name=name, func=func, def_alpha=float(def_alpha), def_gain=float(def_gain),
        homogeneous=homogeneous, inplace=inplace, cuda_id=cuda_id,
    )
    return ACTIVATIONS[name]


def _lrelu_(x, alpha):
    # PyTorch's in-place leaky_relu can only be differentiated for a positive slope.
    return F.leaky_relu_(x, alpha) if alpha > 0 else F.leaky_relu(x, alpha)


# The five the kernels implement, with their ids in csrc/ops.h (enum Act).
_register("linear", lambda x, alpha: x, homogeneous=True, inplace=lambda x, alpha: x, cuda_id=1)
_register("relu", lambda x, alpha: F.relu(x), def_gain=SQRT2, homogeneous=True, inplace=lambda x, alpha: F.relu_(x),
          cuda_id=2)
_register("lrelu", lambda x, alpha: F.leaky_relu(x, alpha), def_alpha=0.2, def_gain=SQRT2, homogeneous=True,
          inplace=_lrelu_, cuda_id=3)
_register("tanh", lambda x, alpha: torch.tanh(x), cuda_id=4)
_register("sigmoid", lambda x, alpha: torch.sigmoid(x), cuda_id=5)
# Reference only.
register_activation("elu", lambda x, alpha: F.elu(x, alpha), def_alpha=1.0)
register_activation("selu", lambda x, alpha: F.selu(x))
register_activation("softplus", lambda x, alpha: F.softplus(x))
register_activation("swish", lambda x, alpha: x * torch.sigmoid(x), def_gain=SQRT2)
