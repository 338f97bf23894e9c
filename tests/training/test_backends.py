"""The training backends without launching anything: DeepSpeed config checks, the DeepSpeed resume store
(atomic directories, incomplete ones skipped, the other backend's checkpoints refused), the launch settings.

The real engines run in tests/e2e/test_deepspeed.py (2 processes through the launcher)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.training import LocalCheckpoints, find_latest_resume, read_resume_step
from cartoon_stylegan.training.deepspeed_config import (
    SHIPPED_DEEPSPEED,
    DeepSpeedConfigError,
    check_deepspeed_config,
    load_deepspeed_config,
)
from cartoon_stylegan.training.deepspeed_store import DeepSpeedCheckpoints, partition_files
from cartoon_stylegan.training.state import RESUME_FORMAT


@pytest.mark.parametrize("cfg, words", [
    ({"zero_optimization": {"stage": 3}}, ["stage 3", "partitions the weights", "stage 1", "2"]),
    ({"zero_optimization": {"stage": 4}}, ["stage must be 0, 1 or 2"]),
    ({"bf16": {"enabled": True}}, ["bf16.enabled", "launch.mixed_precision=bf16"]),
    ({"fp16": {"enabled": True}}, ["fp16.enabled"]),
    ({"optimizer": {"type": "Adam"}}, ["'optimizer' section", "lazy regularisation"]),
    ({"scheduler": {"type": "WarmupLR"}}, ["'scheduler' section"]),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, ["offload_optimizer"]),
    ({"gradient_accumulation_steps": 4}, ["gradient_accumulation_steps must be 1"]),
    ({"gradient_clipping": 1.0}, ["gradient_clipping"]),
    ([1, 2], ["expected a JSON object"]),
])
def test_configs_the_gan_loop_cannot_train_with_are_refused_naming_the_key(cfg, words):
    with pytest.raises(DeepSpeedConfigError) as e:
        check_deepspeed_config(cfg, "my.json")
    msg = str(e.value)
    assert msg.startswith("my.json: ") and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_shipped_configs_are_valid_and_named_by_stage():
    names = sorted(p.stem for p in SHIPPED_DEEPSPEED.glob("*.json"))
    assert {"zero1", "zero2"} <= set(names)
    for name in names:
        path, cfg = load_deepspeed_config(name)
        assert path == SHIPPED_DEEPSPEED / f"{name}.json"
        assert cfg["zero_optimization"]["stage"] == int(name[-1])
    off = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "none"}}}
    assert check_deepspeed_config(off) is off


def test_config_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(DeepSpeedConfigError, match=r"bad\.json: not valid JSON"):
        load_deepspeed_config(str(bad))
    with pytest.raises(DeepSpeedConfigError, match=r"'zero9' is neither a shipped config \(.*zero1.*zero2"):
        load_deepspeed_config("zero9")


def test_launch_settings_check_the_deepspeed_choice_at_load_time(tmp_path):
    from pipeline.config import ConfigError
    from stages import load_config

    cfg = load_config(None, ["launch.backend=deepspeed", "launch.deepspeed=zero1"])
    assert cfg.launch.backend == "deepspeed" and cfg.launch.deepspeed == "zero1"
    assert load_config(None, []).launch.backend == "ddp"
    three = tmp_path / "z3.json"
    three.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    for overrides, start in ((["launch.backend=deepspeed", f"launch.deepspeed={three}"], "launch.deepspeed: "),
                             (["launch.backend=deepspeed", "launch.mixed_precision=fp16"], "launch.mixed_precision: "),
                             (["launch.backend=horovod"], "launch.backend")):
        with pytest.raises(ConfigError) as e:
            load_config(None, overrides)
        assert str(e.value).startswith(start), str(e.value)
    # the DeepSpeed file is only read when the backend is deepspeed
    assert load_config(None, [f"launch.deepspeed={three}"]).launch.backend == "ddp"


# ----------------------------------------------------------------------------- the store

class _FakeEngine:
    """Writes what DeepSpeed writes for one engine (model states + one optimizer partition per rank)."""

    def __init__(self, world, stage, value=0.0):
        self.world, self.stage, self.value, self.loaded = world, stage, value, []

    def save_checkpoint(self, save_dir, tag, save_latest=True):
        d = Path(save_dir) / tag
        d.mkdir(parents=True, exist_ok=True)
        for f in partition_files(d, self.world, self.stage):
            torch.save({"v": torch.tensor(self.value)}, f)

    def load_checkpoint(self, load_dir, tag, **kw):
        self.loaded.append(str(Path(load_dir) / tag))
        return str(Path(load_dir) / tag), {}


def _state(step, world=2):
    return {"format": RESUME_FORMAT, "step": step, "nimg": step * 8, "world_size": world, "g_ema": {}}


def _store(tmp_path, world=2, stage=2, keep=3):
    engines = {"G": _FakeEngine(world, stage), "D": _FakeEngine(world, stage)}
    return DeepSpeedCheckpoints(tmp_path, keep, engines=engines, writer=True, world=world, zero_stage=stage), engines


def test_deepspeed_store_writes_complete_directories_and_keeps_the_newest(tmp_path):
    store, engines = _store(tmp_path, keep=2)
    for step in (1, 2, 3):
        where = store.save(_state(step), step * 8)
        assert where == str(tmp_path / f"resume-{step * 8:09d}.ds")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["resume-000000016.ds", "resume-000000024.ds"]  # keep=2, no partial left
    store.save(_state(3), 24)  # the same images-seen count again: replaced, nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    newest = tmp_path / "resume-000000024.ds"
    assert sorted(p.name for p in newest.iterdir()) == ["D", "G", "loop.pt"]
    assert len(list((newest / "G").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    path, state = store.latest()
    assert path == str(newest) and state["step"] == 3
    store.restore(path)
    assert engines["G"].loaded == [str(newest / "G")] and engines["D"].loaded == [str(newest / "D")]
    # the stage's view (what `run` prints before training) sees the directories too
    assert find_latest_resume(tmp_path) == newest and read_resume_step(tmp_path) == 3


def test_deepspeed_store_skips_a_killed_save_and_an_incomplete_snapshot(tmp_path):
    store, _ = _store(tmp_path)
    store.save(_state(1), 8)
    # a job killed while writing: only the .partial directory exists for step 2
    partial = tmp_path / ".partial-resume-000000016.ds"
    (partial / "G").mkdir(parents=True)
    ckpt.save_resume(partial / "loop.pt", _state(2))
    # a snapshot that lost a rank's partition file (e.g. copied without it)
    store.save(_state(3), 24)
    (tmp_path / "resume-000000024.ds" / "D" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.warns(RuntimeWarning, match=r"resume-000000024\.ds is unreadable.*missing D/zero_pp_rank_1"):
        path, state = store.latest()
    assert path.endswith("resume-000000008.ds") and state["step"] == 1
    store.save(_state(4), 32)  # the next save clears the stale partial directory
    assert not partial.exists()


def test_deepspeed_store_stops_on_another_world_size_or_zero_stage(tmp_path):
    """Not a fallback to an older snapshot or a fresh start: the run stops, saying what to change."""
    from cartoon_stylegan.training.state import SnapshotMismatch

    store, _ = _store(tmp_path, world=2)
    store.save(_state(1, world=2), 8)
    four, _ = _store(tmp_path, world=4)
    with pytest.raises(SnapshotMismatch, match="written by 2 processes, now 4"):
        four.latest()
    zero1, _ = _store(tmp_path, world=2, stage=1)
    with pytest.raises(SnapshotMismatch, match="ZeRO stage 2, now 1"):
        zero1.latest()
    assert store.latest()[1]["step"] == 1


def test_each_backend_refuses_the_others_checkpoints(tmp_path):
    ds, _ = _store(tmp_path / "a")
    ds.save(_state(1), 8)
    with pytest.raises(ValueError, match=r"launch.backend=deepspeed; this run uses launch.backend=ddp"):
        LocalCheckpoints(tmp_path / "a").latest()
    local = LocalCheckpoints(tmp_path / "b")
    local.save(_state(1), 8)
    other, _ = _store(tmp_path / "b")
    with pytest.raises(ValueError, match=r"launch.backend=ddp; this run uses launch.backend=deepspeed"):
        other.latest()
