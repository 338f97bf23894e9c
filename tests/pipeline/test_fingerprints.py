"""Finished work stays finished: the fingerprints of the shipped configs' stages are pinned. A change
that moves one makes every existing experiment redo that stage (a re-shard deletes and rewrites the tars;
if the raw images have moved since, the run stops). If the change is meant to, update the pins and say
so; a new setting should be declared with ``later=`` (toolbox.settings.setting) so that it does not."""
from __future__ import annotations

import pytest

from pipeline import dag
from stages import REGISTRY, load_config

# computed with the code of the release before the settings lr_mapping, structure_loss.reduce/source_w
# and shard.crop existed, in a run root with no stage run yet; eval's moved on purpose when the identity
# measure came (eval.identity_n, on by default: an eval without it is redone; its source and baseline
# rows come from the row cache, only the fine-tuned runs are scored again)
PINNED = {
    "configs/default.yaml": {"shard": "4ad5992c22505c47", "pretrain": "263952c0e0836a30",
                             "finetune": "ce35343f665cbd05", "swap": "a0f16d7795f04337", "eval": "0f0b90a525344f01"},
    "configs/ffhq256.yaml": {"shard": "f200dbedae0e4178", "pretrain": "9189e4d7a102be74",
                             "finetune": "e93317610f13e7e6", "swap": "a0f16d7795f04337", "eval": "e4eba5641cf0466e"},
}


@pytest.mark.parametrize("config", sorted(PINNED))
def test_shipped_configs_keep_their_fingerprints(config, tmp_path):
    from pipeline.config import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG.parent.parent / config, ["run_root=/tmp/fp-empty-root"])
    got = {n: dag.fingerprint(REGISTRY, cfg, n) for n in PINNED[config]}
    assert got == PINNED[config]


def test_a_later_setting_moves_the_fingerprint_only_when_set(tmp_path):
    cfg = load_config(None, ["run_root=/tmp/fp-empty-root"])
    base = dag.fingerprint(REGISTRY, cfg, "finetune")
    same = load_config(None, ["run_root=/tmp/fp-empty-root", "finetune.lr_mapping=1.0"])
    assert dag.fingerprint(REGISTRY, same, "finetune") == base
    moved = load_config(None, ["run_root=/tmp/fp-empty-root", "finetune.lr_mapping=30"])
    assert dag.fingerprint(REGISTRY, moved, "finetune") != base
    crop = load_config(None, ["run_root=/tmp/fp-empty-root", "shard.crop=face"])
    assert dag.fingerprint(REGISTRY, crop, "shard") != dag.fingerprint(REGISTRY, cfg, "shard")


def test_the_shard_fingerprint_follows_which_sets_are_sharded_and_the_source_file_counts(tmp_path):
    """With the source generator a file, shard reads only the target set (editing data.source changes
    nothing) and removing the file brings the source set back (the fingerprint moves: shard runs again);
    finetune's fingerprint holds the file's content."""
    import torch

    from cartoon_stylegan.checkpoint import save_transfer
    from cartoon_stylegan.networks import Discriminator, Generator
    from stages.models import arch

    tiny = ["data.resolution=16", "model.channel_max=16", "model.style_dim=16", "model.n_mlp=2",
            f"run_root={tmp_path}"]
    g_cfg, d_cfg = arch(load_config(None, tiny))
    f = tmp_path / "src.pt"
    torch.manual_seed(0)
    save_transfer(f, g=Generator(**g_cfg), d=Discriminator(**d_cfg), g_ema=Generator(**g_cfg), meta={})
    with_file = load_config(None, [*tiny, f"finetune.init.path={f}"])
    other_source = load_config(None, [*tiny, f"finetune.init.path={f}", "data.source.count=99"])
    without = load_config(None, tiny)
    fp = lambda c, n: dag.fingerprint(REGISTRY, c, n)  # noqa: E731
    assert fp(with_file, "shard") == fp(other_source, "shard") != fp(without, "shard")
    before = fp(with_file, "finetune")
    torch.manual_seed(1)
    f.unlink()
    save_transfer(f, g=Generator(**g_cfg), d=Discriminator(**d_cfg), g_ema=Generator(**g_cfg), meta={})
    assert fp(load_config(None, [*tiny, f"finetune.init.path={f}"]), "finetune") != before
