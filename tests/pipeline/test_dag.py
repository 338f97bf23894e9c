"""DAG runner on a toy registry: order, skip when up to date, --force, failure stops dependents,
rerun resumes there, config sections assembled from the registry, and the CLI over it."""
import pytest

from pipeline import dag, registry as registries
from pipeline.config import ConfigError, load_config

TOY = "toy_registry"


@pytest.fixture(scope="module")
def reg():
    return registries.load(TOY)


def _cfg(reg, tmp_path, *over):
    (tmp_path / "c.yaml").write_text("experiment: t\n")
    return load_config(tmp_path / "c.yaml", [f"run_root={tmp_path}", *over], registry=reg)


@pytest.fixture
def cfg(reg, tmp_path):
    return _cfg(reg, tmp_path)


class Recorder:
    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, name, fp, previous):
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        return {"ok": name}


def test_plan_orders_dependencies_first(reg):
    assert reg.plan(["all"]) == ["a", "b", "c", "d"]
    assert reg.plan(["d"]) == ["a", "b", "d"]
    assert reg.plan(["c", "a"]) == ["a", "b", "c"]
    with pytest.raises(KeyError, match="did you mean 'd'"):
        reg.plan(["dd"])


def test_registry_rejects_bad_graphs():
    from pipeline.registry import Registry, Stage

    with pytest.raises(ValueError, match="needs 'z'"):
        Registry([Stage("a", print, needs=("z",))])
    with pytest.raises(ValueError, match="declared twice"):
        Registry([Stage("a", print), Stage("a", print)])


def test_root_config_from_registry(reg, tmp_path):
    cfg = _cfg(reg, tmp_path, "a.n=3", "d.word=yo")
    assert (cfg.a.n, cfg.d.word, cfg.shared.size, cfg.launch.num_processes) == (3, "yo", 4, 1)
    with pytest.raises(ConfigError, match=r"a.n: 11 is above the maximum 10"):
        _cfg(reg, tmp_path, "a.n=11")
    with pytest.raises(ConfigError, match="d.word: 'bad' needs shared.size 1"):
        _cfg(reg, tmp_path, "d.word=bad")
    assert _cfg(reg, tmp_path, "d.word=bad", "shared.size=1").d.word == "bad"
    assert _cfg(reg, tmp_path, "old_a.n=5").a.n == 5  # a renamed section is accepted with a note
    with pytest.raises(ConfigError, match="did you mean a"):
        _cfg(reg, tmp_path, "aa.n=1")


def test_skip_force_and_stale(reg, cfg, tmp_path):
    rec = Recorder()
    assert dag.run(reg, cfg, ["all"], execute=rec, say=lambda m: None) == 0
    assert rec.calls == ["a", "b", "c", "d"]
    assert all(dag.status(reg, cfg, n) == "done" for n in reg)
    said = []
    rec.calls.clear()
    assert dag.run(reg, cfg, ["all"], execute=rec, say=said.append) == 0
    assert rec.calls == [] and sum("up to date" in m for m in said) == 4
    # --force on one stage reruns it; its dependents become stale (inputs changed) and rerun too
    assert dag.run(reg, cfg, ["b"], force=True, execute=rec, say=lambda m: None) == 0
    assert rec.calls == ["b"]
    assert dag.status(reg, cfg, "c") == "stale" and dag.status(reg, cfg, "a") == "done"
    rec.calls.clear()
    dag.run(reg, cfg, ["all"], execute=rec, say=lambda m: None)
    assert rec.calls == ["c", "d"]
    # a key a stage reads makes it and its dependents stale; a key it does not read does not
    cfg2 = _cfg(reg, tmp_path, "d.word=other")
    assert [dag.status(reg, cfg2, n) for n in reg] == ["done", "done", "done", "stale"]
    cfg3 = _cfg(reg, tmp_path, "shared.size=2")
    assert [dag.status(reg, cfg3, n) for n in reg] == ["stale"] * 4


def test_failure_stops_dependents_then_resumes_there(reg, cfg):
    said = []
    rec = Recorder(fail={"b"})
    assert dag.run(reg, cfg, ["all"], execute=rec, say=said.append) == dag.EXIT_FAILED
    assert rec.calls == ["a", "b"]
    assert any("[b] FAILED: RuntimeError: boom in b" in m for m in said)
    assert any("not run: c, d" in m for m in said)
    assert dag.status(reg, cfg, "b") == "failed" and dag.status(reg, cfg, "c") == "never run"
    assert dag.read_state(cfg, "b")["error"] == "RuntimeError: boom in b"
    rec = Recorder()
    assert dag.run(reg, cfg, ["all"], execute=rec, say=lambda m: None) == 0
    assert rec.calls == ["b", "c", "d"]


def test_stopped_stage_exit_code(reg, cfg):
    def stop(name, fp, prev):
        if name == "b":
            raise dag.StageStopped("signal")
        return {}

    assert dag.run(reg, cfg, ["all"], execute=stop, say=lambda m: None) == dag.EXIT_STOPPED
    assert dag.status(reg, cfg, "b") == "stopped"


def test_cli_runs_a_toy_registry(tmp_path, capsys):
    """The real CLI and launch path over a registry that is not the shipped one."""
    from pipeline.__main__ import main
    from pipeline.artifacts import read_json

    args = ["--registry", TOY, f"run_root={tmp_path}", "experiment=cli", "tracking.enabled=false"]
    assert main(["list", *args]) == 0
    out = capsys.readouterr().out
    assert "never run" in out and all(f"\n{n} " in out for n in "abcd")
    assert main(["run", "--dry-run", "d", *args]) == 0
    out = capsys.readouterr().out
    assert "a/out.json" in out and "c/out.json" not in out
    assert main(["run", "d", *args]) == 0
    out = capsys.readouterr().out
    assert "[d] wrote D" in out and "[c]" not in out
    state = read_json(tmp_path / "cli" / "d" / "stage.json")
    assert read_json(tmp_path / "cli" / "d" / "out.json")["fingerprint"] == state["fingerprint"]
    assert main(["show", "d", *args]) == 0
    assert "word: hi" in capsys.readouterr().out
    assert main(["show", "a.n=31", *args]) == 2
    assert "a.n: 31 is above the maximum 10" in capsys.readouterr().err
    assert main(["run", "nope", *args]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err


def test_one_run_per_experiment_and_interrupted_status(reg, cfg, tmp_path, capsys):
    """A second `pipeline run` on the same experiment is refused, naming the holder; a stage left
    "running" by a killed run shows as interrupted (the lock died with its process)."""
    import os
    import subprocess
    import sys

    from pipeline.__main__ import main

    args = ["--registry", TOY, f"run_root={tmp_path}", "experiment=t", "tracking.enabled=false"]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pipeline import dag, registry; "
        "from pipeline.config import load_config; r = registry.load('toy_registry'); "
        "c = load_config(None, sys.argv[2:], registry=r)\n"
        "with dag.run_lock(c):\n    print('locked', flush=True); time.sleep(60)"),
        os.path.dirname(__file__), f"run_root={tmp_path}", "experiment=t"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", "a", *args]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on" in err and "another `pipeline run`" in err
        dag.write_state(cfg, "a", status="running")
        assert dag.status(reg, cfg, "a") == "running"
    finally:
        holder.kill()
        holder.wait()
    assert dag.status(reg, cfg, "a") == "interrupted"
    assert main(["run", "a", *args]) == 0


def test_output_paths_stay_under_the_run_root(cfg, tmp_path):
    from pipeline.artifacts import StagePaths
    from pipeline.config import ConfigError

    paths = StagePaths(cfg, "finetune")
    assert paths.train_dir("freezesg") == paths.stage_dir / "freezesg"
    for bad in ("/abs/dir", "../../x", "a/b", "..", ".hidden"):
        with pytest.raises(ConfigError, match="must be a name"):
            paths.train_dir(bad)
    (paths.stage_dir).mkdir(parents=True)
    (paths.stage_dir / "escape").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="outside"):
        paths.train_dir("escape")


def test_run_without_file_locks_goes_on_with_one_note(tmp_path, monkeypatch, capsys):
    """A cluster file system without flock (ENOLCK: Lustre without -o flock, some NFS): `pipeline run`
    runs, unlocked, after one line saying so -- it used to die with a traceback."""
    import errno
    import fcntl

    from pipeline.__main__ import main

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    args = ["--registry", TOY, f"run_root={tmp_path}", "experiment=nolock", "tracking.enabled=false"]
    assert main(["run", "a", *args]) == 0
    out = capsys.readouterr().out
    assert out.count("has no file locks") == 1 and "running without the run lock" in out
    assert "[a] done" in out
    assert dag.lock_held(tmp_path / "nolock" / ".pipeline-run.lock") is None  # cannot tell, and says so


def test_a_stage_the_config_leaves_out_is_bypassed(reg, tmp_path, capsys):
    """Stage.left_out (pretrain when the source generator is a file): not planned, not run, its
    dependents wait for what it needed; --dry-run, list and run say once why; naming it is refused."""
    from pipeline.__main__ import main

    cfg = _cfg(reg, tmp_path, "d.word=no-b")
    assert reg.plan(["all"], cfg) == ["a", "c", "d"]
    assert reg.plan(["c"], cfg) == ["a", "c"]
    assert reg.needs_of("c", cfg) == ("a",) and reg.needs_of("c") == ("b",)
    assert reg.left_out(cfg) == {"b": "d.word is 'no-b'"}
    with pytest.raises(KeyError, match="not part of this config's plan: d.word is 'no-b'"):
        reg.plan(["b"], cfg)
    rec = Recorder()
    assert dag.run(reg, cfg, ["all"], execute=rec, say=lambda *_: None) == 0
    assert rec.calls == ["a", "c", "d"]
    assert dag.status(reg, cfg, "c") == "done"
    args = ["--registry", TOY, f"run_root={tmp_path}", "experiment=t", "tracking.enabled=false", "d.word=no-b"]
    for cmd in (["run", "all", "--dry-run"], ["list"], ["run", "all"]):
        assert main([*cmd, *args]) == 0
        out = capsys.readouterr().out
        assert out.count("left out: d.word is 'no-b'") == 1, (cmd, out)
    assert main(["run", "b", *args]) == 2
    assert "not part of this config's plan" in capsys.readouterr().err
    # the same config without the switch plans b again
    assert reg.plan(["all"], _cfg(reg, tmp_path)) == ["a", "b", "c", "d"]


def test_careless_cli_answers_are_one_true_line(reg, tmp_path, capsys):
    """show all shows everything; --config of a folder says so; an unwritable run root is one line; submit
    refuses while a local run holds the experiment's lock."""
    from pipeline.__main__ import main

    args = ["--registry", TOY, f"run_root={tmp_path}", "experiment=t", "tracking.enabled=false"]
    assert main(["show", "all", *args]) == 0
    assert "word: hi" in capsys.readouterr().out
    assert main(["list", "--config", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert "is a folder; give a YAML file" in err and "did you mean 'all'" not in err
    assert main(["run", "a", "--registry", TOY, "run_root=/proc/no-such/runs", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run_root: /proc/no-such/runs cannot be created") and len(err.splitlines()) == 1
    cfg = _cfg(reg, tmp_path)
    with dag.run_lock(cfg):
        assert main(["submit", "all", "--no-check", *args]) == 2
        assert "a `pipeline run` is working on experiment 't'" in capsys.readouterr().err
