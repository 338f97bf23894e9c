"""The CUDA path of ``cartoon_stylegan.ops``: operator schemas, autograd, and the calls
into the compiled kernels (``csrc/``). Reached through ``fused_bias_act`` and
``upfirdn2d`` when ``backend.use_cuda`` says so; arguments arrive normalised.

Why ``torch.library`` operators driven by ``torch.autograd.Function`` (and not
``torch.library.custom_op`` + ``register_autograd``):

* The three kernels are real dispatcher operators, ``torch.ops.cartoon_stylegan.{bias_act,
  bias_act_grad, upfirdn2d}``: their schemas and fake (shape/stride) functions are
  defined here at import, their CUDA kernels are registered from C++
  (``TORCH_LIBRARY_IMPL``) when the library loads. So ``torch.compile`` traces them
  without graph breaks and without the extension being built, and Inductor calls the
  compiled kernel directly, with no Python in between.
* Autograd is two small ``autograd.Function`` classes per op, whose backward calls the
  same Functions again: the bias_act gradient kernel is linear in the incoming
  gradient, and the upfirdn2d backward is upfirdn2d with up/down swapped, the filter
  flipped and the padding adjusted, so gradients of gradients (R1, path-length
  regularisation) run on the kernels too. Dynamo traces such Functions.
* An ``autograd.Function`` around a C++ operator costs a few times less per call than
  ``custom_op`` with ``register_autograd`` (benchmarks/results/design-measurements-cpu.md),
  which matters at the low resolutions where kernels take microseconds; ``custom_op`` would
  buy nothing else here: schemas, fakes and ``opcheck`` work the same on
  ``torch.library.Library`` operators.
"""
from __future__ import annotations

import torch

from .activations import ACTIVATIONS

_NS = "cartoon_stylegan"


def _act(name: str):
    """The registry entry of a kernel activation (ids, defaults: ``activations.ACTIVATIONS``, the one table)."""
    spec = ACTIVATIONS.get(name)
    if spec is None or not spec.cuda:
        raise ValueError(f"activation {name!r} is not one of the kernels' "
                         f"{sorted(k for k, v in ACTIVATIONS.items() if v.cuda)}")
    return spec


# ------------------------------------------------------------------------------ operators


def _is_channels_last(x: torch.Tensor) -> bool:
    """Same rule as ops.cpp: 4-D, dense in NHWC and not also dense in NCHW."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _empty_dense_like(x: torch.Tensor) -> torch.Tensor:
    """What ops.cpp allocates: the input's strides if dense (NCHW or NHWC), else contiguous."""
    if x.is_contiguous() or _is_channels_last(x):
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _out_size(size, up, pad0, pad1, taps, down):
    span = size * up + pad0 + pad1 - taps
    torch._check(span >= 0, lambda: "upfirdn2d: the upsampled and padded input is smaller than the filter")
    return span // down + 1


def _define_ops() -> torch.library.Library:
    lib = torch.library.Library(_NS, "FRAGMENT")
    lib.define("bias_act(Tensor x, Tensor? b, int dim, int act, float alpha, float gain, float clamp) -> Tensor")
    lib.define("bias_act_grad(Tensor g, Tensor y, Tensor? dy, int act, float alpha, float gain, float clamp) -> Tensor")
    lib.define("upfirdn2d(Tensor x, Tensor f, int upx, int upy, int downx, int downy, "
               "int padx0, int padx1, int pady0, int pady1, bool flip, float gain) -> Tensor")

    @torch.library.register_fake(f"{_NS}::bias_act", lib=lib)
    def _bias_act_fake(x, b, dim, act, alpha, gain, clamp):
        return _empty_dense_like(x)

    @torch.library.register_fake(f"{_NS}::bias_act_grad", lib=lib)
    def _bias_act_grad_fake(g, y, dy, act, alpha, gain, clamp):
        return _empty_dense_like(y)

    @torch.library.register_fake(f"{_NS}::upfirdn2d", lib=lib)
    def _upfirdn2d_fake(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
        torch._check(x.dim() == 4, lambda: "upfirdn2d: x must be 4-D")
        fw, fh = f.shape[-1], f.shape[0]
        out_w = _out_size(x.shape[3], upx, padx0, padx1, fw, downx)
        out_h = _out_size(x.shape[2], upy, pady0, pady1, fh, downy)
        fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        return torch.empty((x.shape[0], x.shape[1], out_h, out_w), dtype=x.dtype, device=x.device,
                           memory_format=fmt)

    return lib


_LIB = _define_ops()
_ops = torch.ops.cartoon_stylegan


# ------------------------------------------------------------------------------ autograd


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [i for i in range(t.dim()) if i != dim]
    return t.sum(dims) if dims else t


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        spec = _act(act)
        second = spec.has_second_derivative
        y = _ops.bias_act(x, b, dim, spec.cuda_id, alpha, gain, clamp)
        # The gradient needs only y; x and b are kept (as graph anchors for the second
        # derivative) only for activations whose second derivative is not zero.
        ctx.save_for_backward(x if second else None, b if second else None, y)
        ctx.cfg = (dim, act, alpha, gain, clamp)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b, y = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.cfg
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if act == "linear" and gain == 1 and clamp < 0:
                dx = dy
            else:
                dx = _BiasActGrad.apply(dy, y, x, b, dim, act, alpha, gain, clamp)
        if ctx.needs_input_grad[1]:
            db = _sum_except(dx, dim)
        return dx, db, None, None, None, None, None


class _BiasActGrad(torch.autograd.Function):
    """dx = g * act'(x + b) * gain (masked where clamped). Linear in g; its derivative with
    respect to x (through act') uses the second-derivative kernel."""

    @staticmethod
    def forward(ctx, g, y, x, b, dim, act, alpha, gain, clamp):
        spec = _act(act)
        second = spec.has_second_derivative
        dx = _ops.bias_act_grad(g, y, None, spec.cuda_id, alpha, gain, clamp)
        ctx.save_for_backward(g if second else None, y, x, b)
        ctx.cfg = (dim, act, alpha, gain, clamp)
        return dx

    @staticmethod
    def backward(ctx, d_dx):
        g, y, x, b = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.cfg
        spec = _act(act)
        second = spec.has_second_derivative
        d_g = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_g = _BiasActGrad.apply(d_dx, y, x, b, dim, act, alpha, gain, clamp)
        if second and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3]):
            # Not differentiable again: third-order gradients are not supported.
            d_x = _ops.bias_act_grad(d_dx, y, g, spec.cuda_id, alpha, gain, clamp)
            if ctx.needs_input_grad[3]:
                d_b = _sum_except(d_x, dim)
        # y gets no gradient: its dependence on x is already inside d_x.
        return d_g, None, d_x, d_b, None, None, None, None, None


class _Upfirdn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
        y = _ops.upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain)
        ctx.save_for_backward(f)
        ctx.cfg = (upx, upy, downx, downy, padx0, pady0, flip, gain)
        ctx.in_hw = (x.shape[2], x.shape[3])
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        upx, upy, downx, downy, padx0, pady0, flip, gain = ctx.cfg
        dx = None
        if ctx.needs_input_grad[0]:
            ih, iw = ctx.in_hw
            oh, ow = dy.shape[2], dy.shape[3]
            fw, fh = f.shape[-1], f.shape[0]
            # The transpose: swap up/down, flip the filter, pad so the output is x-sized.
            px0 = fw - padx0 - 1
            px1 = iw * upx - ow * downx + padx0 - upx + 1
            py0 = fh - pady0 - 1
            py1 = ih * upy - oh * downy + pady0 - upy + 1
            dx = _Upfirdn2d.apply(dy, f, downx, downy, upx, upy, px0, px1, py0, py1, not flip, gain)
        return dx, None, None, None, None, None, None, None, None, None, None, None


# ------------------------------------------------------------------------------ entry points


def fused_bias_act_cuda(x, b, dim, act, alpha, gain, clamp):
    """``act(x + b) * gain``, clamped to [-clamp, clamp] unless clamp is None."""
    spec = _act(act)
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if clamp is not None and clamp < 0:
        raise ValueError(f"clamp must be None or >= 0, got {clamp}")
    clamp = -1.0 if clamp is None else float(clamp)
    if b is not None:
        dim = dim % x.dim()
        if b.dtype != x.dtype:
            b = b.to(x.dtype)
    elif act == "linear" and gain == 1 and clamp < 0:
        return x
    return _BiasAct.apply(x, b, int(dim), act, alpha, gain, clamp)


def upfirdn2d_cuda(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain):
    """Upsample, pad, FIR-filter and downsample ``x`` (N, C, H, W) in one kernel."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if f.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("upfirdn2d: the CUDA kernels do not differentiate the filter; "
                           "pass a filter that does not require grad (a buffer), or use impl='ref'")
    if f.device != x.device or f.dtype != torch.float32:
        f = f.to(device=x.device, dtype=torch.float32)
    return _Upfirdn2d.apply(x, f, int(upx), int(upy), int(downx), int(downy), int(padx0), int(padx1),
                            int(pady0), int(pady1), bool(flip_filter), float(gain))
