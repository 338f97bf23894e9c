"""Bad inputs a new user hits get one line naming the key, the file and what is wrong, before any
compute starts (stage preflights): init checkpoints and run roots."""
from __future__ import annotations

import os

import pytest
import torch

from cartoon_stylegan import checkpoint
from cartoon_stylegan.networks import Discriminator, Generator
from pipeline.config import ConfigError
from stages import REGISTRY, load_config
from stages.models import arch

TINY = ["data.resolution=16", "model.channel_max=16", "model.style_dim=16", "model.n_mlp=2"]


def _preflight(path, fmt="native", *extra):
    cfg = load_config(None, [*TINY, f"pretrain.init.path={path}", f"pretrain.init.format={fmt}", *extra])
    REGISTRY["pretrain"].preflight(cfg)


def _nets(cfg):
    g_cfg, d_cfg = arch(cfg)
    return Generator(**g_cfg), Discriminator(**d_cfg)


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty (0 bytes)"),
    (b"hello, I am a text file\n" * 10, "not a PyTorch checkpoint"),
])
def test_init_file_that_is_no_checkpoint(tmp_path, content, expected):
    p = tmp_path / "init.pt"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)) as e:
        _preflight(p)
    assert str(e.value).startswith("pretrain.init.path: ") and str(p) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_truncated_and_mismatched_and_misnamed_checkpoints(tmp_path):
    cfg = load_config(None, TINY)
    G, D = _nets(cfg)
    good = tmp_path / "good.pt"
    checkpoint.save_transfer(good, g=G, d=D, g_ema=G, meta={})
    _preflight(good)  # fits: no error
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated or damaged"):
        _preflight(cut)
    with pytest.raises(ConfigError, match="does not fit the configured architecture"):
        _preflight(good, "native", "model.style_dim=32")
    his = tmp_path / "his.pt"
    torch.save({"g": G.state_dict(), "d": D.state_dict(), "g_ema": G.state_dict(),
                "latent_avg": torch.zeros(16)}, his)
    with pytest.raises(ConfigError, match="this is a rosinality checkpoint .*: set init.format=rosinality"):
        _preflight(his)
    _preflight(his, "rosinality")
    with pytest.raises(ConfigError, match="this is a rosinality checkpoint .*: set init.format=rosinality"):
        _preflight(his, "nvlabs")


def test_run_root_that_is_a_file(tmp_path, capsys):
    from pipeline.__main__ import main

    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["run", "shard", f"run_root={f}", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "run_root:" in err and "is a file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder: nothing to refuse")
def test_run_root_read_only(tmp_path, capsys):
    from pipeline.__main__ import main

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["run", "shard", f"run_root={ro / 'runs'}", "tracking.enabled=false"]) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)
