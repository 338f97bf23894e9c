"""Grid stages on a toy registry: each point recorded and resumed on its own, a failed point does not
hold up the others, --only / --point-index run points alone (side by side, as job array tasks do),
launch.parallel_runs splits the GPUs (and stays one at a time on CPU)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import dag, grid, registry as registries
from pipeline.__main__ import main
from pipeline.config import load_config

REG = "grid_registry"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def reg():
    return registries.load(REG)


def _args(tmp_path, *more):
    return ["--registry", REG, f"run_root={tmp_path}", "experiment=g", "tracking.enabled=false", *more]


def _cfg(reg, tmp_path, *more):
    return load_config(None, _args(tmp_path, *more)[2:], registry=reg)


def _out(tmp_path, point):
    return json.loads((tmp_path / "g" / "grid" / f"{point}.json").read_text())


def test_points_run_recorded_and_skipped_when_done(reg, tmp_path, capsys):
    assert main(["run", "all", *_args(tmp_path)]) == 0
    cfg = _cfg(reg, tmp_path)
    fp = dag.fingerprint(reg, cfg, "grid")
    assert grid.statuses(reg, cfg, "grid", fp) == {"p0": "done", "p1": "done", "p2": "done"}
    assert dag.read_state(cfg, "grid")["result"]["p1"]["point"] == "p1"
    assert json.loads((tmp_path / "g" / "after" / "out.json").read_text()) == {"points": ["p0", "p1", "p2"]}
    capsys.readouterr()
    assert main(["run", "all", *_args(tmp_path)]) == 0
    assert "[grid] up to date" in capsys.readouterr().out
    # a config change reruns every point (the stage decides what a rerun costs: finetune's lineage keeps models)
    assert main(["run", "grid", *_args(tmp_path, "grid.tag=y")]) == 0
    assert _out(tmp_path, "p2")["tag"] == "y"


def test_a_failed_point_does_not_hold_up_the_others_and_a_rerun_runs_only_it(reg, tmp_path, capsys):
    (tmp_path / "fail-p1").touch()
    assert main(["run", "all", *_args(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[grid/p1] FAILED: RuntimeError: point p1 told to fail" in out
    assert "1 of 3 points failed: p1" in out and "not run: after" in out
    cfg = _cfg(reg, tmp_path)
    fp = dag.fingerprint(reg, cfg, "grid")
    assert grid.statuses(reg, cfg, "grid", fp) == {"p0": "done", "p1": "failed", "p2": "done"}
    first = {p: _out(tmp_path, p)["start"] for p in ("p0", "p2")}
    assert main(["list", *_args(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "p1" in listing and "failed" in listing and "told to fail" in listing
    (tmp_path / "fail-p1").unlink()
    assert main(["run", "all", *_args(tmp_path)]) == 0
    assert "[grid] up to date: p0, p2" in capsys.readouterr().out
    assert {p: _out(tmp_path, p)["start"] for p in ("p0", "p2")} == first  # not run again
    assert dag.status(reg, cfg, "after") == "done"


def test_only_runs_points_alone_and_the_stage_is_partial_until_all_are_done(reg, tmp_path, capsys):
    assert main(["run", "grid", "--only", "p1", *_args(tmp_path)]) == 2  # prep not done: one line
    assert "what grid needs is not done: prep (never run)" in capsys.readouterr().err
    assert main(["run", "prep", *_args(tmp_path)]) == 0
    assert main(["run", "grid", "--only", "p1", *_args(tmp_path)]) == 0
    cfg = _cfg(reg, tmp_path)
    assert dag.status(reg, cfg, "grid") == "partial"
    assert "partial: 1 of 3 points done; not yet: p0, p2" in capsys.readouterr().out
    assert main(["run", "grid", "--point-index", "0", *_args(tmp_path)]) == 0
    assert main(["run", "grid", "--only", "p2,p1", *_args(tmp_path)]) == 0  # p1 is done: only p2 runs
    assert dag.status(reg, cfg, "grid") == "done" and dag.status(reg, cfg, "after") == "never run"
    assert main(["run", "all", *_args(tmp_path)]) == 0
    assert "[grid] up to date (fingerprint" in capsys.readouterr().out


def test_only_names_are_checked(tmp_path, capsys):
    assert main(["run", "grid", "--only", "p9", *_args(tmp_path)]) == 2
    assert "grid has no point 'p9'" in capsys.readouterr().err
    assert main(["run", "grid", "--point-index", "3", *_args(tmp_path)]) == 2
    assert "--point-index: 3 is outside the 3 points of grid (0-2)" in capsys.readouterr().err
    assert main(["run", "prep", "--only", "p1", *_args(tmp_path)]) == 2
    assert "stage 'prep' is not a grid" in capsys.readouterr().err
    assert main(["run", "all", "--only", "p1", *_args(tmp_path)]) == 2


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_point_runs_side_by_side_like_array_tasks_and_the_last_one_completes_the_stage(reg, tmp_path):
    assert main(["run", "prep", *_args(tmp_path)]) == 0
    cmd = [sys.executable, "-m", "pipeline", "run", "grid", *_args(tmp_path, "grid.sleep=3")]
    procs = [subprocess.Popen([*cmd, "--point-index", str(i)], env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(3)]
    time.sleep(1.5)
    # a whole run cannot start beside them (they hold the run lock shared)
    full = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True)
    assert full.returncode == 2 and "another `pipeline run` is working on experiment 'g'" in full.stderr
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    runs = [_out(tmp_path, f"p{i}") for i in range(3)]
    assert len({r["pid"] for r in runs}) == 3
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs)  # all three at once
    cfg = _cfg(reg, tmp_path, "grid.sleep=3")
    assert dag.read_state(cfg, "grid")["status"] == "done"
    assert sum("[grid] done in" in o for o in outs) >= 1


def test_four_points_logging_at_once_to_the_default_sqlite_store_lose_no_metric(reg, tmp_path):
    """Tracking under concurrency: four point runs (as four array tasks) log 60 steps each at the same
    time into MLflow's default sqlite store: one shared stage run, one run per point, every value there."""
    from mlflow import MlflowClient

    steps, pts = 60, [f"p{i}" for i in range(4)]
    args = _args(tmp_path, f"grid.points=[{','.join(pts)}]", f"grid.metrics={steps}", "grid.sleep=1")
    args[args.index("tracking.enabled=false")] = "tracking.enabled=true"
    assert main(["run", "prep", *args]) == 0
    cmd = [sys.executable, "-m", "pipeline", "run", "grid", *args]
    procs = [subprocess.Popen([*cmd, "--only", p], env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in pts]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    runs = [_out(tmp_path, p) for p in pts]
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs)  # the four ran at once
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("g")
    every = client.search_runs([exp.experiment_id], max_results=100)
    stage = [r for r in every if r.data.tags.get("stage") == "grid" and "point" not in r.data.tags]
    assert len(stage) == 1 and stage[0].info.status == "FINISHED", [(r.info.run_name, r.data.tags) for r in every]
    own = {r.data.tags["point"]: r for r in every if "point" in r.data.tags}
    assert sorted(own) == pts
    for p in pts:
        for key, sign in (("a", 1), ("b", -1)):
            for run_id, name in ((stage[0].info.run_id, f"{p}/{key}"), (own[p].info.run_id, key)):
                hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
                assert hist == [(s, sign * s) for s in range(steps)], (p, name)


def test_a_point_being_run_elsewhere_is_left_to_it(reg, tmp_path, capsys):
    from toolbox import file_lock

    assert main(["run", "prep", *_args(tmp_path)]) == 0
    cfg = _cfg(reg, tmp_path)
    lock = dag.artifacts.StagePaths(cfg, "grid").point_file("p0", "lock")
    with file_lock(lock, holder=json.dumps({"pid": 99, "host": "elsewhere"})):
        assert grid.point_status(cfg, "grid", "p0", dag.fingerprint(reg, cfg, "grid")) == "running"
        assert main(["run", "grid", "--only", "p0,p1", *_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[grid/p0] is running in another process (pid 99 on elsewhere); left to it" in out
    assert dag.status(reg, cfg, "grid") == "partial"


def test_a_stopped_point_stops_the_grid_and_resumes(reg, tmp_path, capsys):
    (tmp_path / "stop-p1").touch()
    assert main(["run", "all", *_args(tmp_path)]) == dag.EXIT_STOPPED
    cfg = _cfg(reg, tmp_path)
    fp = dag.fingerprint(reg, cfg, "grid")
    assert grid.statuses(reg, cfg, "grid", fp) == {"p0": "done", "p1": "stopped", "p2": "never run"}
    (tmp_path / "stop-p1").unlink()
    assert main(["run", "all", *_args(tmp_path)]) == 0


def test_device_slots(reg, tmp_path):
    said = []
    cfg = _cfg(reg, tmp_path, "launch.parallel_runs=auto", "launch.num_processes=2")
    eight = [str(i) for i in range(8)]
    assert grid.device_slots(cfg, 12, cpu=False, gpus=eight, say=said.append) == ["0,1", "2,3", "4,5", "6,7"]
    assert grid.device_slots(cfg, 3, cpu=False, gpus=eight, say=said.append) == ["0,1", "2,3", "4,5"]
    cfg = _cfg(reg, tmp_path, "launch.parallel_runs=3")
    assert grid.device_slots(cfg, 12, cpu=False, gpus=["4", "5", "6", "7"], say=said.append) == ["4", "5", "6"]
    assert said == []
    assert grid.device_slots(cfg, 12, cpu=False, gpus=["0"], say=said.append) is None
    assert grid.device_slots(cfg, 12, cpu=True, gpus=eight, say=said.append) is None
    assert grid.device_slots(cfg, 12, cpu=False, multi_node=True, gpus=eight, say=said.append) is None
    assert "1 GPU(s) at 1 per run hold one run" in said[0] and "on CPU" in said[1] and "spans nodes" in said[2]
    assert grid.device_slots(_cfg(reg, tmp_path), 12, cpu=False, gpus=eight, say=said.append) is None  # 1: as before


def test_parallel_runs_on_cpu_go_one_at_a_time_with_a_note(tmp_path, capsys):
    assert main(["run", "all", *_args(tmp_path, "launch.parallel_runs=2", "launch.cpu=true")]) == 0
    out = capsys.readouterr().out
    assert "note: launch.parallel_runs: 2, but the runs train on CPU" in out
    assert len({_out(tmp_path, f"p{i}")["pid"] for i in range(3)}) == 1  # in this process, in turn


def test_parallel_runs_each_point_in_its_own_process_on_its_own_devices(tmp_path, monkeypatch, capsys):
    """The GPU path, on CPU: the slots are given as if the machine had two GPUs; each point is a worker
    process with its own CUDA_VISIBLE_DEVICES, two at a time."""
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    real = grid.device_slots
    monkeypatch.setattr(grid, "device_slots", lambda cfg, n, **kw: real(cfg, n, **{**kw, "cpu": False,
                                                                                  "gpus": ["0", "1"]}))
    assert main(["run", "all", *_args(tmp_path, "launch.parallel_runs=auto", "launch.cpu=true", "grid.sleep=2",
                                      "grid.points=[p0,p1,p2,p3]")]) == 0
    runs = [_out(tmp_path, f"p{i}") for i in range(4)]
    assert len({r["pid"] for r in runs} | {os.getpid()}) == 5
    assert sorted(r["devices"] for r in runs) == ["0", "0", "1", "1"]
    first, second = sorted(runs, key=lambda r: r["start"])[:2], sorted(runs, key=lambda r: r["start"])[2:]
    assert max(r["start"] for r in first) < min(r["end"] for r in first)  # two at a time
    assert min(r["start"] for r in second) >= min(r["end"] for r in first) - 0.5  # never three
    assert "(2 at a time)" in capsys.readouterr().out


def test_a_forced_rerun_gets_a_new_mlflow_stage_run_and_leaves_the_finished_one_alone(reg, tmp_path):
    from mlflow import MlflowClient

    args = _args(tmp_path)
    args[args.index("tracking.enabled=false")] = "tracking.enabled=true"
    assert main(["run", "grid", *args]) == 0
    assert main(["run", "grid", "--force", *args]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("g")
    for stage in ("prep", "grid"):
        runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == stage]
        assert [r.info.status for r in runs] == ["FINISHED"] * (2 if stage == "grid" else 1), stage
    cfg = _cfg(reg, tmp_path)
    ids = {r.info.run_id for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("stage") == "grid"}
    assert dag.read_state(cfg, "grid")["mlflow_run_id"] in ids and len(ids) == 2


def test_force_on_a_later_stage_does_not_retrain_the_done_points_of_a_grid_it_needs(reg, tmp_path, capsys):
    assert main(["run", "prep", *_args(tmp_path)]) == 0
    assert main(["run", "grid", "--only", "p0", *_args(tmp_path)]) == 0
    first = _out(tmp_path, "p0")["start"]
    assert main(["run", "after", "--force", *_args(tmp_path)]) == 0
    assert "[grid] up to date: p0" in capsys.readouterr().out
    assert _out(tmp_path, "p0")["start"] == first  # not trained again: --force is for `after`


def test_submit_only_refuses_a_stage_that_is_not_sent_as_an_array(tmp_path, capsys):
    assert main(["submit", "grid", "--only", "p0", "--dry-run", *_args(tmp_path, "slurm.array=[]")]) == 2
    assert "--only: nothing to submit alone: grid is not sent as a job array here" in capsys.readouterr().err


def test_a_lock_taken_while_a_probe_holds_it_waits_out_the_probe(tmp_path):
    import threading

    from toolbox import LockBusy, file_lock

    path, held = tmp_path / "l.lock", threading.Event()

    def hold(seconds):
        with file_lock(path):
            held.set()
            time.sleep(seconds)
    t = threading.Thread(target=hold, args=(0.3,))
    t.start()
    held.wait()
    with file_lock(path, wait=False, grace=2.0):  # the holder lets go within the grace
        pass
    t.join()
    held.clear()
    t = threading.Thread(target=hold, args=(1.5,))
    t.start()
    held.wait()
    with pytest.raises(LockBusy):
        with file_lock(path, wait=False, grace=0.3):
            pass
    t.join()
