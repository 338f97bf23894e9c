"""The CUDA kernels against the reference, on a GPU: ``pytest -m gpu tests/ops``.

Every test here calls the public ops with ``impl="cuda"`` on CUDA tensors (a build or load
failure is an error, never a silent fallback) and compares with ``impl="ref"`` evaluated in
float64 on the same (dtype-rounded) input:

* values: float64, float32, float16, bfloat16; NCHW, channels_last with many channels (the
  kernels' NHWC mapping), channels_last with 3 channels, non-contiguous views; every
  upfirdn2d path (4x4 tiles up/down/blur, separable, the two-pass long filter, the general
  kernel, cropping pads, flipped filters); every activation with and without clamp;
* first-order gradients (float32, float16, bfloat16) and second-order ones (R1 / path
  length style: the gradient of a function of the gradient), gradcheck and gradgradcheck
  in float64;
* the 1024 px, batch 4 shapes of a config-f step (the largest tensors a step makes);
* each output computed twice must be bitwise the same (an error that moves is a race), and
  finite where the reference is.

Relative error is max|out - ref| / max|ref|. Bounds: float64 1e-10, float32 1e-5, float16
5e-3, bfloat16 3e-2 (the output is rounded once to the dtype; float32 gradients of
gradients 1e-4). Without a CUDA device every test here is skipped.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import cartoon_stylegan.ops as ops
from cartoon_stylegan.ops import backend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BOUND = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid"]
BLUR = [1.0, 3.0, 3.0, 1.0]


def _blur2d():
    k = torch.tensor(BLUR)
    return torch.outer(k, k) / k.sum() ** 2


def _gen(name: str) -> torch.Generator:
    """A generator of its own per test: fresh inputs for every check, reproducible per name."""
    return torch.Generator(device="cuda").manual_seed(sum(ord(c) * 131 ** i for i, c in enumerate(name)) % 2**31)


# name: (up, down, filter (a function of a CUDA generator), padding, flip, gain)
UPFIRDN = {
    "up2 4x4": (2, 1, lambda g: _blur2d(), (2, 1, 2, 1), False, 4.0),            # G upsample (tile kernel)
    "down2 4x4": (1, 2, lambda g: _blur2d(), (1, 1, 1, 1), False, 1.0),          # D downsample (tile)
    "blur 4x4": (1, 1, lambda g: _blur2d(), (1, 1, 1, 1), False, 1.0),           # after the transposed conv
    "blur 4x4 pad 2": (1, 1, lambda g: _blur2d(), (2, 2, 2, 2), False, 1.0),     # D, before the stride-2 conv
    "up2 separable 4": (2, 1, lambda g: torch.tensor(BLUR) / 8, (1, 2, 2, 1), False, 4.0),
    "up2 separable 12 (two passes)": (2, 1, lambda g: torch.randn(12, generator=g, device="cuda"),
                                      (6, 5, 6, 5), False, 1.0),
    "up3 6x6 (general)": (3, 1, lambda g: torch.randn(6, 6, generator=g, device="cuda"),
                          (3, 2, 1, 4), False, 1.0),
    "down3 5x5": (1, 3, lambda g: torch.randn(5, 5, generator=g, device="cuda"), (2, 2, 2, 2), False, 1.0),
    "up2 down2": (2, 2, lambda g: _blur2d(), (1, 2, 2, 1), False, 1.0),
    "crop 3x3 flipped": (1, 1, lambda g: torch.randn(3, 3, generator=g, device="cuda"), (-1, 2, 0, 1),
                         True, 1.5),
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


LAYOUTS = ("nchw", "channels_last", "non-contiguous")


def _layout(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` (NCHW, already in its dtype) in one of the layouts the kernels treat differently."""
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "non-contiguous":
        return x[:, :, 1:, :-1]
    return x


@pytest.fixture(scope="module", autouse=True)
def kernels():
    """The extension, loaded (built into the cache if needed); failing here fails every test."""
    return backend.load_extension(required=True)


def _filter(name, g):
    return UPFIRDN[name][2](g).to("cuda")


def _upfirdn(x, name, f, impl):
    up, down, _, pad, flip, gain = UPFIRDN[name]
    return ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl)


@pytest.mark.parametrize("impl", ["cuda", "auto"])
def test_the_public_ops_run_the_cuda_kernels(impl, monkeypatch):
    """impl='cuda', and 'auto' on a CUDA tensor, reach the registered CUDA kernels, backward included."""
    monkeypatch.delenv(backend.ENV_IMPL, raising=False)
    for op in ("bias_act", "bias_act_grad", "upfirdn2d"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"cartoon_stylegan::{op}", "CUDA"), op
    x = torch.randn(2, 8, 9, 9, device="cuda", requires_grad=True)
    b = torch.zeros(8, device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = ops.upsample2d(ops.fused_bias_act(x, b, impl=impl), torch.tensor(BLUR), impl=impl)
        y.square().sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert {"cartoon_stylegan::bias_act", "cartoon_stylegan::bias_act_grad", "cartoon_stylegan::upfirdn2d"} <= names


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("name", list(UPFIRDN))
def test_upfirdn2d_values(name, dname):
    dtype, g = DTYPES[dname], _gen(name + dname)
    f = _filter(name, g)
    bound = BOUND[dtype] * (3 if "two passes" in name else 1)  # its intermediate is rounded once more
    for channels in (3, 5, 40):
        base = torch.randn(3, channels, 13, 17, generator=g, device="cuda", dtype=torch.float64).to(dtype)
        for lname in LAYOUTS:
            x = _layout(base, lname)
            ref = _upfirdn(x.double(), name, f, "ref")
            out = _upfirdn(x, name, f, "cuda")
            assert out.dtype == dtype and out.shape == ref.shape
            assert torch.equal(out, _upfirdn(x, name, f, "cuda")), f"{lname} C={channels}: differs run to run"
            assert rel_err(out, ref) <= bound, (lname, channels)
            if lname == "channels_last" and channels > 3:
                assert out.is_contiguous(memory_format=torch.channels_last)


def _grads(fn, inputs, dy, order2: bool):
    """d(fn)/d(inputs) . dy, and with order2 also d(sum of the squared gradients)/d(inputs, dy)."""
    out = fn(*inputs)
    first = torch.autograd.grad(out, inputs, dy, create_graph=order2)
    if not order2:
        return list(first)
    penalty = sum(t.square().sum() for t in first)
    wrt = (*inputs, dy)
    second = torch.autograd.grad(penalty, wrt, allow_unused=True) if penalty.requires_grad else (None,) * len(wrt)
    return list(first) + [torch.zeros_like(w) if s is None else s for s, w in zip(second, wrt)]


def _inputs(base64, extra64, lname, dtype):
    """Leaf tensors that require grad: ``base64`` in layout ``lname`` and the extra inputs, in ``dtype``."""
    return [_layout(base64.to(dtype), lname).requires_grad_(), *(e.to(dtype).requires_grad_() for e in extra64)]


def _check_gradients(fn, base64: torch.Tensor, extra64: tuple, g, half=True):
    """``fn(x, *extra)`` (float64: the reference, else the kernels): first and second order at float32
    against float64, first order at float16 and bfloat16 (``half``) on the same rounded inputs; ``x`` in
    each layout."""
    for lname in LAYOUTS:
        dy64 = torch.randn(fn(_layout(base64, lname), *extra64).shape, generator=g, device="cuda",
                           dtype=torch.float64)
        ours, ref = (_grads(fn, _inputs(base64, extra64, lname, dt), dy64.to(dt).requires_grad_(), order2=True)
                     for dt in (torch.float32, torch.float64))
        for i, (o, r) in enumerate(zip(ours, ref)):
            second = i > len(extra64)
            assert rel_err(o, r) <= (1e-4 if second else 1e-5), (lname, "grad of grad" if second else "grad", i)
        for dt in (torch.float16, torch.bfloat16) if half else ():
            low = _inputs(base64, extra64, lname, dt)
            high = [t.detach().double().requires_grad_() for t in low]
            for o, r in zip(_grads(fn, low, dy64.to(dt), False), _grads(fn, high, dy64.to(dt).double(), False)):
                assert o.dtype == dt and rel_err(o, r) <= 3 * BOUND[dt], (lname, dt)


@pytest.mark.parametrize("name", list(UPFIRDN))
def test_upfirdn2d_gradients(name):
    g = _gen(name)
    f = _filter(name, g)

    def fn(x):  # the float64 reference against the kernels at every other dtype
        return _upfirdn(x, name, f, "ref" if x.dtype == torch.float64 else "cuda")

    _check_gradients(fn, torch.randn(2, 24, 11, 10, generator=g, device="cuda", dtype=torch.float64), (), g)
    xs = torch.randn(1, 2, 6, 7, generator=g, device="cuda", dtype=torch.float64, requires_grad=True)
    cuda = lambda x: _upfirdn(x, name, f, "cuda")  # noqa: E731
    assert gradcheck(cuda, (xs,)) and gradgradcheck(cuda, (xs,))


def _bias_cases(g, dtype):
    """(what, x, b, dim): the layouts and shapes fused_bias_act meets, in ``dtype``."""
    def rand(*shape):
        return torch.randn(shape, generator=g, device="cuda", dtype=torch.float64).to(dtype)

    x, b = rand(3, 37, 13, 17), rand(37)
    for lname in LAYOUTS:
        yield lname, _layout(x, lname), b, 1
    y = rand(65, 512)                                   # a linear layer's output
    yield "2-D", y, rand(512), 1
    yield "dim 0", y, rand(65), 0
    yield "unaligned view", rand(4097)[1:].view(16, 256), rand(256), 1


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_values(act, dname):
    dtype, g = DTYPES[dname], _gen(act + dname)
    for clamp in (None, 0.5):
        for what, x, b, dim in _bias_cases(g, dtype):
            ref = ops.fused_bias_act(x.double(), b.double(), dim=dim, act=act, clamp=clamp, impl="ref")
            out = ops.fused_bias_act(x, b, dim=dim, act=act, clamp=clamp, impl="cuda")
            assert out.dtype == dtype and out.shape == x.shape
            if what == "channels_last":
                assert out.stride() == x.stride()
            assert torch.equal(out, ops.fused_bias_act(x, b, dim=dim, act=act, clamp=clamp, impl="cuda")), what
            assert rel_err(out, ref) <= BOUND[dtype], (what, clamp)
    nan = torch.tensor([float("nan"), 1.0, -1.0], device="cuda", dtype=dtype)
    out = ops.fused_bias_act(nan, None, dim=0, act=act, gain=2.0, clamp=0.5, impl="cuda")
    assert torch.isnan(out[0]) and torch.isfinite(out[1:]).all()


@pytest.mark.parametrize("clamp", [None, 0.5])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradients(act, clamp):
    g = _gen(act + str(clamp))

    def fn(x, b):
        return ops.fused_bias_act(x, b, act=act, clamp=clamp, impl="ref" if x.dtype == torch.float64 else "cuda")

    # x + b at least 0.25 from the kink at 0: rounded to half precision, x + b is often exactly 0, where the
    # kernels (y > 0) and the reference (the sign of its fused multiply-add) take different one-sided slopes
    b = torch.randn(37, generator=g, device="cuda", dtype=torch.float64)
    s = torch.randn(3, 37, 13, 17, generator=g, device="cuda", dtype=torch.float64)
    base = s + 0.25 * s.sign() - b[:, None, None]
    # with a clamp, the gradient is masked where |y| reaches it, and y rounded to half precision moves
    # elements across that edge: half precision is compared without a clamp
    _check_gradients(fn, base, (b,), g, half=clamp is None)
    xs = torch.randn(2, 3, 4, generator=g, device="cuda", dtype=torch.float64, requires_grad=True)
    bs = torch.randn(3, generator=g, device="cuda", dtype=torch.float64, requires_grad=True)
    cuda = lambda x, b: ops.fused_bias_act(x, b, act=act, clamp=clamp, impl="cuda")  # noqa: E731
    assert gradcheck(cuda, (xs, bs)) and gradgradcheck(cuda, (xs, bs))


# The tensors of a config-f step at 1024 px, batch 4 (benchmarks/ops.py times the same calls):
# (what, input shape, op, keyword arguments)
STEP_1024 = [
    ("G lrelu 1024 px", (4, 32, 1024, 1024), "bias_act", {}),
    ("G blur after the up-conv 1024 px", (4, 32, 1025, 1025), "upfirdn2d", dict(padding=(1, 1, 1, 1))),
    ("G ToRGB upsample 512->1024 px", (4, 3, 512, 512), "upfirdn2d", dict(up=2, padding=(2, 1, 2, 1), gain=4)),
    ("G upsample 512->1024 px", (4, 64, 512, 512), "upfirdn2d", dict(up=2, padding=(2, 1, 2, 1), gain=4)),
    ("D blur before the down-conv 1024 px", (4, 32, 1024, 1024), "upfirdn2d", dict(padding=(2, 2, 2, 2))),
    ("D downsample 1024->512 px", (4, 32, 1024, 1024), "upfirdn2d", dict(down=2, padding=(1, 1, 1, 1))),
]


@pytest.mark.parametrize("what,shape,op,kw", STEP_1024, ids=[s[0] for s in STEP_1024])
def test_config_f_1024px_batch4_shapes(what, shape, op, kw):
    """Values (three dtypes, both layouts) and the float32 gradient at the largest shapes of a step."""
    g = _gen(what)
    f, b64 = _blur2d().cuda(), torch.randn(shape[1], generator=g, device="cuda", dtype=torch.float64)

    def run(x, impl, dtype):  # the bias rounded to the dtype under test on both sides
        if op == "bias_act":
            return ops.fused_bias_act(x, b64.to(dtype).to(x.dtype), impl=impl)
        return ops.upfirdn2d(x, f, impl=impl, **kw)

    x64 = torch.randn(shape, generator=g, device="cuda", dtype=torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = x64.to(dtype)
        ref = run(x.double(), "ref", dtype)
        for lname in ("nchw", "channels_last"):
            assert rel_err(run(_layout(x, lname), "cuda", dtype), ref) <= BOUND[dtype], (dtype, lname)
        del x, ref
    dy = torch.randn_like(run(x64, "ref", torch.float32))
    x = x64.float().requires_grad_()
    dx, = torch.autograd.grad(run(x, "cuda", torch.float32), x, dy.float())
    xr = x64.float().double().requires_grad_()
    dxr, = torch.autograd.grad(run(xr, "ref", torch.float32), xr, dy.float().double())
    assert rel_err(dx, dxr) <= 1e-5
