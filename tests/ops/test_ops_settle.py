"""Building once per machine and one implementation for all ranks (ops.backend.settle, build markers).

No GPU here: the accelerator is a stand-in that says its device is CUDA, and the load is
monkeypatched, so what is checked is the coordination -- who builds first, who waits, what
all ranks agree on, and that a failed build is not repeated by every rank.
"""
from __future__ import annotations

import json

import pytest
import torch

from cartoon_stylegan.ops import backend, build


class FakeAcc:
    """An Accelerator as settle sees it; ``others_min``: the smallest flag the other ranks report."""

    def __init__(self, rank, world, local_main, others_min=1.0, events=None):
        self.process_index, self.num_processes = rank, world
        self.is_main_process, self.is_local_main_process = rank == 0, local_main
        self.device = torch.device("cuda", 0)
        self.others_min, self.events = others_min, events if events is not None else []

    def wait_for_everyone(self):
        self.events.append(("barrier", self.process_index))


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(backend, "all_ranks_min", lambda acc, v: min(v, acc.others_min))
    backend.reset()
    monkeypatch.delenv(backend.ENV_IMPL, raising=False)
    yield
    backend.reset()


def test_local_main_builds_before_the_barrier_others_after(monkeypatch):
    events = []
    monkeypatch.setattr(backend, "_load", lambda: events.append("load") or "lib")
    said = []
    assert backend.settle(FakeAcc(0, 2, True, others_min=1.0, events=events), say=said.append) == "cuda"
    assert events == ["load", ("barrier", 0)]
    backend.reset()
    events.clear()
    assert backend.settle(FakeAcc(1, 2, False, others_min=1.0, events=events), say=said.append) == "cuda"
    assert events == [("barrier", 1), "load"]
    assert said == ["cartoon_stylegan.ops: all 2 rank(s) use the CUDA kernels"]  # once: rank 0 only


def test_ranks_fall_back_together_when_one_lacks_the_kernels(monkeypatch, recwarn):
    monkeypatch.setattr(backend, "_load", lambda: "lib")  # this rank has them ...
    said = []
    assert backend.settle(FakeAcc(0, 4, True, others_min=0.0), say=said.append) == "ref"  # ... another not
    assert backend.requested_impl() == "ref" and backend.requested_impl("auto") == "ref"
    assert backend.requested_impl("cuda") == "cuda"  # an explicit choice still wins
    assert said and "reference ops" in said[0]


def test_cpu_training_settles_on_the_reference_without_a_build(monkeypatch):
    monkeypatch.setattr(backend, "_load", lambda: pytest.fail("no build on CPU"))
    acc = FakeAcc(0, 1, True)
    acc.device = torch.device("cpu")
    assert backend.settle(acc, say=lambda m: None) == "ref"
    assert backend.requested_impl() == "auto"  # nothing forced for later CUDA work


def test_failed_build_leaves_a_marker_that_fails_the_others_fast(tmp_path, monkeypatch):
    calls = []

    def failing_compile(tmp, key, arches, ptx, tc, verbose):
        calls.append(1)
        raise build.OpsBuildError("compiling the CUDA kernels failed", "fix the toolkit", "ptxas error X")

    monkeypatch.setattr(build, "_compile", failing_compile)
    monkeypatch.setattr(build, "toolchain", lambda: {"nvcc": "nvcc", "release": "13.0"})
    monkeypatch.setattr(build, "supported_arches", lambda nvcc: None)
    with pytest.raises(build.OpsBuildError, match="compiling the CUDA kernels failed"):
        build.ensure_built(["9.0"], ptx=False, root=tmp_path)
    marker = build.failure_marker(tmp_path, build.build_key(), ["9.0"], False)
    assert json.loads(marker.read_text())["detail"] == "ptxas error X"
    for _ in range(3):  # every other rank / later run: the same reason at once, no compile
        with pytest.raises(build.OpsBuildError, match="an earlier build of these kernel sources failed") as e:
            build.ensure_built(["9.0"], ptx=False, root=tmp_path)
        assert "compiling the CUDA kernels failed" in str(e.value) and "build-ops" in str(e.value)
    assert len(calls) == 1
    with pytest.raises(build.OpsBuildError, match="compiling the CUDA kernels failed"):  # build-ops retries
        build.ensure_built(["9.0"], ptx=False, root=tmp_path, retry_failed=True)
    assert len(calls) == 2
