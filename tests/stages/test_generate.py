"""`python -m pipeline generate`: images from the source, a variant, or the two weight-swapped, on an
experiment whose networks the test writes itself (tiny, random): the command's own logic, in-process."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main

TINY = ["data.resolution=16", "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2",
        "finetune.run_variants=[freezesg,freezeg]", "tracking.enabled=false"]


@pytest.fixture
def experiment(tmp_path):
    """run_root with a source network and a trained 'freezesg' variant (freezeg never trained)."""
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.networks import Discriminator, Generator
    from pipeline.artifacts import StagePaths
    from stages import load_config

    args = [f"run_root={tmp_path / 'runs'}", *TINY]
    cfg = load_config(None, args)
    torch.manual_seed(0)
    src, tgt = (Generator(16, style_dim=32, n_mlp=2, channel_max=16, use_noise=False) for _ in range(2))
    D = Discriminator(16, channel_max=16)
    paths = StagePaths(cfg, "finetune")
    f = paths.of("pretrain").final_network()
    f.parent.mkdir(parents=True)
    checkpoint.save_transfer(f, g=src, d=D, g_ema=src)
    v = paths.final_network("freezesg")
    v.parent.mkdir(parents=True)
    checkpoint.save_transfer(v, g=tgt, d=D, g_ema=tgt, meta={"wplus_prefix_len": 2})
    return args, src, tgt


def _img(path):
    return np.asarray(Image.open(path))


def test_generate_source_variant_and_swap(experiment, tmp_path, capsys):
    args, src, tgt = experiment
    outs = {}
    for name, extra in (("source", ["--variant", "source"]), ("variant", ["--variant", "freezesg"]),
                        ("swap", ["--variant", "freezesg", "--swap-res", "8"])):
        out = tmp_path / name
        assert main(["generate", *extra, "--seeds", "3,1-2", "--truncation", "1", "--batch", "2", "--out", str(out),
                     *args]) == 0, capsys.readouterr().err
        rec = json.loads((out / "generate.json").read_text())
        assert rec["seeds"] == [3, 1, 2] and rec["images"] == ["seed00003.png", "seed00001.png", "seed00002.png"]
        assert _img(out / "grid.png").shape == (16, 48, 3)
        outs[name] = [_img(out / f) for f in rec["images"]]
    # the source's image for seed 3 is its generator's output for that seed's z, as written
    from cartoon_stylegan.imageutil import to_uint8
    from cartoon_stylegan.sampling import Sampler

    z = torch.randn(32, generator=torch.Generator().manual_seed(3))[None]
    with torch.no_grad():
        want = to_uint8(Sampler(src.eval())(z, noise_mode="const"))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(outs["source"][0], want)
    assert not np.array_equal(outs["source"][0], outs["variant"][0])
    assert not np.array_equal(outs["variant"][0], outs["swap"][0])


@pytest.mark.parametrize("extra, words", [
    (["--variant", "freezeg"], ["'freezeg' has no trained network", "run finetune", "trained: source, freezesg"]),
    (["--variant", "cartoonish"], ["not a variant of experiment 'default'", "trained: source, freezesg"]),
    (["--variant", "freezesg", "--swap-res", "12"], ["--swap-res 12: a power of two from 4 to 16"]),
    (["--variant", "source", "--swap-res", "8"], ["--swap-res needs a fine-tuned --variant"]),
    (["--seeds", "9-3"], ["range '9-3' goes down"]),
    (["--seeds", "a"], ["expected numbers and ranges"]),
    (["--truncation", "1.5"], ["--truncation 1.5: expected 0..1"]),
])
def test_generate_errors_are_one_line(experiment, tmp_path, capsys, extra, words):
    args, _, _ = experiment
    assert main(["generate", *extra, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_generate_without_a_trained_source_says_what_to_run(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "o"), f"run_root={tmp_path / 'none'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert "no source generator in experiment 'default'" in err and "python -m pipeline run pretrain" in err


def test_generate_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--variant", "--swap-res", "--seeds", "--truncation", "--out", "--config"):
        assert opt in out
