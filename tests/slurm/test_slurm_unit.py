"""pipeline/slurm/ without a cluster: layout from a fake environment, ports, the srun
command, sbatch command lines, requeue and job-state fallbacks (SLURM commands mocked)."""
from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from pipeline import slurm

BASE_ENV = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
            "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_ON_NODE": "4", "SLURM_RESTART_COUNT": "1"}


class FakeRun:
    """Stands in for subprocess.run: answers by the command's first word(s), records every call."""

    def __init__(self, answers):
        self.answers = answers   # key (str: first word, or "w1 w2") -> (rc, stdout, stderr) or callable(cmd)
        self.calls = []

    def __call__(self, cmd, **kw):
        self.calls.append(list(cmd))
        ans = self.answers.get(" ".join(cmd[:2]), self.answers.get(cmd[0]))
        if ans is None:
            raise FileNotFoundError(cmd[0])
        if callable(ans):
            ans = ans(cmd)
        rc, out, err = ans
        return subprocess.CompletedProcess(cmd, rc, out, err)


# --------------------------------------------------------------------------- layout

@pytest.mark.parametrize("hostlist, hosts", [
    ("node1", ["node1"]),
    ("gpu[07-09]", ["gpu07", "gpu08", "gpu09"]),
    ("gpu[1-2,5],login", ["gpu1", "gpu2", "gpu5", "login"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("a[9-11]-ib", ["a9-ib", "a10-ib", "a11-ib"]),
    ("x,y[3]", ["x", "y3"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert slurm.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-", "gpu]1[", "gpu[3-1]", "gpu[a-b]"])
def test_expand_hostlist_rejects_bad_syntax(bad):
    with pytest.raises(ValueError):
        slurm.expand_hostlist(bad)


def test_layout_from_env():
    lay = slurm.slurm_layout(BASE_ENV)
    assert lay == slurm.SlurmLayout(job_id=4242, nodes=2, node_list=("gpu07", "gpu08"), head="gpu07",
                                    port=20000 + 4242 % 20000, procs_per_node=4, gpus=4, cpus_per_task=16,
                                    restart_count=1)
    assert lay.world_size == 8


@pytest.mark.parametrize("extra, gpus", [
    ({"SLURM_GPUS_ON_NODE": "2"}, 2),
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:4"}, 4),
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:1"}, 3),
    ({"SLURM_GPUS_PER_NODE": "8"}, 8),
    ({"SLURM_GPUS_PER_NODE": "0"}, 0),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
    ({"CUDA_VISIBLE_DEVICES": ""}, 0),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 0),
    ({}, 0),
])
def test_gpus_per_node_sources(extra, gpus):
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1", **extra}
    lay = slurm.slurm_layout(env)
    assert lay.gpus == gpus
    assert lay.procs_per_node == max(gpus, 1)
    assert lay.nodes == 1 and lay.head == "n1" and lay.restart_count == 0 and lay.cpus_per_task is None


def test_layout_outside_slurm_and_mismatch():
    assert not slurm.in_slurm({})
    assert slurm.in_slurm({"SLURM_JOB_ID": "1"})
    with pytest.raises(slurm.SlurmError, match="not inside a SLURM job"):
        slurm.slurm_layout({})
    with pytest.raises(slurm.SlurmError, match="names 1 hosts"):
        slurm.slurm_layout({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_NUM_NODES": "2"})


def test_unknown_hostlist_syntax_asks_scontrol():
    run = FakeRun({"scontrol show": (0, "h1\nh2\n", "")})
    lay = slurm.slurm_layout({"SLURM_JOB_ID": "3", "SLURM_JOB_NODELIST": "h[1-", "SLURM_NNODES": "2"}, run=run)
    assert lay.node_list == ("h1", "h2")
    assert run.calls == [["scontrol", "show", "hostnames", "h[1-"]]


def test_port_is_stable_per_job_and_in_range():
    assert slurm.rendezvous_port(1) == 20001
    assert slurm.rendezvous_port(20000) == 20000
    # concurrent jobs (consecutive ids, as a busy scheduler hands out) get different ports; a requeued job
    # keeps its id and so its port: a function of the id alone (what the launcher computes on every node)
    assert len({slurm.rendezvous_port(j) for j in range(123456, 123456 + 1000)}) == 1000
    assert slurm.rendezvous_port("123456") == slurm.rendezvous_port(123456) == 20000 + 123456 % 20000
    assert all(20000 <= slurm.rendezvous_port(j) < 40000 for j in (0, 19999, 10 ** 9 + 7))


# --------------------------------------------------------------------------- srun command

def _split_srun(cmd):
    i = cmd.index("bash")
    assert cmd[i + 1] == "-c"
    return cmd[:i], cmd[i + 2]


def _launch_line(script):
    inner = script[script.index("exec ") + 5:script.index(" ) & pid=$!")]
    return shlex.split(inner)  # "$SLURM_NODEID" stays a literal word here


def test_srun_command_gpu_multinode():
    worker = ["-m", "pipeline.worker", "--stage", "pretrain", "--config", "/r/x y.yaml"]
    cmd = slurm.srun_accelerate_command(worker, env=BASE_ENV, mixed_precision="bf16")
    srun, script = _split_srun(cmd)
    assert srun == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                    "--cpus-per-task=16"]
    argv = _launch_line(script)
    assert argv[:3] == [slurm.ACCELERATE[0], "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in argv
    for name, value in [("--num_machines", "2"), ("--num_processes", "8"), ("--main_process_ip", "gpu07"),
                        ("--main_process_port", str(20000 + 4242)), ("--mixed_precision", "bf16"),
                        ("--num_cpu_threads_per_process", "4"), ("--machine_rank", "$SLURM_NODEID")]:
        assert argv[argv.index(name) + 1] == value, name
    assert '--machine_rank "$SLURM_NODEID"' in script  # expanded by each node's shell, not here
    assert argv[argv.index("-m", 3):] == worker         # quoting survives ("x y.yaml")
    assert "ACCELERATE_USE_CPU" not in script


def test_srun_command_cpu_defaults_to_one_process_per_node():
    env = {**BASE_ENV, "SLURM_GPUS_ON_NODE": "0"}
    cmd = slurm.srun_accelerate_command(["-m", "pipeline.worker"], env=env, extra_env={"FOO": "a b"})
    _, script = _split_srun(cmd)
    argv = _launch_line(script)
    assert "--multi_gpu" in argv  # 2 nodes x 1 process: a real process group (gloo)
    assert argv[argv.index("--num_processes") + 1] == "2"
    assert argv[argv.index("--mixed_precision") + 1] == "no"
    assert "--cpu" not in argv     # `--cpu` with several processes would start only one
    assert "export ACCELERATE_USE_CPU=1;" in script and "export FOO='a b';" in script


def test_srun_command_single_process_has_no_multi_gpu_and_explicit_procs():
    one = {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n1"}
    _, script = _split_srun(slurm.srun_accelerate_command(["w.py"], env=one, cpu=True))
    argv = _launch_line(script)
    assert "--multi_gpu" not in argv and argv[argv.index("--num_processes") + 1] == "1"
    srun, script = _split_srun(slurm.srun_accelerate_command(["w.py"], env=one, cpu=True, procs_per_node=3))
    argv = _launch_line(script)
    assert "--multi_gpu" in argv and argv[argv.index("--num_processes") + 1] == "3"
    assert not any(a.startswith("--cpus-per-task") for a in srun)


def test_srun_command_fake_launcher_and_extra_args():
    lay = slurm.slurm_layout(BASE_ENV)
    cmd = slurm.srun_accelerate_command(["a"], layout=lay, launcher=["/bin/fake"], srun_args=["--label"],
                                        accelerate_args=["--num_cpu_threads_per_process", "2"],
                                        accelerate_config="/c.yaml")
    srun, script = _split_srun(cmd)
    assert srun[-1] == "--label"
    argv = _launch_line(script)
    assert argv[0] == "/bin/fake" and argv[1:3] == ["--config_file", "/c.yaml"]
    assert argv.count("--num_cpu_threads_per_process") == 1
    with pytest.raises(ValueError):
        slurm.srun_accelerate_command(["a"], layout=lay, extra_env={"BAD-NAME": "1"})


def test_srun_task_script_is_valid_bash():
    cmd = slurm.srun_accelerate_command(["-m", "pipeline.worker", "--x", "it's"], env=BASE_ENV)
    assert subprocess.run(["bash", "-n", "-c", cmd[-1]]).returncode == 0


def test_srun_task_script_runs_launcher_with_usr1_ignored(tmp_path):
    """Run the per-node script locally with a fake launcher: it sees its rank and SIGUSR1 ignored."""
    probe = tmp_path / "probe.sh"
    probe.write_text('#!/bin/bash\necho "rank=$5 args=$* sigign=$(grep SigIgn /proc/$$/status | cut -f2)" '
                     f'> {tmp_path}/out.txt\nexit 7\n')
    probe.chmod(0o755)
    lay = slurm.SlurmLayout(9, 1, ("n1",), "n1", 20009, 1, 0, None, 0)
    cmd = slurm.srun_accelerate_command(["w"], layout=lay, launcher=[str(probe)])
    proc = subprocess.run(["bash", "-c", cmd[-1]], env={"SLURM_NODEID": "0", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 7  # the launcher's status is the task's
    out = (tmp_path / "out.txt").read_text()
    assert "--machine_rank 0 w" in out
    sigign = int(out.split("sigign=")[1].split()[0], 16)
    assert sigign & (1 << 9)  # SIGUSR1 (10) is bit 9


# --------------------------------------------------------------------------- requeue

def test_requeue_self_outside_slurm(capsys):
    assert slurm.requeue_self("x", env={}) is False
    assert "not inside a SLURM job" in capsys.readouterr().err


def test_requeue_self_refused_without_requeue(capsys):
    run = FakeRun({"scontrol show": (0, "JobId=8 JobName=a Requeue=0 Restarts=0 BatchFlag=1", "")})
    assert slurm.requeue_self("stopped", env={"SLURM_JOB_ID": "8"}, run=run) is False
    assert "does not allow requeue" in capsys.readouterr().err
    assert run.calls == [["scontrol", "show", "job", "-o", "8"]]


def test_requeue_self_requeues(capsys):
    run = FakeRun({"scontrol show": (0, "JobId=8 Requeue=1 Restarts=0", ""), "scontrol requeue": (0, "", "")})
    assert slurm.requeue_self("stopped", env={"SLURM_JOB_ID": "8", "SLURM_RESTART_COUNT": "2"}, run=run)
    assert run.calls[-1] == ["scontrol", "requeue", "8"]
    assert "requeueing job 8 (restart 3): stopped" in capsys.readouterr().err


def test_requeue_self_scontrol_refuses(capsys):
    run = FakeRun({"scontrol show": (0, "JobId=8 Requeue=1", ""),
                   "scontrol requeue": (1, "", "scontrol: error: Requested operation is presently disabled")})
    assert slurm.requeue_self("x", env={"SLURM_JOB_ID": "8"}, run=run) is False
    assert "presently disabled" in capsys.readouterr().err


# --------------------------------------------------------------------------- submit

def _fake_scripts(tmp_path, names=("shard", "pretrain", "pipeline")):
    d = tmp_path / "scripts"
    d.mkdir(parents=True)
    for n in names:
        (d / f"{n}.sh").write_text("#!/bin/bash\n")
    return d


def test_sbatch_command_lines(tmp_path):
    d = _fake_scripts(tmp_path)
    cfg = tmp_path / "c.yaml"
    cmd = slurm.sbatch_command("pretrain", config_path=cfg, overrides=["pretrain.kimg=2"], after="11",
                               log_dir=tmp_path / "logs", script_dir=d, extra_sbatch_args=["--time=1:00"])
    assert cmd == ["sbatch", "--parsable", "--job-name=pretrain", f"--output={tmp_path}/logs/%x-%j.out",
                   "--dependency=afterok:11", "--kill-on-invalid-dep=yes", "--time=1:00",
                   str(d / "pretrain.sh"), str(cfg), "pretrain.kimg=2"]
    # a stage without its own script runs through pipeline.sh with STAGES
    cmd = slurm.sbatch_command("swap", config_path=None, script_dir=d)
    assert "--export=ALL,STAGES=swap" in cmd and cmd[-1] == str(d / "pipeline.sh")
    with pytest.raises(slurm.SlurmError, match="no batch script"):
        slurm.sbatch_command("swap", config_path=None, script_dir=_fake_scripts(tmp_path / "x", ("shard",)))


def test_repo_scripts_exist_for_every_stage():
    from stages import REGISTRY

    for stage in REGISTRY.names():
        script, exports = slurm.script_for(stage)
        assert script.is_file() and not exports, stage


def test_submit_chains_and_records(tmp_path, capsys):
    d = _fake_scripts(tmp_path)
    ids = iter(["101", "102;cluster", "103"])
    run = FakeRun({"sbatch": lambda cmd: (0, next(ids) + "\n", "")})
    lines = []
    jobs = slurm.submit(["shard", "pretrain", "swap"], config_path="rel.yaml", overrides=["seed=1"],
                        script_dir=d, log_dir=tmp_path / "logs", extra_sbatch_args=["--partition=p"],
                        state_dir_for=lambda s: tmp_path / "runs" / s, run=run, out=lines.append)
    assert [j.job_id for j in jobs] == ["101", "102", "103"]
    assert [j.after for j in jobs] == [None, "101", "102"]
    assert (tmp_path / "logs").is_dir()
    first, second, third = run.calls
    assert not any(a.startswith("--dependency") for a in first)
    assert "--dependency=afterok:101" in second and "--kill-on-invalid-dep=yes" in second
    assert "--dependency=afterok:102" in third
    for c in run.calls:
        assert c[:2] == ["sbatch", "--parsable"] and "--partition=p" in c and c[-1] == "seed=1"
        assert c[-2].endswith("/rel.yaml") and c[-2].startswith("/")   # config made absolute
    rec = json.loads((tmp_path / "runs" / "pretrain" / slurm.JOB_RECORD).read_text())
    assert rec["job_id"] == "102" and rec["stage"] == "pretrain" and rec["cmd"] == second
    assert rec["submitted_at"] and rec["after"] == "101"
    assert slurm.read_job_record(tmp_path / "runs" / "pretrain") == rec
    assert len(lines) == 4 and "job      102" in lines[1] and "after 101" in lines[1]


def test_submit_state_file_for_and_dry_run(tmp_path):
    d = _fake_scripts(tmp_path)
    run = FakeRun({"sbatch": (0, "7\n", "")})
    jobs = slurm.submit(["shard"], config_path=None, script_dir=d, log_dir=tmp_path / "l",
                        state_file_for=lambda s: tmp_path / f"{s}.json", run=run, out=lambda s: None)
    assert jobs[0].record == str(tmp_path / "shard.json")
    assert json.loads((tmp_path / "shard.json").read_text())["job_id"] == "7"
    lines = []
    jobs = slurm.submit(["shard", "pretrain"], config_path=None, script_dir=d, log_dir=tmp_path / "dry",
                        run=FakeRun({}), out=lines.append, dry_run=True)
    assert [j.job_id for j in jobs] == ["", ""] and not (tmp_path / "dry").exists()
    assert lines[0].startswith("[dry-run] sbatch") and "afterok:<job of previous stage>" in lines[1]


def test_submit_failure_cancels_earlier_jobs(tmp_path, capsys):
    d = _fake_scripts(tmp_path)
    answers = iter([(0, "5\n", ""), (1, "", "sbatch: error: Batch job submission failed: Invalid partition")])
    run = FakeRun({"sbatch": lambda cmd: next(answers), "scancel": (0, "", "")})
    assert slurm.submit(["shard", "pretrain"], config_path=None, script_dir=d, log_dir=tmp_path / "l",
                        run=run, out=lambda s: None) is None
    assert run.calls[-1] == ["scancel", "5"]
    err = capsys.readouterr().err
    assert "Invalid partition" in err and "cancelled the jobs already submitted: 5" in err


# --------------------------------------------------------------------------- job state

def test_job_state_from_squeue():
    run = FakeRun({"squeue": (0, "RUNNING\n", "")})
    assert slurm.job_state(12, run=run) == "RUNNING"


def test_job_state_falls_back_to_sacct():
    run = FakeRun({"squeue": (1, "", "slurm_load_jobs error: Invalid job id specified"),
                   "sacct": (0, "CANCELLED by 0\n", "")})
    assert slurm.job_state("12", run=run) == "CANCELLED"


def test_job_state_falls_back_to_jobcomp_file(tmp_path):
    comp = tmp_path / "jobcomp.txt"
    comp.write_text("JobId=12 UserId=root(0) JobState=PENDING Partition=debug\n"
                    "JobId=123 UserId=root(0) JobState=FAILED\n"
                    "JobId=12 UserId=root(0) JobState=COMPLETED Partition=debug\n")
    run = FakeRun({"squeue": (1, "", "Invalid job id"), "sacct": (1, "", "accounting storage is disabled"),
                   "scontrol show": (0, f"JobCompLoc              = {comp}\nJobCompType             = jobcomp/filetxt\n", "")})
    assert slurm.job_state("12", run=run) == "COMPLETED"     # the last record wins (after a requeue)
    assert slurm.job_state("123", run=run) == "FAILED"
    assert slurm.job_state("99", run=run) == "UNKNOWN"
    assert slurm.job_state("12", run=FakeRun({}), jobcomp_file=comp) == "COMPLETED"  # no SLURM commands at all


def test_wait_for_job_returns_terminal_state():
    states = iter(["PENDING", "RUNNING", "COMPLETED"])
    run = FakeRun({"squeue": lambda cmd: (0, next(states), "")})
    assert slurm.wait_for_job(1, timeout=10, poll=0, run=run) == "COMPLETED"
    assert slurm.wait_for_job(1, timeout=0, poll=0, run=FakeRun({"squeue": (0, "PENDING", "")})) == "PENDING"


@pytest.mark.parametrize("spec, gres, n", [
    ("4", False, 4), ("a100:4", False, 4), ("gpu:a100:4", False, 4), ("a100:2,v100:2", False, 4), ("a100", False, 1),
    ("gpu:4", True, 4), ("gpu:a100:8(S:0-1)", True, 8), ("gpu:2,shard:4", True, 2), ("(null)", True, 0), ("", False, 0),
    ("gpu:a100:4(S:0,2)", True, 4), ("gpu:a100:4(S:0,2),gpu:v100:2", True, 6),
])
def test_one_gpu_count_parser_for_env_values_and_gres(spec, gres, n):
    from pipeline.slurm.common import count_gpus

    assert count_gpus(spec, gres=gres) == n
