"""Through the real stages (in this process, tracking off): after pretrain + finetune, the frozen
parameters of every variant's network-final.pt are bit-identical to the source's (G and G_ema to the
source generator -- the pretrained G_ema, where every fine-tune starts --, D to D) and the trainable
ones moved. The variants differ in what they train (FreezeSG trains the mapping, FreezeG does not).

The frozen sets are written out by hand from rosinality's layout at 32 px (as in
tests/training/test_freeze.py), not computed with the code under test:
  G: mapping `style.*`; 4 px `input.`, `conv1.`, `to_rgb1.`; 8 px `convs.0/1.`, `to_rgbs.0.`
  D: `convs.0.` (fromRGB) and `convs.1.` read 32 px; `convs.2.` 16 px; `convs.3.` 8 px; `final_*` head
"""
from __future__ import annotations

import pytest
import torch

from cartoon_stylegan import checkpoint
from pipeline.__main__ import main

pytestmark = pytest.mark.slow  # trains (the whole DAG or a training stage): not in make test-fast

BLOCKS_UP_TO_8 = ("input.", "conv1.", "to_rgb1.", "convs.0.", "convs.1.", "to_rgbs.0.")
MAPPING = ("style.",)
D_ABOVE_16 = ("convs.0.", "convs.1.")

# variant (configs/default.yaml) -> (frozen G prefixes, frozen D prefixes); the D side is shared
EXPECTED = {
    "freezed": ((), D_ABOVE_16),
    "freezeg": (BLOCKS_UP_TO_8 + MAPPING, D_ABOVE_16),
    "freezesg": (BLOCKS_UP_TO_8, D_ABOVE_16),
    "freezesg_structure": (BLOCKS_UP_TO_8, D_ABOVE_16),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    args = [f"run_root={root}", "experiment=frozen", "tracking.enabled=false",
            "data.resolution=32", "data.source.count=32", "data.target.count=32", "shard.workers=1",
            "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2",
            "pretrain.kimg=0.032", "pretrain.batch=8", "pretrain.tick_kimg=0.032", "pretrain.sample_kimg=1",
            "pretrain.snapshot_kimg=1", "pretrain.grid=[2,2]",
            "finetune.kimg=0.032", "finetune.batch=8", "finetune.tick_kimg=0.032", "finetune.sample_kimg=1",
            "finetune.snapshot_kimg=1", "finetune.grid=[2,2]"]
    assert main(["run", "finetune", *args]) == 0
    exp = root / "frozen"
    source = checkpoint.load_transfer(exp / "pretrain" / "checkpoints" / "network-final.pt")
    variants = {v: checkpoint.load_transfer(exp / "finetune" / v / "checkpoints" / "network-final.pt")
                for v in EXPECTED}
    return source, variants


def _params(net):
    return {n: p.detach() for n, p in net.named_parameters()}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_frozen_parameters_bit_identical_trainable_ones_moved(trained, variant):
    source, variants = trained
    tuned = variants[variant]
    g_frozen, d_frozen = EXPECTED[variant]
    assert tuned["meta"]["freeze"]["freeze_g_up_to"] == (8 if g_frozen else None)
    assert tuned["meta"]["freeze"]["freeze_d_above"] == (16 if d_frozen else None)
    for key, prefixes in (("g", g_frozen), ("g_ema", g_frozen), ("d", d_frozen)):
        src, new = _params(source["d" if key == "d" else "g_ema"]), _params(tuned[key])
        assert src.keys() == new.keys()
        frozen = {n for n in src if n.startswith(prefixes)} if prefixes else set()
        if prefixes:
            assert frozen, (key, prefixes)
        if key != "d":  # configs/default.yaml has model.use_noise: false -> noise strengths never train
            noise = {n for n in src if n.endswith(".noise.weight")}
            assert len(noise) == 7, sorted(noise)  # conv1 + convs.0..5 at 32 px
            frozen |= noise
        for n in src:
            if n in frozen:
                assert torch.equal(src[n], new[n]), f"{variant}: frozen {key}.{n} changed"
            else:
                assert not torch.equal(src[n], new[n]), f"{variant}: trainable {key}.{n} did not move"


def test_variants_train_different_parameter_sets(trained):
    _, variants = trained
    trained_sets = {}
    for name, nets in variants.items():
        f = nets["meta"]["freeze"]
        trained_sets[name] = (f["freeze_g_up_to"], f["freeze_mapping"], f["freeze_style_up_to"])
    assert len(set(trained_sets.values())) == 3  # freezesg and freezesg_structure differ by their loss only
    assert trained_sets["freezeg"] != trained_sets["freezesg"]


def test_freezesg_takes_the_source_styles(trained):
    _, variants = trained
    # W+ entries of layers <= 8 px (4 px: 2, 8 px: +2) come from the source mapping
    assert variants["freezesg"]["meta"]["wplus_prefix_len"] == 4
    assert variants["freezeg"]["meta"]["wplus_prefix_len"] == 0
