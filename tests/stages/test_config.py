"""Config loading: defaults, overrides, and errors that name key, value and what is accepted."""
import pytest

from pipeline.config import ConfigError, load_config, parse_override, to_dict


def test_default_config_loads_and_round_trips(tmp_path):
    import yaml

    cfg = load_config()
    assert cfg.data.resolution == 32
    assert cfg.data.source.input == "synthetic:faces" and cfg.data.target.input == "synthetic:cartoons"
    assert cfg.finetune.variants["freezesg_structure"].structure_loss.on == "rgb"
    assert cfg.finetune.variants["freezed"].loop == {"ada": True}
    # a resolved config written back loads to the same thing (the launcher relies on it)
    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    again = load_config(p)
    again.config_path = cfg.config_path
    assert to_dict(again) == to_dict(cfg)


def test_overrides_parse_yaml_values():
    assert parse_override("train.kimg=2") == (["train", "kimg"], 2)
    assert parse_override("data.source.input=synthetic:faces") == (["data", "source", "input"], "synthetic:faces")
    assert parse_override("eval.metrics=[fid,kid]") == (["eval", "metrics"], ["fid", "kid"])
    assert parse_override("launch.mixed_precision=no") == (["launch", "mixed_precision"], "no")
    cfg = load_config(None, ["train.kimg=2", "data.resolution=64", "finetune.variants.freezed.kimg=1",
                             "finetune.run_variants=[freezed]"])
    assert cfg.train.kimg == 2.0 and isinstance(cfg.train.kimg, float)
    assert cfg.data.resolution == 64
    assert cfg.finetune.variants["freezed"].loop["kimg"] == 1.0
    assert list(cfg.finetune.selected()) == ["freezed"]


@pytest.mark.parametrize("override, expected", [
    ("trian.kimg=2", "did you mean train"),
    ("train.kimgg=2", "did you mean train.kimg"),
    ("finetune.variants.freezed.freeze_d_abov=8", "did you mean finetune.variants.freezed.freeze_d_above"),
    ("train.kimg=abc", "train.kimg: 'abc' is not a number"),
    ("train.batch=2.5", "train.batch: 2.5 is not an int"),
    ("data.xflip=maybe", "data.xflip: 'maybe' is not a bool"),
    ("data.resolution=33", "data.resolution: 33 is not a power of two"),
    ("data.resolution=2048", "data.resolution: 2048 is above the maximum 1024"),
    ("train.lr_g=-1", "train.lr_g: -1.0 is below the minimum 0.0"),
    ("shard.format=gif", "shard.format: 'gif' is not one of 'png' | 'jpeg'"),
    ("data.source.input=synthetic:dogs", "unknown synthetic domain 'dogs'"),
    ("finetune.variants.freezeg.freeze_g_up_to=64", "above data.resolution (32)"),
    ("finetune.run_variants=[nope]", "finetune.run_variants"),
    ("experiment=a/b", "experiment: 'a/b'"),
    ("train.kimg", "expected KEY=VALUE"),
    ("train.kimg.x=1", "train.kimg is a value, not a section"),
])
def test_errors_name_key_value_and_accepted(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_extends(tmp_path):
    p = tmp_path / "child.yaml"
    from pipeline.config import DEFAULT_CONFIG

    p.write_text(f"extends: {DEFAULT_CONFIG}\nexperiment: child\ntrain: {{kimg: 1}}\n")
    cfg = load_config(p)
    assert cfg.experiment == "child" and cfg.train.kimg == 1 and cfg.train.batch == load_config().train.batch


@pytest.mark.parametrize("path", sorted(p.name if p.parent.name == "configs" else f"finetune/{p.name}"
                                        for p in __import__("pathlib").Path(__file__).resolve().parents[2]
                                        .joinpath("configs").glob("**/*.yaml")
                                        if p.parent.name in ("configs", "finetune")))
def test_shipped_configs_are_valid(path):
    from pipeline.config import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG.parent / path)
    assert cfg.experiment
