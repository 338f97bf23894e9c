"""Choosing between the reference and the CUDA kernels, and building the kernels once.

No GPU and no compiler needed: the loader and the build step are replaced by fakes
where a test needs them; CUDA tensors are FakeTensors.
"""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import cartoon_stylegan.ops as ops
from cartoon_stylegan.ops import backend, build

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch):
    """Each test starts with no load attempt made and no impl forced by the environment."""
    monkeypatch.delenv(backend.ENV_IMPL, raising=False)
    backend.reset()
    yield
    backend.reset()


def fake_cuda_tensor(*shape):
    with FakeTensorMode():
        return torch.empty(*shape, device="cuda")


def failing_loader(reason="nvcc not found at /opt/cuda/bin/nvcc", fix="set CUDA_HOME to the CUDA toolkit"):
    calls = []

    def load():
        calls.append(1)
        raise build.OpsBuildError(reason, fix)

    return load, calls


# ------------------------------------------------------------------------------ impl choice


def test_requested_impl_defaults_env_and_explicit(monkeypatch):
    assert backend.requested_impl(None) == "auto"
    assert backend.requested_impl("auto") == "auto"
    monkeypatch.setenv(backend.ENV_IMPL, "ref")
    assert backend.requested_impl(None) == "ref"
    assert backend.requested_impl("auto") == "ref"      # the environment overrides auto ...
    assert backend.requested_impl("cuda") == "cuda"     # ... but not an explicit choice
    monkeypatch.setenv(backend.ENV_IMPL, "CUDA ")
    assert backend.requested_impl(None) == "cuda"


def test_invalid_impl_names_its_source(monkeypatch):
    with pytest.raises(ValueError, match=r"impl="):
        backend.requested_impl("triton")
    monkeypatch.setenv(backend.ENV_IMPL, "fast")
    with pytest.raises(ValueError, match=backend.ENV_IMPL):
        backend.use_cuda(torch.zeros(1))


def test_cpu_tensor_auto_uses_reference_without_loading(monkeypatch):
    load, calls = failing_loader()
    monkeypatch.setattr(backend, "_load", load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.use_cuda(torch.zeros(2), None) is False
        assert backend.use_cuda(torch.zeros(2), "auto") is False
        y = ops.fused_bias_act(torch.randn(2, 3), torch.randn(3))
    assert calls == []
    assert y.shape == (2, 3)


def test_ref_never_loads(monkeypatch):
    load, calls = failing_loader()
    monkeypatch.setattr(backend, "_load", load)
    monkeypatch.setenv(backend.ENV_IMPL, "ref")
    assert backend.use_cuda(fake_cuda_tensor(2), None) is False
    assert backend.use_cuda(fake_cuda_tensor(2), "ref") is False
    assert calls == []


def test_no_cuda_auto_is_reference():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert backend.use_cuda(torch.zeros(3), None) is False
    # A CUDA tensor without CUDA (only a FakeTensor can be one): warns and falls back.
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        assert backend.use_cuda(fake_cuda_tensor(3), None) is False


def test_forced_cuda_on_cpu_tensor_names_the_device(monkeypatch):
    load, calls = failing_loader()
    monkeypatch.setattr(backend, "_load", load)
    with pytest.raises(RuntimeError, match=r"device 'cpu'"):
        backend.use_cuda(torch.zeros(2), "cuda")
    monkeypatch.setenv(backend.ENV_IMPL, "cuda")
    with pytest.raises(RuntimeError, match=r"device 'cpu'"):
        ops.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2))
    assert calls == []


# ------------------------------------------------------------------------------ fallback


def test_build_failure_warns_once_with_reason_and_falls_back(monkeypatch):
    load, calls = failing_loader()
    monkeypatch.setattr(backend, "_load", load)
    with warnings.catch_warnings(record=True) as caught, FakeTensorMode():
        warnings.simplefilter("always")
        x = torch.empty(2, 3, 4, 4, device="cuda")
        assert backend.use_cuda(x, None) is False
        assert backend.use_cuda(x, "auto") is False
        y = ops.fused_bias_act(x, torch.zeros(3, device="cuda"))   # runs the reference
        z = ops.upsample2d(x, torch.tensor([1.0, 3.0, 3.0, 1.0]))
    ours = [w for w in caught if "cartoon_stylegan.ops" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    msg = str(ours[0].message)
    assert issubclass(ours[0].category, RuntimeWarning)
    assert "nvcc not found at /opt/cuda/bin/nvcc" in msg      # why
    assert "set CUDA_HOME to the CUDA toolkit" in msg         # how to fix
    assert "reference" in msg and f"{backend.ENV_IMPL}=ref" in msg
    assert len(calls) == 1                                    # tried once per process
    assert y.shape == (2, 3, 4, 4) and z.shape == (2, 3, 8, 8)


def test_build_failure_with_forced_cuda_raises_the_reason(monkeypatch):
    load, calls = failing_loader(reason="compiling the CUDA kernels failed")
    monkeypatch.setattr(backend, "_load", load)
    x = fake_cuda_tensor(2, 3)
    with pytest.raises(RuntimeError, match="compiling the CUDA kernels failed"):
        backend.use_cuda(x, "cuda")
    # ... and again (no retry, same error), while auto still falls back quietly after one warning.
    with pytest.raises(RuntimeError, match="compiling the CUDA kernels failed"):
        backend.use_cuda(x, "cuda")
    with pytest.warns(RuntimeWarning):
        assert backend.use_cuda(x, "auto") is False
    assert len(calls) == 1


def test_unexpected_loader_exception_is_reported_too(monkeypatch):
    def load():
        raise OSError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(backend, "_load", load)
    with pytest.warns(RuntimeWarning, match="libcudart.so.13"):
        assert backend.load_extension() is None


def test_successful_load_is_used_and_cached(monkeypatch):
    calls = []
    sentinel = object()

    def load():
        calls.append(1)
        return sentinel

    monkeypatch.setattr(backend, "_load", load)
    x = fake_cuda_tensor(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.use_cuda(x, None) is True
        assert backend.use_cuda(x, "cuda") is True
        assert backend.load_extension() is sentinel
    assert len(calls) == 1


def test_use_cuda_traces_under_torch_compile():
    def f(x):
        return x * 2 if backend.use_cuda(x, None) else x + 1

    explained = torch._dynamo.explain(f)(torch.ones(3))
    assert explained.graph_break_count == 0
    assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(torch.ones(3)), torch.full((3,), 2.0))


def test_kernels_ready_is_marked_constant_as_the_public_decorator_would():
    """backend.py sets the attribute torch.compiler.assume_constant_result sets (the decorator itself
    imports torch._dynamo at import time); a torch that marks constants differently fails here."""
    def probe(required):
        return True

    marked = torch.compiler.assume_constant_result(probe)
    attrs = dict(vars(marked))
    assert attrs == {"_dynamo_marked_constant": True}, attrs
    assert vars(backend._kernels_ready) == attrs
    code = "import sys, cartoon_stylegan.ops; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_import_builds_nothing():
    code = (
        "import sys, cartoon_stylegan.ops as o; from cartoon_stylegan.ops import backend;"
        "assert not backend._state.tried;"
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'cpp_extension imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


# ------------------------------------------------------------------------------ cache key


@pytest.fixture
def sources(tmp_path, monkeypatch):
    src = tmp_path / "csrc"
    src.mkdir()
    for p in build.source_files():
        (src / p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(build, "csrc_dir", lambda: src)
    return src


def test_cache_key_changes_with_sources_and_torch(sources, monkeypatch):
    key = build.build_key()
    assert key == build.build_key()                     # deterministic
    assert len(key) == 16 and int(key, 16) >= 0
    cu = sources / "upfirdn2d.cu"
    cu.write_text(cu.read_text() + "\n// edited\n")
    edited = build.build_key()
    assert edited != key
    (sources / "new_kernel.cuh").write_text("#pragma once\n")   # a new header counts too
    assert build.build_key() != edited
    (sources / "notes.txt").write_text("not a source")           # other files do not
    with_header = build.build_key()
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert build.build_key() != with_header


def test_sources_are_listed():
    names = {p.name for p in build.source_files()}
    assert {"ops.h", "ops.cpp", "bias_act.cu", "upfirdn2d.cu"} <= names
    assert {p.name for p in build.compiled_sources(build.source_files())} == {"ops.cpp", "bias_act.cu", "upfirdn2d.cu"}


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("CARTOON_STYLEGAN_CACHE", str(tmp_path / "c"))
    assert build.cache_root() == tmp_path / "c" / "ops"
    monkeypatch.delenv("CARTOON_STYLEGAN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "cartoon_stylegan" / "ops"


def test_arch_helpers(monkeypatch):
    assert [build.normalize_arch(a) for a in ("90", "sm_90", "9.0", "compute_86", "10.0", "120", "8.9+PTX")] == \
        ["9.0", "9.0", "9.0", "8.6", "10.0", "12.0", "8.9"]
    with pytest.raises(ValueError):
        build.normalize_arch("hopper")
    assert build.arch_tag(["9.0", "8.0"], ptx=True) == "sm80-sm90-ptx"
    assert build.gencode_flags(["9.0", "8.0"], ptx=True) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    assert build.default_build_arches() == (["8.0", "9.0"], True)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    assert build.default_build_arches() == (list(build.DEFAULT_ARCHES), True)


def fake_finished_build(d: Path, arches, key="k"):
    d.mkdir(parents=True)
    (d / "lib.so").write_bytes(b"")
    (d / "build.json").write_text(json.dumps({"library": "lib.so", "key": key, "arches": arches}))
    return d


def test_find_build_matches_architectures(tmp_path):
    key = "0123456789abcdef"
    wide = fake_finished_build(tmp_path / f"{key}-sm80-sm86-sm90-ptx", ["8.0", "8.6", "9.0"])
    exact = fake_finished_build(tmp_path / f"{key}-sm90", ["9.0"])
    (tmp_path / f"{key}-sm75").mkdir()                                    # no build.json: unfinished
    fake_finished_build(tmp_path / f"tmp-{key}-sm89-1234", ["8.9"])      # a build in progress
    fake_finished_build(tmp_path / "fedcba9876543210-sm89", ["8.9"])    # another key
    assert build.find_build(key, ["9.0"], tmp_path) == exact            # fewest extra targets
    assert build.find_build(key, ["8.0", "9.0"], tmp_path) == wide
    assert build.find_build(key, ["8.9"], tmp_path) is None
    assert build.find_build(key, ["7.5"], tmp_path) is None
    assert build.find_build(key, ["9.0"], tmp_path / "missing") is None


def test_ensure_built_reuses_a_finished_build_without_a_toolchain(tmp_path, monkeypatch):
    def no_toolchain():
        raise AssertionError("must not look for nvcc when a build exists")

    monkeypatch.setattr(build, "toolchain", no_toolchain)
    done = fake_finished_build(tmp_path / f"{build.build_key()}-sm80-sm90-ptx", ["8.0", "9.0"])
    assert build.ensure_built(["9.0"], root=tmp_path) == done
    assert build.ensure_built(["sm_80"], root=tmp_path) == done


def test_toolchain_reasons(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(build.OpsBuildError, match="CPU-only build"):
        build.toolchain()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(build.OpsBuildError, match="ninja") as e:
        build.toolchain()
    assert "pip install ninja" in e.value.fix
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(build.OpsBuildError, match="no CUDA toolkit found"):
        build.toolchain()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/nonexistent/cuda")
    with pytest.raises(build.OpsBuildError, match="nvcc not found"):
        build.toolchain()


def test_unwritable_cache_is_a_build_error(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "toolchain", lambda: {"nvcc": "nvcc", "release": "13.0", "include": [], "libdirs": []})
    monkeypatch.setattr(build, "supported_arches", lambda nvcc: None)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(build.OpsBuildError, match="CARTOON_STYLEGAN_CACHE"):
        build.ensure_built(["9.0"], root=blocker / "ops")


# ------------------------------------------------------------------------------ build once


def fake_builder(log, delay=0.4):
    def build_fn(tmp: Path):
        log.append(("start", time.monotonic()))
        time.sleep(delay)
        (tmp / "lib.so").write_bytes(b"\x7fELF")
        (tmp / "build.json").write_text(json.dumps({"library": "lib.so", "arches": ["9.0"]}))
        log.append(("end", time.monotonic()))

    return build_fn


def test_lock_serialises_concurrent_builders_threads(tmp_path):
    log, results, waits = [], [], []
    final, lock = tmp_path / "key-sm90", tmp_path / "key.lock"
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(build.build_once(final, lock, fake_builder(log), on_wait=lambda: waits.append(1)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [final] * 4
    assert [e for e, _ in log] == ["start", "end"]          # built exactly once
    assert len(waits) >= 1                                   # the others waited for it
    assert build.read_build_info(final) is not None
    assert not list(tmp_path.glob("tmp-*"))


def _process_builder(final, lock, out):
    log = []
    path = build.build_once(Path(final), Path(lock), fake_builder(log, delay=0.6))
    Path(out).write_text(json.dumps({"path": str(path), "built": len(log) > 0}))


def test_lock_serialises_concurrent_builders_processes(tmp_path):
    final, lock = tmp_path / "key-sm90", tmp_path / "key.lock"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_builder, args=(str(final), str(lock), str(tmp_path / f"out{i}.json")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(3)]
    assert {o["path"] for o in outs} == {str(final)}
    assert sum(o["built"] for o in outs) == 1


def test_failed_build_leaves_nothing_behind_and_releases_the_lock(tmp_path):
    final, lock = tmp_path / "key-sm90", tmp_path / "key.lock"

    def broken(tmp: Path):
        (tmp / "half.o").write_bytes(b"")
        raise build.OpsBuildError("compiling the CUDA kernels failed")

    with pytest.raises(build.OpsBuildError):
        build.build_once(final, lock, broken)
    assert not final.exists() and not list(tmp_path.glob("tmp-*"))
    log = []
    assert build.build_once(final, lock, fake_builder(log, delay=0)) == final   # lock is free again
    assert len(log) == 2


def test_file_lock_timeout(tmp_path):
    lock = tmp_path / "l.lock"
    with build.file_lock(lock):
        holder_done = threading.Event()
        errors = []

        def other():
            try:
                with build.file_lock(lock, timeout=0.3):
                    pass
            except TimeoutError as e:
                errors.append(e)
            holder_done.set()

        t = threading.Thread(target=other)
        t.start()
        holder_done.wait(10)
        t.join()
    assert errors and "build lock" in str(errors[0])


def test_file_lock_without_flock_support_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def unsupported(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    log = []
    assert build.build_once(tmp_path / "k-sm90", tmp_path / "k.lock", fake_builder(log, delay=0)) == tmp_path / "k-sm90"
    assert len(log) == 2
    assert "does not support file locks" in caplog.text


# ------------------------------------------------------------------------------ build_ops (the CLI's entry)


def test_build_ops_without_a_cuda_toolchain_raises_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("CARTOON_STYLEGAN_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ops.OpsBuildError, match="CPU-only build") as e:
        ops.build_ops(verbose=False)
    assert len(str(e.value).splitlines()) == 1 and e.value.fix
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(build, "toolchain", lambda: (_ for _ in ()).throw(
        build.OpsBuildError("no CUDA toolkit found (CUDA_HOME/CUDA_PATH unset and no nvcc on PATH)", "set CUDA_HOME")))
    with pytest.raises(ops.OpsBuildError, match="no CUDA toolkit"):
        ops.build_ops(verbose=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "banana")
    with pytest.raises(ops.OpsBuildError, match="banana"):
        ops.build_ops(verbose=False)


def test_build_error_keeps_the_compiler_output_out_of_the_message():
    e = build.OpsBuildError("compiling the CUDA kernels failed", "rerun with verbose=True", "line 1\nline 2")
    assert str(e) == "compiling the CUDA kernels failed; rerun with verbose=True" and e.detail == "line 1\nline 2"
