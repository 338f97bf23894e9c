"""A config change never discards a trained model (issue: "never lose a trained model").

Through the real CLI on a tiny config: a reporting-only change keeps the model as it is, a larger
kimg continues from the newest checkpoint, an architecture change keeps the old model (moved
aside) and trains a new one, and a bad input fails before anything is moved.
"""
from __future__ import annotations

import pytest
from e2e_helpers import TINY_DATA_MODEL, cli, read_json, stage_state

pytestmark = pytest.mark.slow  # trains (the whole DAG or a training stage): not in make test-fast

EXP = "keep"
BASE = [f"experiment={EXP}", *TINY_DATA_MODEL, "tracking.enabled=false", "pretrain.batch=4",
        "pretrain.tick_kimg=0.008", "pretrain.sample_kimg=1", "pretrain.snapshot_kimg=0.008", "pretrain.grid=[2,2]"]


def _files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def test_config_changes_keep_or_continue_the_model(tmp_path):
    from pipeline.artifacts import file_digest

    root = tmp_path / "runs"
    pre = root / EXP / "pretrain"
    final = pre / "checkpoints" / "network-final.pt"
    cli("run", "pretrain", *BASE, "pretrain.kimg=0.016", run_root=root)
    first = file_digest(final)
    digest0 = stage_state(root, EXP, "pretrain")["digest"]

    # reporting only: the stage reruns, finds the model trained, keeps it; its digest (what finetune sees) is unchanged
    out = cli("run", "pretrain", *BASE, "pretrain.kimg=0.016", "pretrain.sample_kimg=2", run_root=root).stdout
    assert "already trained (0.016 kimg)" in out
    assert file_digest(final) == first and stage_state(root, EXP, "pretrain")["digest"] == digest0

    # a larger budget continues from the newest checkpoint: no step trained twice
    out = cli("run", "pretrain", *BASE, "pretrain.kimg=0.032", run_root=root).stdout
    assert "continuing to 0.032 kimg" in out
    res = stage_state(root, EXP, "pretrain")["result"]
    assert res["start_step"] == 4 and res["step"] == 8 and res["kimg"] == 0.032
    continued = file_digest(final)
    assert continued != first

    # a bad init checkpoint fails in preflight, before anything is touched
    before = _files(pre)
    bad = cli("run", "pretrain", *BASE, "pretrain.kimg=0.032", "model.style_dim=16",
              f"pretrain.init.path={tmp_path / 'missing.pt'}", run_root=root, expect=None)
    assert bad.returncode == 2 and "pretrain.init.path" in bad.stdout
    assert _files(pre) == before

    # an architecture change trains a new model; the old one is kept, moved aside
    out = cli("run", "pretrain", *BASE, "pretrain.kimg=0.016", "model.style_dim=16", run_root=root).stdout
    assert "kept in" in out and "model differ" in out
    kept = list((pre / "superseded").glob("*/checkpoints/network-final.pt"))
    assert len(kept) == 1 and file_digest(kept[0]) == continued
    assert read_json(kept[0].parent.parent / "done.json")["kimg"] == 0.032
    assert stage_state(root, EXP, "pretrain")["result"]["step"] == 4 and file_digest(final) != continued
