"""The CUDA sources compile, and the kernels compute what the reference computes. No GPU.

* test_nvcc_compiles: every .cu/.cpp in ops/csrc through this machine's nvcc, with torch's
  headers and torch's extension flags, for sm_80 and sm_90, into object files (nothing
  runs), so a syntax or type error cannot land; ptxas must report no register spills.
* The emulated tests: the same sources compiled as plain C++ with -DCSG_EMULATE_CUDA
  (csrc/emulate.h runs each block's CUDA threads as fibers, __syncthreads as a barrier)
  and registered as the CPU kernels of the cartoon_stylegan operators. The whole CUDA
  path -- cuda_impl's autograd, the ops.cpp binding, the kernels' index arithmetic,
  shared-memory tiles and both thread mappings -- then runs on CPU tensors and is
  compared with the reference in value, gradient and gradient of gradient, eagerly and
  under torch.compile. (What this cannot see: GPU-only behaviour such as timing, the
  real memory system, half-precision device intrinsics. benchmarks/ops.py covers those.)
* test_jit_build_links (slow; where a GPU is present or CARTOON_STYLEGAN_TEST_JIT_BUILD=1):
  the real build, ``build.ensure_built``, into a temporary cache: toolkit discovery,
  nvcc, link, load, which registers the CUDA kernels.
"""
from __future__ import annotations

import inspect
import os
import random
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import cartoon_stylegan.ops as ops
from cartoon_stylegan.ops import backend, build, cuda_impl

ARCHES = ("8.0", "9.0")
SOURCES = build.compiled_sources(build.source_files())


# The warnings that signal a hang or garbage at run time, as errors, for the host compiler
# (gcc: a function that only calls itself, a missing return, a read before any write) and
# for nvcc's device front end (940: missing return; 549: used before set).
HANG_AND_GARBAGE_AS_ERRORS = (
    "-Xcompiler", "-Wall,-Werror=infinite-recursion,-Werror=return-type,-Werror=uninitialized",
    "-Xcudafe", "--diag_error=940", "-Xcudafe", "--diag_error=549",
)


def _nvcc():
    import torch.utils.cpp_extension as cpp_extension

    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    return nvcc if nvcc and os.path.exists(nvcc) else None


def _torch_include_paths():
    import torch.utils.cpp_extension as cpp_extension

    params = inspect.signature(cpp_extension.include_paths).parameters
    if "device_type" in params:          # torch >= 2.6
        return cpp_extension.include_paths(device_type="cuda")
    return cpp_extension.include_paths(cuda=True)  # older torch


def _cxx_std(release: str) -> str:
    # Recent torch headers need C++20 (ATen.h refuses C++17); nvcc >= 12 compiles C++20,
    # and older torch headers compile under it too.
    try:
        major = int(release.split(".")[0])
    except ValueError:
        major = 0
    return "-std=c++20" if major >= 12 else "-std=c++17"


@pytest.fixture(scope="module")
def nvcc_setup():
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA_HOME and no nvcc on PATH): cannot compile the CUDA sources")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", version)
    release = m.group(1) if m else "0.0"
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout
    arches = [a for a in ARCHES if f"compute_{a.replace('.', '')}" in listed] or list(ARCHES[-1:])
    import torch.utils.cpp_extension as cpp_extension

    flags = [
        _cxx_std(release), "-O3", "-Xcompiler", "-fPIC", *HANG_AND_GARBAGE_AS_ERRORS,
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-DTORCH_EXTENSION_NAME=cartoon_stylegan_ops_check", "-DTORCH_API_INCLUDE_EXTENSION_H",
        *cpp_extension.COMMON_NVCC_FLAGS,
        *build.gencode_flags(arches, ptx=False),
    ]
    includes = [f"-I{p}" for p in _torch_include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    return nvcc, flags, includes


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_nvcc_compiles(source, nvcc_setup, tmp_path):
    nvcc, flags, includes = nvcc_setup
    cmd = [nvcc, "-c", str(source), "-o", str(tmp_path / (source.name + ".o")), *flags, *includes,
           f"-I{build.csrc_dir()}"]
    if source.suffix == ".cu":
        cmd += ["-Xptxas", "-v"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"nvcc failed on {source.name}:\n{r.stderr[-6000:]}"
    assert (tmp_path / (source.name + ".o")).stat().st_size > 0
    # The tile kernels keep the filter, a window and the accumulators in registers: a
    # spill there would cost real bandwidth. (Elsewhere ptxas may spill around the rare
    # 64-bit division call; that path is cold.)
    for block in r.stderr.split("Compiling entry function")[1:]:
        name = block.split("'")[1] if "'" in block else block[:80]
        m = re.search(r"(\d+) bytes spill stores", block)
        if "tile_kernel" in name and m:
            assert int(m.group(1)) == 0, f"{source.name}: register spills in {name}:\n{block[:600]}"


# ------------------------------------------------------------------------------ emulation


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The kernels compiled for the CPU and registered as the operators' CPU kernels."""
    import torch.utils.cpp_extension as cpp_extension

    if not cpp_extension.is_ninja_available():
        pytest.skip("ninja not installed")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("emulated_ops")
    wrappers = []
    for src in SOURCES:
        w = d / f"{src.stem}_emulated.cpp"
        w.write_text(f'#include "{src}"\n')
        wrappers.append(str(w))
    old_jobs = os.environ.get("MAX_JOBS")
    os.environ["MAX_JOBS"] = "1"  # shared CI cores: one compiler at a time
    try:
        cpp_extension.load(
            name="cartoon_stylegan_ops_emulated", sources=wrappers, build_directory=str(d),
            extra_cflags=["-O1", "-DCSG_EMULATE_CUDA"], extra_include_paths=[str(build.csrc_dir())],
            with_cuda=False, is_python_module=False, verbose=False,
        )
    finally:
        if old_jobs is None:
            os.environ.pop("MAX_JOBS", None)
        else:
            os.environ["MAX_JOBS"] = old_jobs
    return torch.ops.cartoon_stylegan


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0])
BLUR2D = torch.outer(BLUR, BLUR) / 64

# (up, down, filter, padding); each runs NCHW, channels_last with many channels (the
# NHWC thread mapping) and channels_last with 3 channels (NCHW mapping, strided).
UPFIRDN_CASES = {
    "up2-4x4": (2, 1, BLUR2D, (2, 1, 2, 1)),                 # G: upsample (tile kernel)
    "down2-4x4": (1, 2, BLUR2D, (1, 1, 1, 1)),               # D: downsample (tile)
    "blur-4x4": (1, 1, BLUR2D, (2, 1, 2, 1)),                # blur after a transposed conv (tile)
    "up2-sep4-oddpad": (2, 1, BLUR / 8, (1, 2, 2, 1)),       # separable, other polyphase alignment
    "down2-sep2-crop": (1, 2, torch.tensor([0.5, 0.5]), (-1, 2, 0, -1)),
    "blur-3x3-flipless": (1, 1, torch.randn(3, 3), (1, 1, 0, 2)),
    "up3": (3, 1, torch.randn(6, 6), (3, 2, 1, 4)),          # general kernel
    "down3": (1, 3, torch.randn(5, 5), (2, 2, 2, 2)),
    "up2-down2": (2, 2, BLUR2D, (1, 2, 2, 1)),
    "sep12-up2": (2, 1, torch.randn(12), (6, 5, 6, 5)),      # long separable: two 1-D passes
    "5x3-nonsquare": (1, 1, torch.randn(5, 3), (2, 2, 1, 1)),
}


@pytest.mark.parametrize("name", list(UPFIRDN_CASES))
def test_upfirdn2d_matches_reference(emulated, name):
    up, down, f, pad = UPFIRDN_CASES[name]
    rng = random.Random(name)
    for layout, channels in (("nchw", 5), ("nhwc", 40), ("nhwc", 3)):
        for flip in (False, True):
            x = torch.randn(2, channels, rng.randint(5, 12), rng.randint(5, 12), dtype=torch.float64)
            if layout == "nhwc":
                x = x.to(memory_format=torch.channels_last)
            ref = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.5, impl="ref")
            out = cuda_impl.upfirdn2d_cuda(x, f, up, up, down, down, *pad, flip, 1.5)
            assert out.shape == ref.shape
            assert rel_err(out, ref) < 1e-12, (layout, channels, flip)
            if layout == "nhwc":
                assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_upfirdn2d_low_precision(emulated, dtype, tol):
    for name in ("up2-4x4", "down2-4x4", "blur-4x4", "sep12-up2"):
        up, down, f, pad = UPFIRDN_CASES[name]
        x = torch.randn(2, 24, 9, 11).to(dtype)
        ref = ops.upfirdn2d(x.double(), f, up=up, down=down, padding=pad, gain=up * up, impl="ref")
        out = cuda_impl.upfirdn2d_cuda(x, f, up, up, down, down, *pad, False, float(up * up))
        assert out.dtype == dtype
        # The two-pass path rounds its intermediate to the dtype, as NVlabs' does.
        assert rel_err(out, ref) < (3 * tol if name == "sep12-up2" else tol), name


def test_upfirdn2d_public_helpers_route_to_the_kernels(emulated, monkeypatch):
    """The public helpers' argument normalisation, through the CUDA path."""
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64)
    expected = {
        "upsample2d": ops.upsample2d(x, BLUR, impl="ref"),
        "downsample2d": ops.downsample2d(x, BLUR2D, impl="ref"),
        "filter2d": ops.filter2d(x, BLUR2D, padding=(1, 0), impl="ref"),
        "upfirdn2d": ops.upfirdn2d(x, BLUR2D, up=(2, 1), down=(1, 2), padding=(1, 2, 0, 1), impl="ref"),
        "bias_act": ops.fused_bias_act(x, torch.arange(4.0, dtype=torch.float64), clamp=1.0, impl="ref"),
    }
    monkeypatch.setattr(backend, "use_cuda", lambda x, impl=None: True)
    got = {
        "upsample2d": ops.upsample2d(x, BLUR),
        "downsample2d": ops.downsample2d(x, BLUR2D),
        "filter2d": ops.filter2d(x, BLUR2D, padding=(1, 0)),
        "upfirdn2d": ops.upfirdn2d(x, BLUR2D, up=(2, 1), down=(1, 2), padding=(1, 2, 0, 1)),
        "bias_act": ops.fused_bias_act(x, torch.arange(4.0, dtype=torch.float64), clamp=1.0),
    }
    for k in expected:
        assert rel_err(got[k], expected[k]) < 1e-12, k


ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid"]


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_matches_reference(emulated, act):
    layouts = [((3, 7, 5, 4), 1, False), ((3, 16, 5, 4), 1, True), ((5, 33), 1, False), ((1001,), 0, False),
               ((4, 6, 7), -1, False)]
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        for shape, dim, channels_last in layouts:
            for clamp in (None, 0.7):
                x = torch.randn(shape).to(dtype)
                if channels_last:
                    x = x.to(memory_format=torch.channels_last)
                b = torch.randn(shape[dim]).to(dtype)
                ref = ops.fused_bias_act(x.double(), b.double(), dim, act, None, None, clamp, impl="ref")
                out = cuda_impl.fused_bias_act_cuda(x, b, dim % x.dim(), act, None, None, clamp)
                assert out.dtype == dtype and out.stride() == x.stride()
                assert rel_err(out, ref) < tol, (dtype, shape, clamp)
                # an unaligned view takes the scalar path
                xo = torch.randn(x.numel() + 1).to(dtype)[1:].view(shape)
                ref = ops.fused_bias_act(xo.double(), b.double(), dim, act, None, None, clamp, impl="ref")
                assert rel_err(cuda_impl.fused_bias_act_cuda(xo, b, dim % x.dim(), act, None, None, clamp), ref) < tol
    # NaN propagates like the reference (through the activation and through the clamp)
    x = torch.tensor([float("nan"), 1.0, -1.0], dtype=torch.float64)
    out = cuda_impl.fused_bias_act_cuda(x, None, 0, act, None, 2.0, 0.5)
    assert torch.isnan(out[0]) and not torch.isnan(out[1:]).any()


@pytest.mark.parametrize("name", ["up2-4x4", "down2-4x4", "blur-4x4", "up2-sep4-oddpad", "up3"])
def test_upfirdn2d_gradients(emulated, name):
    up, down, f, pad = UPFIRDN_CASES[name]
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return cuda_impl.upfirdn2d_cuda(x, f, up, up, down, down, *pad, False, 1.7)

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))
    g = torch.randn_like(fn(x))
    ours = torch.autograd.grad(fn(x), x, g)[0]
    ref = torch.autograd.grad(ops.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=1.7, impl="ref"), x, g)[0]
    assert rel_err(ours, ref) < 1e-12


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_bias_act_gradients(emulated, act, clamp):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(x, b):
        return cuda_impl.fused_bias_act_cuda(x, b, 1, act, None, None, clamp)

    assert gradcheck(fn, (x, b))
    assert gradgradcheck(fn, (x, b))
    # R1-style double backward against the reference
    g = torch.randn(2, 3, 4, dtype=torch.float64)
    total = []
    for impl in ("cuda", "ref"):
        y = fn(x, b) if impl == "cuda" else ops.fused_bias_act(x, b, 1, act, None, None, clamp, impl="ref")
        dx, db = torch.autograd.grad(y, (x, b), g, create_graph=True)
        penalty = dx.square().sum() + db.sum().square()
        second = (torch.autograd.grad(penalty, (x, b), allow_unused=True) if penalty.requires_grad
                  else (None, None))
        total.append([torch.zeros(()) if t is None else t for t in (dx, db, *second)])
    for ours, ref in zip(*total):
        assert torch.allclose(ours.double(), ref.double(), rtol=1e-10, atol=1e-12)


def test_filter_gradient_is_refused(emulated):
    f = BLUR2D.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="do not differentiate the filter"):
        cuda_impl.upfirdn2d_cuda(torch.randn(1, 1, 4, 4), f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)


def test_torch_compile_traces_the_operators(emulated):
    def block(x, b):
        y = cuda_impl.upfirdn2d_cuda(x, BLUR2D, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)
        y = cuda_impl.fused_bias_act_cuda(y, b, 1, "lrelu", 0.2, 2 ** 0.5, None)
        y = cuda_impl.upfirdn2d_cuda(y, BLUR2D, 1, 1, 2, 2, 1, 1, 1, 1, False, 1.0)
        return cuda_impl.fused_bias_act_cuda(y, b, 1, "tanh", None, 1.0, 0.9)

    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    assert torch._dynamo.explain(block)(x, b).graph_break_count == 0
    compiled = torch.compile(block, fullgraph=True)
    for inp in (x, x.detach().to(memory_format=torch.channels_last).requires_grad_()):
        y, ye = compiled(inp, b), block(inp, b)
        assert torch.equal(y, ye) and y.stride() == ye.stride()
        g = torch.randn_like(y)
        for a, e in zip(torch.autograd.grad(y, (inp, b), g), torch.autograd.grad(ye, (inp, b), g)):
            assert torch.allclose(a, e, rtol=1e-5, atol=1e-5)


def test_opcheck_schema_and_fake(emulated):
    """The fake implementations (used by torch.compile) agree with the kernels on shape and strides."""
    tests = ("test_schema", "test_faketensor")
    x = torch.randn(2, 4, 7, 9)
    xc = torch.randn(2, 20, 7, 9).to(memory_format=torch.channels_last)
    for args in [(x, BLUR2D, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0), (xc, BLUR, 1, 1, 2, 2, 1, 1, 1, 1, True, 1.0),
                 (x.transpose(2, 3), BLUR, 3, 1, 1, 2, 0, 1, 2, 3, False, 1.0)]:
        assert set(torch.library.opcheck(emulated.upfirdn2d.default, args, test_utils=tests).values()) == {"SUCCESS"}
    y = torch.randn(3, 5, 4, 4)
    b = torch.randn(5)
    for args in [(y, b, 1, 3, 0.2, 1.41, -1.0), (y.to(memory_format=torch.channels_last), b, 1, 4, 0.0, 1.0, 0.5),
                 (y.transpose(1, 3), None, 1, 5, 0.0, 1.0, -1.0)]:
        assert set(torch.library.opcheck(emulated.bias_act.default, args, test_utils=tests).values()) == {"SUCCESS"}
    out = emulated.bias_act(y, b, 1, 4, 0.0, 1.0, 0.5)
    for args in [(torch.randn_like(out), out, None, 4, 0.0, 1.0, 0.5),
                 (torch.randn_like(out).transpose(2, 3), out, torch.randn_like(out), 4, 0.0, 1.0, 0.5),
                 (torch.randn_like(out), out, torch.randn_like(out), 3, 0.2, 1.0, -1.0)]:
        result = torch.library.opcheck(emulated.bias_act_grad.default, args, test_utils=tests)
        assert set(result.values()) == {"SUCCESS"}


# ------------------------------------------------------------------------------ real build


@pytest.mark.slow
@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("CARTOON_STYLEGAN_TEST_JIT_BUILD")),
                    reason="a full build takes a minute on 2 cores; runs where a GPU is present, "
                           "or with CARTOON_STYLEGAN_TEST_JIT_BUILD=1")
def test_jit_build_links(tmp_path, monkeypatch):
    """The lazy build end to end: toolkit discovery, nvcc, link, load, kernel registration."""
    try:
        build.toolchain()
    except build.OpsBuildError as e:
        pytest.skip(f"no CUDA toolchain: {e.reason}")
    monkeypatch.setenv("MAX_JOBS", "1")
    path = build.ensure_built(["9.0"], ptx=False, root=tmp_path)
    info = build.read_build_info(path)
    assert info["arches"] == ["9.0"] and path.name.endswith("-sm90")
    assert not list(path.glob("*.o"))
    build.load_library(path)
    for op in ("bias_act", "bias_act_grad", "upfirdn2d"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"cartoon_stylegan::{op}", "CUDA"), op
    assert build.ensure_built(["sm_90"], root=tmp_path) == path   # found, not rebuilt
