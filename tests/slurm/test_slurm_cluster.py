"""On a real SLURM cluster: job states, afterok chains, USR1 + requeue, two nodes, srun launchers.

Start one with `tests/slurm/local_cluster.sh start --nodes 2` (root; installs Debian's SLURM
when missing). Without a cluster every test here skips, saying why. Jobs ask for 1 CPU and
no GPU; every wait has a timeout and every test checks the job's final state (`sbatch
--wait` returns 0 for a job that never ran).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline import slurm

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
JOB_ARGS = ["--cpus-per-task=1", "--gpus-per-node=0", "--time=00:10:00"]


def _idle_nodes() -> tuple[list[str], str]:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return [], "SLURM client tools (sbatch, sinfo) are not installed"
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").exists():
        return [], "no slurm.conf (start a cluster: tests/slurm/local_cluster.sh start --nodes 2)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return [], "sinfo timed out: no reachable slurmctld"
    if proc.returncode != 0:
        return [], f"sinfo failed: {proc.stderr.strip()}"
    nodes = sorted({ln.split()[0] for ln in proc.stdout.splitlines()
                    if len(ln.split()) == 2 and ln.split()[1] in ("idle", "mix")})
    if not nodes:
        return [], "sinfo shows no idle node (tests/slurm/local_cluster.sh status)"
    return nodes, ""


_UP: list[str] = []  # set once a test found the cluster: only then is there anything to clean up


@pytest.fixture(scope="module")
def cluster() -> list[str]:
    nodes, why = _idle_nodes()
    if not nodes:
        pytest.skip(why)
    _UP[:] = nodes
    return nodes


@pytest.fixture
def two_nodes(cluster) -> list[str]:
    if len(cluster) < 2:
        pytest.skip(f"needs 2 idle nodes, sinfo shows {len(cluster)} "
                    "(tests/slurm/local_cluster.sh stop; ... start --nodes 2)")
    return cluster


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


def _py(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def _sbatch(*args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *JOB_ARGS, *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return slurm.parse_parsable(proc.stdout)


def _wait_files(*paths: Path, job: str, log: Path, timeout: float = 60) -> None:
    """Wait for files a running job writes; fail early, with its log, when the job ends first."""
    deadline = time.monotonic() + timeout
    n = 0
    while not all(p.exists() for p in paths):
        n += 1
        state = slurm.job_state(job) if n % 10 == 0 else "RUNNING"
        if time.monotonic() > deadline or state in slurm.TERMINAL_STATES:
            text = log.read_text()[-3000:] if log.exists() else "(no log)"
            pytest.fail(f"waiting for {[p.name for p in paths if not p.exists()]}: job {job} is {state}\n{text}")
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _job_env(monkeypatch, tmp_path):
    """Jobs get this environment (sbatch --export=ALL): let them import the repo's pipeline.
    Afterwards, cancel whatever a failing test left in the queue: the jobs that mention tmp_path."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow: sqlite:///<run_root>/mlflow.db
    monkeypatch.delenv("STAGES", raising=False)
    yield
    if not _UP:
        return
    try:
        ids = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, timeout=30).stdout.split()
        for job in ids:
            info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
            if str(tmp_path) in info.stdout:
                subprocess.run(["scancel", job], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        pass


# --------------------------------------------------------------------------- basics

def test_trivial_job_completes_and_state_outlives_squeue(cluster, tmp_path):
    out = tmp_path / "out.txt"
    script = _script(tmp_path / "hello.sh", 'echo "hello from job $SLURM_JOB_ID on $SLURMD_NODENAME"\n')
    proc = subprocess.run(["sbatch", "--wait", "--parsable", "--job-name=cs-test", *JOB_ARGS, f"--output={out}",
                           str(script)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    job = slurm.parse_parsable(proc.stdout)
    assert slurm.job_state(job) == "COMPLETED"  # --wait alone would also return 0 for a job that never ran
    assert f"hello from job {job} on " in out.read_text()
    deadline = time.monotonic() + 40  # MinJobAge=5 on the local cluster: squeue forgets the job
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            pytest.skip("squeue still knows the job after 40 s (MinJobAge is large here)")
        time.sleep(0.5)
    assert slurm.job_state(job) == "COMPLETED"  # from sacct or the jobcomp file


def test_chain_runs_in_order_and_failed_parent_cancels_child(cluster, tmp_path):
    scripts, marks = tmp_path / "scripts", tmp_path / "marks"
    scripts.mkdir()
    marks.mkdir()
    _script(scripts / "first.sh", f'echo "$@" > {marks}/first; sleep 1; date +%s.%N >> {marks}/first\n')
    _script(scripts / "second.sh", f'date +%s.%N > {marks}/second; exit 1\n')
    _script(scripts / "third.sh", f'touch {marks}/third\n')
    lines: list[str] = []
    jobs = slurm.submit(["first", "second", "third"], config_path=tmp_path / "cfg.yaml", overrides=["a.b=1"],
                        script_dir=scripts, log_dir=tmp_path / "logs", extra_sbatch_args=JOB_ARGS,
                        state_dir_for=lambda s: tmp_path / "state" / s, out=lines.append)
    assert jobs is not None and len(jobs) == 3 and len(lines) == 4
    first, second, third = (j.job_id for j in jobs)
    assert slurm.wait_for_job(first, timeout=60, poll=0.5) == "COMPLETED"
    assert slurm.wait_for_job(second, timeout=60, poll=0.5) == "FAILED"
    # kill-on-invalid-dep: cancelled, not PENDING (DependencyNeverSatisfied) forever
    assert slurm.wait_for_job(third, timeout=60, poll=0.5) == "CANCELLED"
    assert not (marks / "third").exists()
    args_line, first_end = (marks / "first").read_text().split("\n")[:2]
    assert args_line == f"{tmp_path / 'cfg.yaml'} a.b=1"           # config + overrides reach the script
    assert float((marks / "second").read_text()) > float(first_end)  # afterok: second started after first ended
    rec = json.loads((tmp_path / "state" / "second" / slurm.JOB_RECORD).read_text())
    assert rec["job_id"] == second and rec["after"] == first and rec["cmd"][0] == "sbatch"
    assert (tmp_path / "logs" / f"first-{first}.out").exists()


# --------------------------------------------------------------------------- signal + requeue

REQUEUE_JOB = """
    import os, signal, sys, time
    from pathlib import Path
    from pipeline import slurm

    d = Path(sys.argv[1])
    restart = slurm.slurm_layout().restart_count
    (d / f"run{restart}").write_text(os.environ.get("SLURM_RESTART_COUNT", "unset"))
    if restart >= 1:
        print("second run: nothing left to do", flush=True)
        sys.exit(0)
    stop = []
    signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
    (d / "ready").touch()
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        time.sleep(0.1)
    print("trap: got USR1" if stop else "no signal", flush=True)
    ok = slurm.requeue_self("test: stopped on USR1")
    print(f"requeue_self -> {ok}", flush=True)
    time.sleep(0 if not ok else 30)   # a granted requeue ends this run right away
    sys.exit(3)
"""


def _requeue_job(tmp_path: Path, *sbatch_args: str) -> tuple[str, Path, Path]:
    d = tmp_path / "rq"
    d.mkdir()
    job_py = _py(tmp_path / "job.py", REQUEUE_JOB)
    script = _script(tmp_path / "rq.sh", f'echo "start restart=${{SLURM_RESTART_COUNT:-0}}"\n'
                                         f'exec {sys.executable} {job_py} {d}\n')
    out = tmp_path / "rq.out"
    job = _sbatch("--job-name=cs-test", "--open-mode=append", f"--output={out}", *sbatch_args, str(script))
    return job, d, out


def test_usr1_trap_requeues_and_second_run_sees_restart_count(cluster, tmp_path):
    job, d, out = _requeue_job(tmp_path, "--requeue")
    _wait_files(d / "ready", job=job, log=out)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    # requeue: the job waits cred_expire (10 s on the local cluster) before it starts again
    assert slurm.wait_for_job(job, timeout=120, poll=0.5) == "COMPLETED"
    assert (d / "run1").read_text() == "1"  # SLURM_RESTART_COUNT=1 in the second run
    log = out.read_text()
    assert "start restart=0" in log and "trap: got USR1" in log and "start restart=1" in log
    assert f"requeueing job {job} (restart 1): test: stopped on USR1" in log
    assert "second run: nothing left to do" in log


def test_requeue_refused_without_requeue_flag(cluster, tmp_path):
    job, d, out = _requeue_job(tmp_path, "--no-requeue")
    _wait_files(d / "ready", job=job, log=out)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    assert slurm.wait_for_job(job, timeout=60, poll=0.5) == "FAILED"  # exit 3: a stopped stage is not done
    log = out.read_text()
    assert "does not allow requeue" in log and "requeue_self -> False" in log
    assert not (d / "run1").exists()


# --------------------------------------------------------------------------- two nodes

def test_two_node_job_runs_one_task_per_node(two_nodes, tmp_path):
    out = tmp_path / "out.txt"
    script = _script(tmp_path / "two.sh", """
        scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/^/host /'
        srun --nodes=2 --ntasks-per-node=1 bash -c 'echo "task $SLURM_NODEID $SLURMD_NODENAME $SLURM_PROCID"'
    """)
    job = _sbatch("--job-name=cs-test", "--nodes=2", f"--output={out}", str(script))
    assert slurm.wait_for_job(job, timeout=60, poll=0.5) == "COMPLETED"
    lines = out.read_text().splitlines()
    hosts = [ln.split()[1] for ln in lines if ln.startswith("host ")]
    tasks = sorted(tuple(ln.split()[1:]) for ln in lines if ln.startswith("task "))
    assert len(hosts) == 2 and slurm.expand_hostlist(",".join(hosts)) == hosts
    assert [t[0] for t in tasks] == ["0", "1"]              # distinct SLURM_NODEID
    assert sorted(t[1] for t in tasks) == sorted(hosts)     # one task on each node


FAKE_LAUNCHER = """
    # Stands in for `accelerate launch`: records how it was started, runs one 'rank' child
    # that stops on SIGUSR1, and exits with the child's status (like the real launcher).
    import json, os, subprocess, sys
    d = sys.argv[sys.argv.index("--out") + 1]
    node = os.environ["SLURM_NODEID"]
    sigign = int([ln for ln in open("/proc/self/status") if ln.startswith("SigIgn")][0].split()[1], 16)
    json.dump({"argv": sys.argv[1:], "node": node, "host": os.environ.get("SLURMD_NODENAME"),
               "use_cpu": os.environ.get("ACCELERATE_USE_CPU"), "usr1_ignored": bool(sigign & (1 << 9))},
              open(f"{d}/launcher-{node}.json", "w"))
    rank = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "fake_rank.py"), d, node])
    rc = rank.wait()
    open(f"{d}/launcher-{node}.exit", "w").write(str(rc))
    sys.exit(rc)
"""

FAKE_RANK = """
    import signal, sys, time
    d, node = sys.argv[1], sys.argv[2]
    stop = []
    signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
    open(f"{d}/ready-{node}", "w").close()
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    open(f"{d}/rank-{node}.txt", "w").write("stopped" if stop else "timeout")
    time.sleep(0.5)  # "writing a checkpoint"
"""

BATCH_SHELL = """
    # The pipeline's part in the batch shell: build the srun command, run it, pass USR1 on.
    import dataclasses, json, signal, subprocess, sys
    from pipeline import slurm
    d, launcher = sys.argv[1], sys.argv[2:]
    lay = slurm.slurm_layout()
    json.dump(dataclasses.asdict(lay), open(f"{d}/layout.json", "w"))
    cmd = slurm.srun_accelerate_command(["-m", "pipeline.worker", "--out", d], cpu=True, launcher=launcher)
    proc = subprocess.Popen(cmd)
    signal.signal(signal.SIGUSR1, lambda *a: proc.send_signal(signal.SIGUSR1))
    rc = proc.wait()
    print(f"srun exited {rc}", flush=True)
    sys.exit(rc)
"""


def test_srun_command_starts_one_launcher_per_node_and_forwards_usr1(two_nodes, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    launcher = _py(tmp_path / "fake_launcher.py", FAKE_LAUNCHER)
    _py(tmp_path / "fake_rank.py", FAKE_RANK)
    batch = _py(tmp_path / "batch.py", BATCH_SHELL)
    script = _script(tmp_path / "job.sh", f"exec {sys.executable} {batch} {d} {sys.executable} {launcher}\n")
    out = tmp_path / "out.txt"
    job = _sbatch("--job-name=cs-test", "--nodes=2", f"--output={out}", str(script))
    _wait_files(d / "ready-0", d / "ready-1", job=job, log=out)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    state = slurm.wait_for_job(job, timeout=60, poll=0.5)
    assert state == "COMPLETED", out.read_text()

    lay = json.loads((d / "layout.json").read_text())
    names = subprocess.run(["scontrol", "show", "hostnames", ",".join(lay["node_list"])],
                           capture_output=True, text=True, timeout=30).stdout.split()
    assert lay["node_list"] == names and lay["head"] == names[0] and lay["nodes"] == 2
    assert lay["port"] == 20000 + int(job) % 20000
    launchers = sorted(d.glob("launcher-*.json"))
    assert [p.name for p in launchers] == ["launcher-0.json", "launcher-1.json"]  # exactly one per node
    seen = [json.loads(p.read_text()) for p in launchers]
    assert sorted(s["host"] for s in seen) == sorted(names)
    for s in seen:
        argv = s["argv"]
        opt = {k: argv[argv.index(k) + 1] for k in ("--num_machines", "--num_processes", "--main_process_ip",
                                                    "--main_process_port", "--machine_rank")}
        assert opt == {"--num_machines": "2", "--num_processes": "2", "--main_process_ip": names[0],
                       "--main_process_port": str(lay["port"]), "--machine_rank": s["node"]}
        assert "--multi_gpu" in argv and argv[-4:-2] == ["-m", "pipeline.worker"]
        assert s["use_cpu"] == "1" and s["usr1_ignored"]
    for node in ("0", "1"):  # USR1: the ranks stopped cleanly, the launchers survived it
        assert (d / f"rank-{node}.txt").read_text() == "stopped"
        assert (d / f"launcher-{node}.exit").read_text() == "0"
    assert "srun exited 0" in out.read_text()


DDP_PROBE = """
    # One rank of a real 2-node CPU job under accelerate: all-reduce and report.
    import json, sys, torch
    from accelerate import Accelerator
    acc = Accelerator(cpu=True)
    t = torch.tensor([float(acc.process_index + 1)])
    total = acc.reduce(t, reduction="sum").item()
    json.dump({"rank": acc.process_index, "world": acc.num_processes, "sum": total,
               "backend": str(torch.distributed.get_backend()) if acc.num_processes > 1 else None},
              open(f"{sys.argv[1]}/rank-{acc.process_index}.json", "w"))
    acc.wait_for_everyone()
    acc.end_training()  # destroys the process group: without it a gloo rank can abort at exit
"""

REAL_BATCH = """
    import subprocess, sys
    from pipeline import slurm
    cmd = slurm.srun_accelerate_command([sys.argv[2], sys.argv[1]], cpu=True, extra_env={"GLOO_SOCKET_IFNAME": "lo"})
    sys.exit(subprocess.run(cmd).returncode)
"""


@pytest.mark.slow
def test_real_accelerate_two_node_gloo(two_nodes, tmp_path):
    pytest.importorskip("accelerate")
    d = tmp_path / "ddp"
    d.mkdir()
    probe = _py(tmp_path / "probe.py", DDP_PROBE)
    batch = _py(tmp_path / "batch.py", REAL_BATCH)
    out = tmp_path / "out.txt"
    job = _sbatch("--job-name=cs-test", "--nodes=2", f"--output={out}",
                  str(_script(tmp_path / "job.sh", f"exec {sys.executable} {batch} {d} {probe}\n")))
    state = slurm.wait_for_job(job, timeout=240, poll=1)
    assert state == "COMPLETED", out.read_text()[-3000:]
    ranks = sorted(json.loads(p.read_text())["rank"] for p in d.glob("rank-*.json"))
    assert ranks == [0, 1]
    for p in d.glob("rank-*.json"):
        r = json.loads(p.read_text())
        assert r["world"] == 2 and r["sum"] == 3.0 and r["backend"] == "gloo"


# --------------------------------------------------------------------------- the real pipeline

# The embedded demo, shrunk to seconds: 16 px, a 16-channel G/D, 128/64 images, 8 images per step
# and process, two fine-tuning variants (one with the structure loss: up_to 16 = the resolution),
# a 2-seed swap grid and an eval on 16 images per model, the minimum (Inception at 299 px on CPU is
# most of the DAG's time: ~0.2-0.4 s an image on 2 cores). No MLflow
# unless a test turns it on (later overrides win).
VARIANTS = ("freezed", "freezesg_structure")
DAG = ("shard", "pretrain", "finetune", "swap", "eval")
TINY = ["data.resolution=16", "data.source.count=128", "data.target.count=64", "shard.workers=1",
        "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2",
        "pretrain.kimg=0.128", "pretrain.batch=8", "pretrain.tick_kimg=0.032", "pretrain.sample_kimg=1",
        "pretrain.snapshot_kimg=1", "pretrain.grid=[4,2]",
        "finetune.kimg=0.064", "finetune.batch=8", "finetune.tick_kimg=0.032", "finetune.sample_kimg=1",
        "finetune.snapshot_kimg=1", "finetune.grid=[4,2]", f"finetune.run_variants=[{','.join(VARIANTS)}]",
        "swap.seeds=2",
        "eval.n_samples=16", "eval.n_real=16", "eval.kid_subset_size=8", "eval.structure_n=8", "eval.identity_n=4", "eval.batch=16",
        "eval.untrained_baseline=false",
        "tracking.enabled=false"]


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return [f"run_root={tmp_path / 'runs'}", *TINY, *extra]


def _config(tmp_path: Path) -> str:
    """A copy of configs/default.yaml taken when the test starts: an edit of the repository's config
    while the test's jobs run (they read it at their start) must not make a later job see other values."""
    cfg = tmp_path / "config.yaml"
    if not cfg.exists():
        shutil.copyfile(REPO / "configs" / "default.yaml", cfg)
    return str(cfg)


def _pipeline(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _tail(path: Path | str, n: int = 4000) -> str:
    p = Path(path)
    return p.read_text(errors="replace").replace("\r", "\n")[-n:] if p.exists() else f"(no log at {p})"


def _mlflow(run_root: Path, experiment: str = "default"):
    """(client, every run of the experiment) from the pipeline's default store, sqlite:///<run_root>/mlflow.db."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {run_root / 'mlflow.db'}"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _stage_runs(runs, stage: str) -> list:
    """The stage-level runs of a stage (its variant runs carry the same stage tag and a variant tag)."""
    return [r for r in runs if r.data.tags.get("stage") == stage and "variant" not in r.data.tags]


def test_stage_script_runs_its_stage_and_reports_failure(cluster, tmp_path):
    out = tmp_path / "shard.out"
    cmd = ["sbatch", "--wait", "--parsable", *JOB_ARGS, f"--output={out}", str(REPO / "slurm" / "shard.sh"),
           _config(tmp_path), *_tiny(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    job = slurm.parse_parsable(proc.stdout)
    assert proc.returncode == 0 and slurm.job_state(job) == "COMPLETED", out.read_text()[-3000:]
    log = out.read_text()
    assert f"[slurm] job {job} (shard) restart 0" in log and "[shard] done" in log
    assert (tmp_path / "runs" / "default" / "shard" / "source" / "manifest.json").exists()
    # a config error: the job fails (exit status != 0), it does not "complete"
    bad = tmp_path / "bad.out"
    proc = subprocess.run(["sbatch", "--wait", "--parsable", *JOB_ARGS, f"--output={bad}",
                           str(REPO / "slurm" / "shard.sh"), *_tiny(tmp_path, "shard.max_per_shard=oops")],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode != 0 and slurm.job_state(slurm.parse_parsable(proc.stdout)) == "FAILED"
    assert "max_per_shard" in bad.read_text()


@pytest.mark.slow
def test_finetune_script_trains_selected_variants_into_one_mlflow_stage_run(cluster, tmp_path):
    """`sbatch --wait slurm/finetune.sh CONFIG ...` after a local shard + pretrain: every selected
    variant trained to network-final.pt, one FINISHED MLflow stage run with a nested run per variant."""
    args = _tiny(tmp_path, "tracking.enabled=true")
    pre = _pipeline("run", "pretrain", "--config", _config(tmp_path), *args, timeout=300)  # shard + pretrain, here
    assert pre.returncode == 0, (pre.stdout + pre.stderr)[-4000:]
    out = tmp_path / "finetune.out"
    cmd = ["sbatch", "--wait", "--parsable", *JOB_ARGS, f"--output={out}", str(REPO / "slurm" / "finetune.sh"),
           _config(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + _tail(out)
    job = slurm.parse_parsable(proc.stdout)
    assert slurm.job_state(job) == "COMPLETED", _tail(out)  # --wait alone returns 0 for a job that never ran
    log = out.read_text()
    assert f"[slurm] job {job} (finetune) restart 0" in log
    assert "[pretrain] up to date" in log and "[finetune] running (never run)" in log and "[finetune] done" in log

    exp = tmp_path / "runs" / "default"
    for v in VARIANTS:
        assert (exp / "finetune" / v / "checkpoints" / "network-final.pt").is_file(), v
        done = json.loads((exp / "finetune" / v / "done.json").read_text())
        assert done["kimg"] == pytest.approx(0.064) and done["step"] == 8
    assert sorted(p.name for p in (exp / "finetune").iterdir() if p.is_dir()) == sorted([*VARIANTS, "points"])  # only those
    state = json.loads((exp / "finetune" / "stage.json").read_text())
    assert state["status"] == "done" and sorted(state["result"]) == sorted(VARIANTS)

    client, runs = _mlflow(tmp_path / "runs")
    stage = _stage_runs(runs, "finetune")
    assert len(stage) == 1, [(r.info.run_name, r.data.tags) for r in runs]
    run = stage[0]
    assert run.info.run_id == state["mlflow_run_id"] and run.info.status == "FINISHED"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "run finetune" and parent.info.status == "FINISHED"  # the job's pipeline run
    kids = {r.data.tags.get("variant"): r for r in runs if r.data.tags.get("pipeline.parent") == run.info.run_id}
    assert sorted(kids) == sorted(VARIANTS)
    for v, r in kids.items():
        assert r.info.status == "FINISHED" and r.data.tags["stage"] == "finetune", v
        assert r.data.params["variant.name"] == v
        assert r.data.metrics["Progress/kimg"] == pytest.approx(0.064), v
        assert json.loads((exp / "finetune" / v / "mlflow_run.json").read_text())["run_id"] == r.info.run_id
    assert "Loss/structure" in kids["freezesg_structure"].data.metrics
    assert "Loss/structure" not in kids["freezed"].data.metrics


@pytest.mark.slow
def test_submit_on_a_cpu_only_partition_derives_requests_that_start(cluster, tmp_path):
    """On a CPU-only partition (debug) the scripts' `--gpus-per-node`/`--cpus-per-task=32` defaults could
    never start: `submit all --dry-run` derives requests without GPUs for all five stages, each passes
    `sbatch --test-only`, nothing is queued; then `submit shard pretrain` runs both jobs there, in order.
    (The whole chain through finetune, swap and eval runs in the next test, on the GPU partition.)"""
    args = ["--config", _config(tmp_path), *_tiny(tmp_path, "tracking.enabled=true")]
    dry = _pipeline("submit", "all", "--dry-run", *args)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for stage in DAG:
        assert re.search(rf"^  {stage} +--partition=debug --gpus-per-node=0 --cpus-per-task=\d+ --time=",
                         dry.stdout, re.M), dry.stdout
    exp = tmp_path / "runs" / "default"
    assert not any(slurm.read_job_record(exp / s) for s in DAG) and "submitted " not in dry.stdout

    sub = _pipeline("submit", "shard", "pretrain", *args)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    recs = {s: slurm.read_job_record(exp / s) for s in ("shard", "pretrain")}
    jobs = {s: r["job_id"] for s, r in recs.items()}
    assert recs["pretrain"]["after"] == jobs["shard"]
    deadline = time.monotonic() + 300
    for s in jobs:
        state = slurm.wait_for_job(jobs[s], timeout=max(1.0, deadline - time.monotonic()), poll=1)
        assert state == "COMPLETED", f"{s} job {jobs[s]} is {state}:\n{_tail(recs[s]['log'])}"
    listing = _pipeline("list", *args)
    rows = {ln.split()[0]: ln for ln in listing.stdout.splitlines() if ln.split() and ln.split()[0] in DAG}
    for s in jobs:
        assert rows[s].split()[1] == "done" and rows[s].rstrip().endswith(f"job {jobs[s]} COMPLETED"), listing.stdout
    assert (exp / "pretrain" / "checkpoints" / "network-final.pt").is_file()


@pytest.mark.slow
def _tasks(rec: dict) -> dict[str, str]:
    """{point: task id "JOB_INDEX"} of a job array's submission record."""
    return {p: f"{rec['job_id']}_{i}" for p, i in (rec.get("array") or {}).items()}


def _wait_stage(rec: dict, deadline: float) -> dict[str, str]:
    """Wait for a stage's job (each task of an array); {job or task id: final state}."""
    ids = list(_tasks(rec).values()) or [rec["job_id"]]
    return {j: slurm.wait_for_job(j, timeout=max(1.0, deadline - time.monotonic()), poll=1) for j in ids}


def _task_log(rec: dict, task: str) -> Path:
    return Path(rec["log"]).parent / f"{rec['stage']}-{task}.out"


def test_submit_all_runs_the_whole_dag_as_a_chain_of_jobs(cluster, tmp_path):
    """`pipeline submit all` with no sbatch arguments on a partition with (fake) GPUs: requests derived
    from the partition, five jobs (finetune a job array, one task per variant), each afterok the one
    before, all COMPLETED, in order; `pipeline list` shows every stage done with its job; eval/metrics.json
    and the swap grids exist; one MLflow stage run per stage (the array's tasks share finetune's)."""
    partition = "gpu"
    args = ["--config", _config(tmp_path), *_tiny(tmp_path, "tracking.enabled=true", f"slurm.partition={partition}",
                                                   "slurm.array=[finetune]")]  # eval as one job
    sub = _pipeline("submit", "all", *args)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    # launch.num_processes=1: the scripts' GPUs (pretrain 4, capped at the node's 2: two CPU ranks through
    # srun and accelerate; finetune and swap 1)
    for stage, g in (("shard", 0), ("pretrain", 2), ("finetune", 1), ("swap", 1)):
        assert re.search(rf"^  {stage} +--partition={partition} --gpus-per-node={g} --cpus-per-task=\d+ --time=",
                         sub.stdout, re.M), sub.stdout
    exp = tmp_path / "runs" / "default"
    recs = {s: slurm.read_job_record(exp / s) for s in DAG}
    assert all(recs.values()), recs
    jobs = {s: r["job_id"] for s, r in recs.items()}
    assert [r["after"] for r in recs.values()] == [None, *list(jobs.values())[:-1]]  # one chain, in DAG order
    assert len(set(jobs.values())) == len(DAG) and sub.stdout.count("submitted ") == len(DAG)
    assert recs["finetune"]["array"] == {v: i for i, v in enumerate(VARIANTS)}
    assert f"an array of 2 task(s), one per point (0-1): 0={VARIANTS[0]}, 1={VARIANTS[1]}" in sub.stdout

    deadline = time.monotonic() + 480
    for s in DAG:  # in order: a failed stage's children are cancelled, so the first failure is the cause
        for job, state in _wait_stage(recs[s], deadline).items():
            log = _task_log(recs[s], job) if "_" in job else recs[s]["log"]
            assert state == "COMPLETED", f"{s} job {job} is {state}:\n{_tail(log)}"
    for s in DAG:
        if s == "finetune":
            for v, task in _tasks(recs[s]).items():
                log = _task_log(recs[s], task).read_text()
                assert "(finetune) restart 0" in log and f"--point-index {VARIANTS.index(v)}" in log, log[-3000:]
                assert f"[finetune] 1 of 2 points to run: {v}" in log, log[-3000:]
            continue
        log = Path(recs[s]["log"]).read_text()
        assert f"[slurm] job {jobs[s]} ({s}) restart 0" in log and f"[{s}] done" in log, _tail(recs[s]["log"])
    states = {s: json.loads((exp / s / "stage.json").read_text()) for s in DAG}
    for prev, cur in zip(DAG, DAG[1:]):  # afterok: each stage started after the one before had finished
        assert states[cur]["started"] >= states[prev]["finished"], (prev, cur)

    listing = _pipeline("list", *args)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    rows = {ln.split()[0]: ln for ln in listing.stdout.splitlines() if ln.split() and ln.split()[0] in DAG}
    assert sorted(rows) == sorted(DAG), listing.stdout
    for s in DAG:
        end = f"array job {jobs[s]} (2 task(s))" if s == "finetune" else f"job {jobs[s]} COMPLETED"
        assert rows[s].split()[1] == "done" and rows[s].rstrip().endswith(end), listing.stdout
    for v in VARIANTS:  # the grid's points under their stage
        assert re.search(rf"^  {v} +done ", listing.stdout, re.M), listing.stdout

    metrics = json.loads((exp / "eval" / "metrics.json").read_text())
    assert {"source", *VARIANTS} <= set(metrics)
    for name in ("source", *VARIANTS):
        assert {"fid", "kid_mean", "precision", "recall"} <= set(metrics[name]), (name, metrics[name])
    for v in VARIANTS:
        assert "structure_ratio" in metrics[v]
        for kind in ("weight", "activation"):
            assert (exp / "swap" / f"{v}-{kind}.png").is_file()
        assert (exp / "finetune" / v / "checkpoints" / "network-final.pt").is_file()

    _, runs = _mlflow(tmp_path / "runs")  # one pipeline run per job (array task), one stage run per stage
    parents = sorted((r.info.run_name, r.info.status) for r in runs
                     if "mlflow.parentRunId" not in r.data.tags and "pipeline.parent" not in r.data.tags)
    names = [f"run {s}" for s in DAG if s != "finetune"] + [f"run finetune --only {v}" for v in VARIANTS]
    assert parents == sorted((n, "FINISHED") for n in names), parents
    for s in DAG:
        assert [r.info.status for r in _stage_runs(runs, s)] == ["FINISHED"], s


def _jobcomp_times(task: str) -> tuple[str, str]:
    """(StartTime, EndTime) of an array task ("JOB_INDEX") in the cluster's jobcomp log."""
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    path = re.search(r"^JobCompLoc\s*=\s*(\S+)", conf, re.M).group(1)
    job, index = task.split("_")
    for line in reversed(Path(path).read_text().splitlines()):
        if f" ArrayJobId={job} " in line and f" ArrayTaskId={index} " in line:
            return re.search(r" StartTime=(\S+)", line).group(1), re.search(r" EndTime=(\S+)", line).group(1)
    raise AssertionError(f"no jobcomp record of {task} in {path}")


def test_grid_as_a_job_array_side_by_side_and_one_killed_task_resubmitted_alone(cluster, tmp_path):
    """2 variants x 2 seeds on the CPU-only partition (2 nodes), no sbatch arguments: finetune goes as an
    array of 4 tasks, two at a time (overlapping in SLURM's accounting); one task is cancelled while it
    waits: its point is not done, the dependent jobs are cancelled, `pipeline list` says which; `pipeline
    submit finetune --only POINT` resubmits that task alone, then `pipeline submit all` runs swap and eval
    (an array too: one task per row), which score all four models."""
    args = ["--config", _config(tmp_path), *_tiny(tmp_path, "finetune.seeds=[0,1]", "slurm.partition=debug",
                                                   "eval.real_floor=false")]
    points = [f"{v}-seed{k}" for v in VARIANTS for k in (0, 1)]
    pre = _pipeline("run", "pretrain", *args, timeout=300)  # shard + pretrain, here
    assert pre.returncode == 0, (pre.stdout + pre.stderr)[-4000:]
    sub = _pipeline("submit", "all", *args)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "an array of 4 task(s), one per point (0-3)" in sub.stdout, sub.stdout
    exp = tmp_path / "runs" / "default"
    rec = slurm.read_job_record(exp / "finetune")
    tasks = _tasks(rec)
    assert list(tasks) == points

    victim = points[3]  # two tasks run, two wait: cancel a waiting one (a tiny run is over before a kill lands)
    assert slurm.job_state(tasks[victim]) == "PENDING", _pipeline("list", *args).stdout
    assert subprocess.run(["scancel", tasks[victim]], timeout=30).returncode == 0
    # a task cancelled before it started leaves no record once squeue forgets it: UNKNOWN then
    assert slurm.job_state(tasks[victim]) in ("CANCELLED", "UNKNOWN")
    states = {p: slurm.wait_for_job(tasks[p], timeout=300, poll=1) for p in points[:3]}
    assert states == {p: "COMPLETED" for p in points[:3]}, states
    for s in ("swap", "eval"):  # afterok on the array: cancelled with it
        assert slurm.wait_for_job(slurm.read_job_record(exp / s)["job_id"], timeout=60, poll=1) == "CANCELLED"
    spans = {p: _jobcomp_times(tasks[p]) for p in points[:2]}
    assert max(a for a, _ in spans.values()) < min(b for _, b in spans.values()), spans  # side by side

    listing = _pipeline("list", *args)
    assert re.search(r"^finetune +partial ", listing.stdout, re.M), listing.stdout
    assert re.search(rf"^  {victim} +never run .* job {tasks[victim]} (CANCELLED|UNKNOWN)", listing.stdout, re.M), listing.stdout

    again = _pipeline("submit", "finetune", "--only", victim, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"an array of 1 task(s), one per point (3): 3={victim}" in again.stdout, again.stdout
    rec2 = slurm.read_job_record(exp / "finetune")
    (state,) = _wait_stage(rec2, time.monotonic() + 300).values()
    assert state == "COMPLETED", _tail(_task_log(rec2, _tasks(rec2)[victim]))
    assert "[finetune] done in" in _task_log(rec2, _tasks(rec2)[victim]).read_text()  # the last point completes it
    rest = _pipeline("submit", "all", *args)
    assert rest.returncode == 0 and "submitted finetune" not in rest.stdout, rest.stdout + rest.stderr
    # eval's rows as an array too: the source row and one per fine-tuned run
    assert "an array of 5 task(s), one per point (0-4): 0=source, 1=freezed-seed0" in rest.stdout, rest.stdout
    deadline = time.monotonic() + 300
    for s in ("swap", "eval"):
        r = slurm.read_job_record(exp / s)
        for job, state in _wait_stage(r, deadline).items():
            assert state == "COMPLETED", _tail(_task_log(r, job) if "_" in job else r["log"])
    metrics = json.loads((exp / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"source", *points}, sorted(metrics)


def _progress(text: str, total: str) -> list[float]:
    return [float(x) for x in re.findall(rf"(\d+\.\d+)/{re.escape(total)} kimg", text)]


@pytest.mark.slow
def test_submit_then_usr1_mid_training_requeues_and_resumes(cluster, tmp_path):
    """`pipeline submit shard pretrain`; SIGUSR1 during pretrain: checkpoint, requeue, resume, finish,
    in the same MLflow stage run, every step logged exactly once."""
    kimg, steps = "0.240", 30  # 30 steps of 8 images; tick = 1 step: one MLflow report per step
    args = ["--config", _config(tmp_path),
            *_tiny(tmp_path, f"pretrain.kimg={kimg}", "pretrain.tick_kimg=0.008", "tracking.enabled=true")]
    sub = _pipeline("submit", "shard", "pretrain", *args, *(f"--sbatch-arg={a}" for a in JOB_ARGS))
    assert sub.returncode == 0, sub.stderr
    exp = tmp_path / "runs" / "default"
    shard_job = slurm.read_job_record(exp / "shard")["job_id"]
    job = slurm.read_job_record(exp / "pretrain")["job_id"]
    log = exp / "slurm-logs" / f"pretrain-{job}.out"
    assert slurm.wait_for_job(shard_job, timeout=120, poll=0.5) == "COMPLETED"
    deadline = time.monotonic() + 240  # until the first training step is done
    while not [p for p in _progress(log.read_text() if log.exists() else "", kimg) if p > 0]:
        state = slurm.job_state(job)
        if state in slurm.TERMINAL_STATES or time.monotonic() > deadline:
            pytest.fail(f"pretrain job {job} is {state} before its first step:\n" + _tail(log, 3000))
        time.sleep(0.1)
    sig = subprocess.run(["scancel", "--batch", "--signal=USR1", job], capture_output=True, text=True, timeout=30)
    if sig.returncode != 0 and slurm.job_state(job) == "COMPLETED":
        pytest.skip("pretrain finished before the signal: this machine is too fast for the tiny run")
    assert sig.returncode == 0, sig.stderr
    state = slurm.wait_for_job(job, timeout=600, poll=1)
    text = log.read_text().replace("\r", "\n")
    assert state == "COMPLETED", text[-4000:]

    first, second = text.split(f"[slurm] job {job} (pretrain) restart 1 ", 1)
    m = re.search(r"stopped at [\d.]+ kimg \(step (\d+)\)", first)
    assert m, first[-3000:]
    stop_step = int(m.group(1))
    stop_kimg = stop_step * 8 / 1000
    assert f"requeueing job {job} (restart 1)" in first
    assert 0 < stop_step < steps                      # the signal came mid-training
    assert min(_progress(second, kimg)) == pytest.approx(stop_kimg)  # resumed there: no step trained twice
    ckpts = sorted(p.name for p in (exp / "pretrain" / "checkpoints").glob("resume-*.pt"))
    assert ckpts == [f"resume-{stop_step * 8:09d}.pt", f"resume-{steps * 8:09d}.pt"]
    done = json.loads((exp / "pretrain" / "done.json").read_text())
    assert done["step"] == steps and done["kimg"] == pytest.approx(float(kimg))
    listing = _pipeline("list", *args)
    assert listing.returncode == 0 and f"job {job} COMPLETED" in listing.stdout, listing.stdout + listing.stderr

    # MLflow: the requeued job continued the stage run of the first attempt (same id), and its
    # metrics hold every step 1..30 exactly once, in order, up to the whole budget
    client, runs = _mlflow(tmp_path / "runs")
    state = json.loads((exp / "pretrain" / "stage.json").read_text())
    run_id = state["mlflow_run_id"]
    assert [r.info.run_id for r in _stage_runs(runs, "pretrain")] == [run_id]  # one run, not one per attempt
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "continuing MLflow run" not in first and f"[pretrain] continuing MLflow run {run_id}" in second
    attempts = sorted((r for r in runs if r.info.run_name == "run pretrain"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in attempts] == ["KILLED", "FINISHED"]  # one pipeline run per attempt
    assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == attempts[0].info.run_id  # made by attempt 1
    hist = sorted(client.get_metric_history(run_id, "Progress/kimg"), key=lambda x: (x.timestamp, x.step))
    assert [x.step for x in hist] == list(range(1, steps + 1)), [x.step for x in hist]
    assert [x.value for x in hist] == pytest.approx([s * 8 / 1000 for s in range(1, steps + 1)])
    assert hist[-1].value == pytest.approx(float(kimg))
    losses = sorted(x.step for x in client.get_metric_history(run_id, "Loss/G"))
    assert losses == list(range(1, steps + 1))
    # steps 1..stop_step were logged by the first attempt (before its pipeline run ended), the rest by
    # the requeued one (after its pipeline run started)
    end_1, start_2 = attempts[0].info.end_time, attempts[1].info.start_time
    assert all(x.timestamp <= end_1 for x in hist if x.step <= stop_step), (end_1, hist)
    assert all(x.timestamp >= start_2 for x in hist if x.step > stop_step), (start_2, hist)


@pytest.mark.slow
def test_two_node_pretrain_trains_with_gloo_ddp(two_nodes, tmp_path, monkeypatch):
    """`STAGES="shard pretrain" sbatch --nodes=2 slurm/pipeline.sh`: shard in the batch shell, then
    pretrain with one launcher per node and 2 CPU ranks in one gloo process group."""
    kimg = "0.048"
    args = _tiny(tmp_path, f"pretrain.kimg={kimg}")
    out = tmp_path / "pre.out"
    monkeypatch.setenv("STAGES", "shard pretrain")  # sbatch exports it to the job
    job = _sbatch("--nodes=2", f"--output={out}", str(REPO / "slurm" / "pipeline.sh"), _config(tmp_path), *args)
    state = slurm.wait_for_job(job, timeout=500, poll=1)
    text = out.read_text().replace("\r", "\n")
    assert state == "COMPLETED", text[-4000:]
    assert "launching: srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in text
    done = json.loads((tmp_path / "runs" / "default" / "pretrain" / "done.json").read_text())
    assert done["step"] == round(float(kimg) * 1000 / (8 * 2))  # 8 images per step on each of 2 ranks


@pytest.mark.slow
def test_two_node_pretrain_trains_with_deepspeed_zero2(two_nodes, tmp_path, monkeypatch):
    """`sbatch --nodes=2 slurm/pipeline.sh ... launch.backend=deepspeed`: one launcher per node, as for DDP,
    and G and D as ZeRO-2 engines over the 2 ranks (one per node): each rank wrote its optimizer partition."""
    pytest.importorskip("deepspeed")
    kimg = "0.048"
    args = _tiny(tmp_path, f"pretrain.kimg={kimg}", "launch.backend=deepspeed", "launch.deepspeed=zero2")
    out = tmp_path / "pre.out"
    monkeypatch.setenv("STAGES", "shard pretrain")
    job = _sbatch("--nodes=2", f"--output={out}", str(REPO / "slurm" / "pipeline.sh"), _config(tmp_path), *args)
    state = slurm.wait_for_job(job, timeout=500, poll=1)
    text = out.read_text().replace("\r", "\n")
    assert state == "COMPLETED", text[-4000:]
    assert "launching: srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in text
    assert "backend: deepspeed ZeRO-2 (2 processes" in text
    stage = tmp_path / "runs" / "default" / "pretrain"
    assert json.loads((stage / "result.json").read_text())["world_size"] == 2
    done = json.loads((stage / "done.json").read_text())
    assert done["step"] == round(float(kimg) * 1000 / (8 * 2))
    snap = sorted((stage / "checkpoints").glob("resume-*.ds"))[-1]
    for net in ("G", "D"):
        assert sorted(p.name for p in (snap / net).glob("zero_pp_rank_*")) == [
            f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]


@pytest.mark.slow
def test_submit_refuses_a_job_that_could_never_start_and_queues_nothing(cluster, tmp_path):
    args = ["--config", _config(tmp_path), *_tiny(tmp_path)]
    for extra, words in ((["slurm.cpus_per_task=64"], ["stage shard: slurm.cpus_per_task=64", "2 CPUs"]),
                         (["slurm.partition=gpu", "slurm.gpus=4"], ["stage pretrain: slurm.gpus=4", "2 GPUs each"]),
                         (["slurm.partition=nope"], ["'nope' is not a partition here"])):
        sub = _pipeline("submit", "all", *args, *extra)
        assert sub.returncode == 2, sub.stdout + sub.stderr
        for w in words:
            assert w in sub.stderr, sub.stderr
    # what only SLURM knows: its --test-only answer names the stage, the request and the partition
    sub = _pipeline("submit", "all", *args, "--sbatch-arg=--mem=900G")
    assert sub.returncode == 1 and "stage shard: " in sub.stderr and "--mem=900G can never start here" in sub.stderr
    assert "Requested node configuration is not available" in sub.stderr and "partition debug" in sub.stderr
    assert "nothing submitted" in sub.stderr
    assert not (tmp_path / "runs" / "default" / "shard" / "slurm.json").exists()


@pytest.mark.slow
def test_list_says_when_a_queued_job_is_blocked_for_good(cluster, tmp_path):
    """A job that waits on a reason that never clears (the partition's time limit shrank under it)."""
    subprocess.run(["scontrol", "update", "PartitionName=gpu", "MaxTime=1"], check=True, timeout=30)
    job = None
    try:
        job = _sbatch("--partition=gpu", "--time=00:30:00", f"--output={tmp_path}/x.out", "--wrap", "true")
        args = ["--config", _config(tmp_path), *_tiny(tmp_path)]
        stage = tmp_path / "runs" / "default" / "pretrain"
        stage.mkdir(parents=True)
        (stage / "slurm.json").write_text(json.dumps({"job_id": job, "stage": "pretrain"}))
        deadline = time.monotonic() + 30
        while True:
            listing = _pipeline("list", *args)
            if "PartitionTimeLimit" in listing.stdout or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert f"job {job} PENDING (PartitionTimeLimit)" in listing.stdout, listing.stdout
        assert "blocked for good: the time limit exceeds the partition's MaxTime" in listing.stdout
    finally:
        if job:
            subprocess.run(["scancel", job], timeout=30)
        subprocess.run(["scontrol", "update", "PartitionName=gpu", "MaxTime=INFINITE"], timeout=30)


@pytest.mark.slow
def test_fine_tune_your_own_submitted_on_the_cpu_partition_chains_four_jobs(cluster, tmp_path):
    """The user's journey on a cluster: a pretrained generator FILE (rosinality's format) and a folder of
    cartoon faces of every size and mode, no photo set anywhere; `pipeline submit all` with the README's
    fine-tune config and no sbatch arguments, on the default (CPU-only) partition: shard(target) ->
    finetune -> swap -> eval, four jobs chained, all COMPLETED, pretrain and the source set left out; then
    `sbatch slurm/finetune.sh CONFIG ...` with no sbatch arguments there, and on the GPU partition (where a
    job without GPUs stops at once)."""
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    from test_own_data import TINY as OWN_TINY
    from test_own_data import _cartoon_folder, _rosinality_file

    _rosinality_file(tmp_path / "550000.pt")
    _cartoon_folder(tmp_path / "webtoon")
    args = ["--config", str(REPO / "configs" / "finetune" / "webtoon.yaml"), f"run_root={tmp_path / 'runs'}",
            f"finetune.init.path={tmp_path / '550000.pt'}", "finetune.init.format=rosinality",
            f"data.target.input={tmp_path / 'webtoon'}", "launch.num_processes=1", "tracking.enabled=false",
            *OWN_TINY]
    sub = _pipeline("submit", "all", *args)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert sub.stdout.count("left out: the source generator is a file") == 1, sub.stdout
    exp = tmp_path / "runs" / "webtoon256"
    own = ("shard", "finetune", "swap", "eval")
    recs = {s: slurm.read_job_record(exp / s) for s in own}
    assert all(recs.values()) and not (exp / "pretrain").exists(), recs
    deadline = time.monotonic() + 600
    assert len(recs["finetune"]["array"]) == 4  # a job array, one task per variant
    for s in own:
        for job, state in _wait_stage(recs[s], deadline).items():
            log = _task_log(recs[s], job) if "_" in job else recs[s]["log"]
            assert state == "COMPLETED", f"{s} job {job} is {state}:\n{_tail(log)}"
    assert not (exp / "shard" / "source").exists() and not (exp / "pretrain").exists()
    metrics = json.loads((exp / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"freezed", "freezeg", "freezesg", "freezesg_structure"}, metrics
    listing = _pipeline("list", *args)
    assert listing.returncode == 0 and "left out: the source generator is a file" in listing.stdout
    rows = {ln.split()[0]: ln.split()[1] for ln in listing.stdout.splitlines()
            if len(ln.split()) > 1 and ln.split()[0] in DAG and ln.split()[1] != "left"}
    assert rows == {s: "done" for s in own}, listing.stdout

    # the same with the stage script itself, no sbatch arguments at all, on the default (CPU-only)
    # partition: one job runs shard(target) + finetune and leaves the four variants
    (tmp_path / "slurm-logs").mkdir()
    plain = [*args[:2], f"run_root={tmp_path / 'plain'}", *args[3:]]
    assert plain[2] != args[2] and args[2].startswith("run_root=")
    proc = subprocess.run(["sbatch", str(REPO / "slurm" / "finetune.sh"), *plain[1:]], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.split()[-1]
    log = tmp_path / "slurm-logs" / f"finetune-{job}.out"
    assert slurm.wait_for_job(job, timeout=600, poll=1) == "COMPLETED", _tail(log)
    assert "no GPU in this job: finetune runs on CPU" in log.read_text()
    for v in ("freezed", "freezeg", "freezesg", "freezesg_structure"):
        assert (tmp_path / "plain" / "webtoon256" / "finetune" / v / "checkpoints" / "network-final.pt").is_file(), v
    # on a partition with GPUs, a job that asked for none stops at once, naming the fix (a fresh run root:
    # in the one above everything is done, and a job with nothing to do has nothing to refuse)
    fresh = [plain[1], f"run_root={tmp_path / 'on-gpu'}", *plain[3:]]
    proc = subprocess.run(["sbatch", "--partition=gpu", str(REPO / "slurm" / "finetune.sh"), *fresh],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    job = proc.stdout.split()[-1]
    log = tmp_path / "slurm-logs" / f"finetune-{job}.out"
    assert slurm.wait_for_job(job, timeout=120, poll=1) == "FAILED", _tail(log)
    text = log.read_text()
    assert "this SLURM job has no GPU" in text and "partition gpu: 1 node with 2 CPUs" in text, text[-3000:]
    assert "Traceback" not in text and "[finetune] running" not in text
