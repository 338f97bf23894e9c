"""Fused bias + activation + gain + clamp, with a registry of activations.

`fused_bias_act` is what every StyleGAN2 layer calls after its convolution or
linear map. On CUDA tensors it may run the fused kernel (`cuda_impl`); elsewhere
it runs the PyTorch reference below, which is exact to float64 and supports
gradients of any order (R1 and path-length regularisation backpropagate through
gradients).
"""
from __future__ import annotations

import torch

from . import backend
from .activations import ACTIVATIONS, Activation, register_activation

__all__ = ["Activation", "ACTIVATIONS", "register_activation", "fused_bias_act"]

def fused_bias_act(x, b=None, dim=1, act="lrelu", alpha=None, gain=None, clamp=None, impl=None):
    r"""`clamp(act(x + b) * gain, -clamp, clamp)`, with `b` broadcast along `dim`.

    Args:
        x:     input tensor, any shape.
        b:     bias, 1-D of length `x.shape[dim]`, or None (no bias). Cast to `x.dtype`.
        dim:   the dimension of `x` that `b` runs along (negative counts from the end).
        act:   a name in `ACTIVATIONS`: linear, relu, lrelu, tanh, sigmoid, elu, selu,
               softplus, swish.
        alpha: the activation's shape parameter (lrelu slope); None = the activation's
               default (0.2 for lrelu).
        gain:  output scale; None = the activation's default gain (sqrt(2) for relu, lrelu
               and swish, 1 otherwise). So the defaults are exactly rosinality's
               `fused_leaky_relu(x, b)`: slope 0.2, scale sqrt(2). Pass `gain=1` for none.
        clamp: None, or a number >= 0 to clamp the output to [-clamp, clamp].
        impl:  None | "auto" | "ref" | "cuda"; None defers to CARTOON_STYLEGAN_OPS, then auto.

    Returns:
        A tensor of the shape and dtype of `x` (`x` itself for linear, no bias, gain 1,
        no clamp).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fused_bias_act: x must be a tensor, got {type(x).__name__}")
    spec = ACTIVATIONS.get(act)
    if spec is None:
        raise ValueError(f"fused_bias_act: unknown act {act!r}; known: {sorted(ACTIVATIONS)}")
    alpha = spec.def_alpha if alpha is None else float(alpha)
    gain = spec.def_gain if gain is None else float(gain)
    if clamp is not None:
        clamp = float(clamp)
        if not clamp >= 0:
            raise ValueError(f"fused_bias_act: clamp must be None or >= 0, got {clamp}")
    if x.ndim == 0:
        raise ValueError("fused_bias_act: x must have at least one dimension")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"fused_bias_act: dim {dim} out of range for a {x.ndim}-D input")
    dim = dim % x.ndim
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"fused_bias_act: b must be 1-D of length x.shape[{dim}] = {x.shape[dim]}, got {got}")
        b = b.to(dtype=x.dtype)

    if backend.use_cuda(x, impl) and spec.cuda:
        from .cuda_impl import fused_bias_act_cuda
        return fused_bias_act_cuda(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _bias_act_ref(x, b, dim, spec, alpha, gain, clamp):
    """Reference: plain differentiable torch ops, at most two passes over `x` for lrelu."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        b = b.reshape(shape)
    if spec.homogeneous and gain > 0:
        # act(x + b) * g == act(g*x + g*b) for g > 0: one fused multiply-add into a fresh
        # tensor, then the activation in place on it.
        if b is not None:
            if gain == 1:
                y = x + b
            elif torch.compiler.is_compiling():
                # inductor rewrites add(b, mm(..), alpha=g) into an addmm and drops alpha (pytorch#167313,
                # silent): under torch.compile the scale is its own multiply
                y = x * gain + b * gain
            else:
                y = torch.add(b * gain, x, alpha=gain)
            y = spec.inplace(y, alpha) if spec.inplace is not None else spec.func(y, alpha)
        elif gain != 1:
            y = x * gain
            y = spec.inplace(y, alpha) if spec.inplace is not None else spec.func(y, alpha)
        else:
            y = spec.func(x, alpha)  # never in place on the caller's tensor
    else:
        y = x + b if b is not None else x
        y = spec.func(y, alpha)
        if gain != 1:
            y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y
