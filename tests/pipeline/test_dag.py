"""DAG: order, skip when up to date, --force, failure stops dependents, rerun resumes there."""
import pytest

from pipeline import dag
from pipeline.config import load_config


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"run_root={tmp_path}", "experiment=t"])


class Recorder:
    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, name, fp, previous):
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        return {"ok": name}


def test_plan_orders_dependencies_first():
    assert dag.plan(["all"]) == ["shard", "pretrain", "finetune", "swap", "eval"]
    assert dag.plan(["eval"]) == ["shard", "pretrain", "finetune", "eval"]
    assert dag.plan(["swap", "shard"]) == ["shard", "pretrain", "finetune", "swap"]
    with pytest.raises(KeyError, match="did you mean 'pretrain'"):
        dag.plan(["pretrian"])


def test_skip_force_and_stale(cfg):
    rec = Recorder()
    assert dag.run(cfg, ["all"], execute=rec, say=lambda m: None) == 0
    assert rec.calls == ["shard", "pretrain", "finetune", "swap", "eval"]
    assert all(dag.status(cfg, n) == "done" for n in dag.STAGES)
    said = []
    rec.calls.clear()
    assert dag.run(cfg, ["all"], execute=rec, say=said.append) == 0
    assert rec.calls == [] and sum("up to date" in m for m in said) == 5
    # --force on one stage reruns it; its dependents become stale (inputs changed) and rerun too
    assert dag.run(cfg, ["pretrain"], force=True, execute=rec, say=lambda m: None) == 0
    assert rec.calls == ["pretrain"]
    assert dag.status(cfg, "finetune") == "stale" and dag.status(cfg, "shard") == "done"
    rec.calls.clear()
    dag.run(cfg, ["all"], execute=rec, say=lambda m: None)
    assert rec.calls == ["finetune", "swap", "eval"]
    # a config change of one section makes that stage and its dependents stale, not the others
    cfg2 = load_config(None, [f"run_root={cfg.run_root}", "experiment=t", "swap.seeds=3"])
    assert dag.status(cfg2, "swap") == "stale" and dag.status(cfg2, "eval") == "done"
    cfg3 = load_config(None, [f"run_root={cfg.run_root}", "experiment=t", "data.resolution=64"])
    assert [dag.status(cfg3, n) for n in dag.STAGES] == ["stale"] * 5


def test_failure_stops_dependents_then_resumes_there(cfg):
    said = []
    rec = Recorder(fail={"finetune"})
    assert dag.run(cfg, ["all"], execute=rec, say=said.append) == dag.EXIT_FAILED
    assert rec.calls == ["shard", "pretrain", "finetune"]
    assert any("[finetune] FAILED: RuntimeError: boom in finetune" in m for m in said)
    assert any("not run: swap, eval" in m for m in said)
    assert dag.status(cfg, "finetune") == "failed" and dag.status(cfg, "swap") == "never run"
    assert dag.read_state(cfg, "finetune")["error"] == "RuntimeError: boom in finetune"
    rec = Recorder()
    assert dag.run(cfg, ["all"], execute=rec, say=lambda m: None) == 0
    assert rec.calls == ["finetune", "swap", "eval"]


def test_stopped_stage_exit_code(cfg):
    def stop(name, fp, prev):
        if name == "pretrain":
            raise dag.StageStopped("signal")
        return {}

    assert dag.run(cfg, ["all"], execute=stop, say=lambda m: None) == dag.EXIT_STOPPED
    assert dag.status(cfg, "pretrain") == "stopped"


def test_cli_list_show_dry_run(tmp_path, capsys):
    from pipeline.__main__ import main

    args = [f"run_root={tmp_path}", "experiment=cli"]
    assert main(["list", *args]) == 0
    out = capsys.readouterr().out
    assert "shard" in out and "never run" in out and "eval" in out
    assert main(["run", "--dry-run", "all", *args]) == 0
    assert "finetune" in capsys.readouterr().out
    assert main(["show", "swap", *args]) == 0
    assert "seeds:" in capsys.readouterr().out
    assert main(["show", "data.resolution=31", *args]) == 2
    assert "data.resolution: 31 is not a power of two" in capsys.readouterr().err
