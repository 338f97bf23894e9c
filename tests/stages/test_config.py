"""The shipped registry's config: defaults, overrides, and errors that name key, value and what is accepted."""
import pytest

from pipeline.config import ConfigError, parse_override, to_dict
from stages import load_config


def test_default_config_loads_and_round_trips(tmp_path):
    import yaml

    cfg = load_config()
    assert cfg.data.resolution == 32
    assert cfg.data.source.input == "synthetic:faces" and cfg.data.target.input == "synthetic:cartoons"
    assert cfg.finetune.variants["freezesg_structure"].structure_loss.on == "rgb"
    assert cfg.finetune.variants["freezed"].loop_overrides() == {} and cfg.finetune.ada  # the D side is shared
    # a resolved config written back loads to the same thing (the launcher relies on it)
    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(to_dict(cfg)))
    again = load_config(p)
    again.config_path = cfg.config_path
    assert to_dict(again) == to_dict(cfg)


def test_overrides_parse_yaml_values():
    assert parse_override("pretrain.kimg=2") == (["pretrain", "kimg"], 2)
    assert parse_override("data.source.input=synthetic:faces") == (["data", "source", "input"], "synthetic:faces")
    assert parse_override("eval.metrics=[fid,kid]") == (["eval", "metrics"], ["fid", "kid"])
    assert parse_override("launch.mixed_precision=no") == (["launch", "mixed_precision"], "no")
    cfg = load_config(None, ["pretrain.kimg=2", "data.resolution=64", "finetune.variants.freezed.kimg=1",
                             "finetune.run_variants=[freezed]"])
    assert cfg.pretrain.kimg == 2.0 and isinstance(cfg.pretrain.kimg, float)
    assert cfg.data.resolution == 64
    assert cfg.finetune.variants["freezed"].loop_overrides()["kimg"] == 1.0
    assert list(cfg.finetune.selected()) == ["freezed"]


@pytest.mark.parametrize("override, expected", [
    ("pretrian.kimg=2", "did you mean pretrain"),
    ("finetune.variants.freezed.grid=[1,2,3]", "finetune.variants.freezed.grid: [1, 2, 3] must have 2 entries"),
    ("pretrain.betas=[0.0,1.5]", "pretrain.betas[1]: 1.5 is above the maximum"),
    ("finetune.variants={'../x': {}}", "finetune.variants.../x: '../x' must be a name"),
    ("pretrain.kimgg=2", "did you mean pretrain.kimg"),
    ("finetune.variants.freezed.freeze_d_abov=8", "did you mean finetune.variants.freezed.freeze_d_above"),
    ("pretrain.kimg=abc", "pretrain.kimg: 'abc' is not a number"),
    ("pretrain.batch=2.5", "pretrain.batch: 2.5 is not an int"),
    ("data.xflip=maybe", "data.xflip: 'maybe' is not a bool"),
    ("data.resolution=33", "data.resolution: 33 is not a power of two"),
    ("data.resolution=2048", "data.resolution: 2048 is above the maximum 1024"),
    ("pretrain.lr_g=-1", "pretrain.lr_g: -1.0 is below the minimum 0.0"),
    ("shard.format=gif", "shard.format: 'gif' is not one of 'png' | 'jpeg'"),
    ("data.source.input=synthetic:dogs", "unknown synthetic domain 'dogs'"),
    ("finetune.variants.freezeg.freeze_g_up_to=64", "above data.resolution (32)"),
    ("finetune.run_variants=[nope]", "finetune.run_variants"),
    ("experiment=a/b", "experiment: 'a/b'"),
    ("pretrain.kimg", "expected KEY=VALUE"),
    ("pretrain.kimg.x=1", "pretrain.kimg is a value, not a section"),
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

    p.write_text(f"extends: {DEFAULT_CONFIG}\nexperiment: child\npretrain: {{kimg: 1}}\n")
    cfg = load_config(p)
    assert cfg.experiment == "child" and cfg.pretrain.kimg == 1 and cfg.pretrain.batch == load_config().pretrain.batch


def test_old_train_section_still_accepted_with_a_note(tmp_path, capsys):
    """`train:` was the pretrain stage's section; configs in the wild use it (one release of grace)."""
    old = tmp_path / "old.yaml"
    old.write_text("train: {kimg: 2, batch: 4}\n")
    cfg = load_config(old, ["train.kimg=3"])
    assert cfg.pretrain.kimg == 3 and cfg.pretrain.batch == 4
    assert "config section 'train' is now 'pretrain'" in capsys.readouterr().err
    both = tmp_path / "both.yaml"
    both.write_text("train: {kimg: 2}\npretrain: {kimg: 2}\n")
    with pytest.raises(ConfigError, match="both 'train'"):
        load_config(both)


def test_variant_loop_overrides_are_the_loop_settings_all_optional():
    """A variant accepts exactly the loop's settings (declared once, in LoopOptions), each optional."""
    import dataclasses

    from cartoon_stylegan.training.options import LoopOptions
    from stages.finetune import VariantConfig

    loop = {f.name for f in dataclasses.fields(LoopOptions)} - {"seed"}
    fields = {f.name: f for f in dataclasses.fields(VariantConfig)}
    assert loop <= set(fields) and all(fields[n].default is None for n in loop)
    assert fields["lr_g"].metadata["help"] == LoopOptions.__dataclass_fields__["lr_g"].metadata["help"]


@pytest.mark.parametrize("path", sorted(p.name if p.parent.name == "configs" else f"finetune/{p.name}"
                                        for p in __import__("pathlib").Path(__file__).resolve().parents[2]
                                        .joinpath("configs").glob("**/*.yaml")
                                        if p.parent.name in ("configs", "finetune")))
def test_shipped_configs_are_valid(path):
    from pipeline.config import DEFAULT_CONFIG

    # the fine-tune configs take the architecture from the source file; 256 px stands in for one here
    # the configs that start from a pretrained file get none here (its architecture would come from it)
    over = ["data.resolution=256", "finetune.init.path=null"] if path.startswith("finetune/") else \
        ["finetune.init.path=null"] if path == "comparison.yaml" else []
    cfg = load_config(DEFAULT_CONFIG.parent / path, over)
    assert cfg.experiment


@pytest.mark.parametrize("text, expected", [
    ("", "is empty"),
    ("extends: [a.yaml]\n", "extends: ['a.yaml'] must be one file name"),
    ("experiment: a\nexperiment: b\n", "duplicate key 'experiment'"),
    ("pretrain: {kimg: 1, kimg: 2}\n", "duplicate key 'kimg'"),
])
def test_bad_yaml_files_get_one_line(tmp_path, text, expected):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_extends_cycle_and_non_utf8(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="goes round in a circle"):
        load_config(tmp_path / "a.yaml")
    p = tmp_path / "latin1.yaml"
    p.write_bytes("experiment: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_yaml_12_floats_and_home_in_run_root(monkeypatch, tmp_path):
    from pipeline.artifacts import experiment_dir

    cfg = load_config(None, ["pretrain.lr_g=2e-3", "finetune.lr_d=1E-4"])
    assert cfg.pretrain.lr_g == 0.002 and cfg.finetune.lr_d == 0.0001
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["run_root=~/runs"])
    assert experiment_dir(cfg) == tmp_path / "runs" / "default"


@pytest.mark.parametrize("override, expected", [
    ("swap.kinds=[]", "swap.kinds: empty"),
    ("finetune.run_variants=[]", "finetune.run_variants: empty"),
    ("eval.metrics=[]", "eval.metrics: empty"),
])
def test_plans_that_would_fail_late_or_do_nothing_are_refused(override, expected):
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, expected", [
    (["pretrain.compile=true"], "pretrain.compile: true is not supported with launch.backend=deepspeed"),
    (["finetune.compile=true"], "finetune.compile: true is not supported"),
    (["finetune.variants.freezeg.compile=true"], "finetune.variants.freezeg.compile: true is not supported"),
])
def test_compile_with_deepspeed_is_refused_at_config_time(overrides, expected):
    pytest.importorskip("deepspeed")
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        load_config(None, ["launch.backend=deepspeed", *overrides])
    # every variant overriding the section's true: nothing compiles under deepspeed, accepted
    off = [f"finetune.variants.{n}.compile=false" for n in ("freezed", "freezeg", "freezesg", "freezesg_structure")]
    load_config(None, ["launch.backend=deepspeed", "finetune.compile=true", *off])
    load_config(None, ["pretrain.compile=true", "finetune.compile=true"])  # ddp: fine


def test_eval_reference_larger_than_the_data_is_refused_before_training():
    from stages import REGISTRY

    cfg = load_config(None, ["eval.n_real=5000"])  # loads: eval may not be in the plan
    with pytest.raises(ConfigError, match=__import__("re").escape("eval.n_real: 5000 is more than data.target.count (2000)")):
        REGISTRY["eval"].preflight(cfg)
