"""An NVlabs pickle as a stage's init (``*.init.format=nvlabs``): preflight, architecture checks, the
config's lr multiplier taken by rescaling, the truncation centre kept while the mapping is unchanged."""
import pytest
import torch

from cartoon_stylegan.sampling import Sampler, pinned_truncation_center, truncation_center
from pipeline.config import ConfigError
from stages import REGISTRY, load_config
from stages.models import load_weights

from . import nvlabs_fixture as fx

TINY = ["data.resolution=16", "model.channel_max=16", "model.style_dim=16", "model.n_mlp=2", "model.use_noise=true"]


@pytest.fixture
def pkl(tmp_path, monkeypatch):
    monkeypatch.setenv(fx.SENTINEL_ENV, str(tmp_path / "ran"))
    p = tmp_path / "ffhq-tiny.pkl"
    p.write_bytes(fx.snapshot_bytes(G=fx.generator(seed=0), D=fx.discriminator(), G_ema=fx.generator(seed=2)))
    yield p
    assert not (tmp_path / "ran").exists()


def _cfg(p, fmt="nvlabs", *extra, stage="finetune"):
    return load_config(None, [*TINY, f"{stage}.init.path={p}", f"{stage}.init.format={fmt}", *extra])


def test_preflight_accepts_a_fitting_pickle_and_names_the_format_of_a_misdeclared_one(pkl):
    REGISTRY["finetune"].preflight(_cfg(pkl))
    REGISTRY["pretrain"].preflight(_cfg(pkl, stage="pretrain"))
    with pytest.raises(ConfigError, match="this is a nvlabs checkpoint .*: set init.format=nvlabs"):
        REGISTRY["finetune"].preflight(_cfg(pkl, "native"))
    with pytest.raises(ConfigError, match="does not fit the configured architecture"):
        REGISTRY["pretrain"].preflight(_cfg(pkl, "nvlabs", "model.channel_max=8", stage="pretrain"))
    # the fine-tune's source file fixes the architecture: a config that says otherwise is refused as it loads
    with pytest.raises(ConfigError, match=r"model.channel_max: the config says 8, but the source generator .*"
                                          r"ffhq-tiny.pkl \(finetune.init.path\) has 16; leave model.channel_max out"):
        _cfg(pkl, "nvlabs", "model.channel_max=8")


def test_a_config_that_leaves_the_architecture_out_follows_the_file(pkl, tmp_path):
    """data.resolution and model.* come from finetune.init.path where the config does not set them."""
    (tmp_path / "mine.yaml").write_text("experiment: mine\ndata:\n  target: {input: synthetic:cartoons, count: 64}\n")
    cfg = load_config(tmp_path / "mine.yaml", [f"finetune.init.path={pkl}", "finetune.init.format=nvlabs"])
    assert (cfg.data.resolution, cfg.model.style_dim, cfg.model.n_mlp, cfg.model.channel_max) == (16, 16, 2, 16)
    assert cfg.model.lr_mlp == pytest.approx(0.01)
    REGISTRY["finetune"].preflight(cfg)
    # the mapping's lr multiplier is the run's choice (the weights are rescaled): another value is kept
    cfg = load_config(tmp_path / "mine.yaml", [f"finetune.init.path={pkl}", "finetune.init.format=nvlabs",
                                               "model.lr_mlp=0.05"])
    assert cfg.model.lr_mlp == pytest.approx(0.05)
    assert REGISTRY.plan(["all"], cfg) == ["shard", "finetune", "swap", "eval"]
    assert "pretrain" in REGISTRY.left_out(cfg)


def test_load_weights_takes_the_configs_lr_and_keeps_the_function(pkl):
    ref = load_weights(_cfg(pkl), str(pkl), "nvlabs")["g_ema"]
    assert ref.lr_mlp == pytest.approx(0.01)
    nets = load_weights(_cfg(pkl, "nvlabs", "model.lr_mlp=0.05"), str(pkl), "nvlabs")
    G = nets["g_ema"]
    assert G.lr_mlp == pytest.approx(0.05)
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(Sampler(G, truncation=0.5)(z), Sampler(ref, truncation=0.5)(z), rtol=1e-5, atol=1e-5)
    # the pinned w_avg followed the rescale, and G's copy (the training G) is G, not G_ema
    torch.testing.assert_close(pinned_truncation_center(G), pinned_truncation_center(ref))
    assert not torch.equal(nets["g"].style[1].weight, G.style[1].weight)


def test_pinned_centre_is_dropped_once_the_mapping_trains(pkl):
    G = load_weights(_cfg(pkl), str(pkl), "nvlabs")["g_ema"]
    w_avg = pinned_truncation_center(G).clone()
    torch.testing.assert_close(truncation_center(G), w_avg)
    with torch.no_grad():
        G.style[1].bias.add_(0.1)  # an optimizer step
    assert pinned_truncation_center(G) is None
    assert not torch.allclose(truncation_center(G), w_avg)


def test_an_unusable_source_file_is_named_as_the_config_loads(pkl, tmp_path):
    """The architecture follows the file, so a file that cannot be read is refused first, in one line,
    not as a complaint about a key it would have set (swap.export_at above a default resolution)."""
    (tmp_path / "mine.yaml").write_text("experiment: mine\ndata:\n  target: {input: synthetic:cartoons, count: 64}\n"
                                        "swap: {export_at: 16}\n")
    with pytest.raises(ConfigError, match=r"finetune.init.path: '.*nope.pt': not a file \(expected a rosinality"):
        load_config(tmp_path / "mine.yaml", [f"finetune.init.path={tmp_path / 'nope.pt'}", "finetune.init.format=rosinality"])
    with pytest.raises(ConfigError, match="this is a nvlabs checkpoint .*: set init.format=nvlabs"):
        load_config(tmp_path / "mine.yaml", [f"finetune.init.path={pkl}", "finetune.init.format=rosinality"])


def test_our_own_file_fixes_noise_and_mapping_lr_too(tmp_path):
    """A network-final.pt of ours (an exact format) records use_noise and lr_mlp: a config that leaves them
    out follows it (the default's networks have no noise inputs); one that says otherwise is refused."""
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.networks import Discriminator, Generator

    g = Generator(16, style_dim=16, n_mlp=2, channel_max=16, use_noise=False)
    f = tmp_path / "network-final.pt"
    checkpoint.save_transfer(f, g=g, d=Discriminator(16, channel_max=16), g_ema=g, meta={})
    (tmp_path / "mine.yaml").write_text("experiment: mine\ndata:\n  target: {input: synthetic:cartoons, count: 64}\n")
    cfg = load_config(tmp_path / "mine.yaml", [f"finetune.init.path={f}"])
    assert cfg.model.use_noise is False and cfg.data.resolution == 16
    REGISTRY["finetune"].preflight(cfg)
    with pytest.raises(ConfigError, match="model.use_noise: the config says True, but the source generator"):
        load_config(tmp_path / "mine.yaml", [f"finetune.init.path={f}", "model.use_noise=true"])
