"""Requests derived from the stage, the config and the partition (pipeline/slurm/resources.py), without a
cluster: sinfo and sbatch --test-only answered by a fake."""
from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from pipeline.slurm import resources as sr
from pipeline.slurm.common import count_gpus

SINFO = """node1|2|24105|(null)|debug*|infinite|idle
node2|2|24105|(null)|debug*|infinite|mix
gpu1|64|512000|gpu:a100:8(S:0-1)|gpu|2-00:00:00|idle
gpu2|32|256000|gpu:a100:4,shard:8|gpu|2-00:00:00|alloc
gpu3|64|512000|gpu:8|gpu|2-00:00:00|drain
gpu4|64|512000|gpu:8|gpu|2-00:00:00|maint
cpu9|16|64000|(null)|gpu|2-00:00:00|idle
"""


def _run(out=SINFO, rc=0):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, rc, out, "")
    return run


def _scfg(**kw):
    base = dict(partition=None, account=None, qos=None, gpus="auto", cpus_per_task=None, mem=None, time=[],
                sbatch_args=[])
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("gres, n", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8), ("gpu:2,shard:4", 2),
                                     ("gpu:a100:2,gpu:v100:1", 3), ("", 0)])
def test_gres_gpus(gres, n):
    assert count_gpus(gres, gres=True) == n


@pytest.mark.parametrize("text, minutes", [("infinite", None), ("UNLIMITED", None), ("48:00:00", 2880),
                                           ("2-00:00:00", 2880), ("1-12", 2160), ("30", 30), ("10:30", 11)])
def test_time_parsing(text, minutes):
    assert sr.parse_minutes(text) == minutes
    if minutes:
        assert sr.parse_minutes(sr.format_minutes(minutes)) == minutes


def test_partitions_from_sinfo_leave_out_drained_nodes_and_take_the_smallest():
    found = sr.partitions(run=_run())
    debug, gpu = found["debug"], found["gpu"]
    assert debug.default and not gpu.default
    assert (debug.nodes, debug.cpus, debug.gpus, debug.max_minutes) == (2, 2, 0, None)
    # drained / maintenance nodes left out; a CPU node in a GPU partition does not hide its GPUs
    assert (gpu.nodes, gpu.cpus, gpu.mem_mb, gpu.gpus, gpu.max_minutes) == (3, 16, 64000, 4, 2880)
    assert "2 nodes with 2 CPUs, 23.5 GiB, no GPUs each" in debug.describe()
    assert sr.pick_partition(found, None) is debug and sr.pick_partition(found, "gpu") is gpu
    with pytest.raises(sr.ResourceError, match=r"'a100' is not a partition here; sinfo shows debug, gpu"):
        sr.pick_partition(found, "a100")


def test_cpu_only_partition_gets_cpu_jobs_capped_at_a_node():
    debug = sr.partitions(run=_run())["debug"]
    pre = sr.derive("pretrain", {"gpu": True, "cpus": 3, "procs": 1}, _scfg(), debug,
                    {"time": "48:00:00", "gpus-per-node": "4", "cpus-per-task": "32"})
    assert pre.args() == ["--partition=debug", "--gpus-per-node=0", "--cpus-per-task=2", "--time=48:00:00"]
    assert any("no GPUs: pretrain runs on CPU" in n for n in pre.notes)
    assert any("3 CPUs wanted" in n for n in pre.notes)
    shard = sr.derive("shard", {"gpu": False, "cpus": 1}, _scfg(), debug, {})
    assert shard.gpus_per_node == 0 and shard.cpus_per_task == 1


def test_gpu_partition_requests_follow_num_processes_or_all():
    gpu = sr.partitions(run=_run())["gpu"]
    r = sr.derive("pretrain", {"gpu": True, "cpus": 4, "procs": 4}, _scfg(account="proj", qos="high"), gpu,
                  {"time": "3-00:00:00"})
    assert (r.gpus_per_node, r.cpus_per_task) == (4, 16)
    # launch.num_processes=1 under SLURM means "the job's GPUs": the script's default, capped at a node's
    one = sr.derive("pretrain", {"gpu": True, "cpus": 2, "procs": 1}, _scfg(), gpu, {"gpus-per-node": "8"})
    assert one.gpus_per_node == 4 and any("the script's 8 GPUs per node" in n for n in one.notes)
    assert "--time=2-00:00:00" in r.args() and any("exceeds gpu's limit" in n for n in r.notes)
    assert r.args()[-2:] == ["--account=proj", "--qos=high"]
    assert sr.derive("pretrain", {"gpu": True, "cpus": 2, "procs": 1}, _scfg(gpus="all"), gpu, {}).gpus_per_node == 4
    assert sr.derive("swap", {"gpu": True, "cpus": 2, "procs": 1}, _scfg(), gpu, {}).gpus_per_node == 1


@pytest.mark.parametrize("scfg, needs, words", [
    (dict(gpus="8"), {"gpu": True, "procs": 1}, ["slurm.gpus=8", "4 GPUs each"]),
    (dict(), {"gpu": True, "procs": 8}, ["launch.num_processes=8 needs 8 GPUs", "4 GPUs each"]),
    (dict(cpus_per_task=64), {"gpu": True, "procs": 1}, ["slurm.cpus_per_task=64", "16 CPUs"]),
    (dict(mem="1T"), {"gpu": False}, ["slurm.mem=1T", "62.5 GiB"]),
    (dict(time=["pretrain=5-00:00:00"]), {"gpu": True}, ["slurm.time 5-00:00:00", "time limit 2-00:00:00"]),
])
def test_explicit_requests_that_cannot_fit_are_refused_naming_stage_and_partition(scfg, needs, words):
    gpu = sr.partitions(run=_run())["gpu"]
    with pytest.raises(sr.ResourceError) as e:
        sr.derive("pretrain", needs, _scfg(**scfg), gpu, {})
    msg = str(e.value)
    assert msg.startswith("stage pretrain: ") and "partition gpu" in msg
    for w in words:
        assert w in msg, msg


def test_time_entries_per_stage_and_for_all():
    assert sr.stage_time(["pretrain=2-00:00:00", "1:00:00"], "pretrain") == "2-00:00:00"
    assert sr.stage_time(["pretrain=2-00:00:00", "1:00:00"], "eval") == "1:00:00"
    assert sr.stage_time([], "eval") is None


def test_test_only_drops_the_dependency_and_reports_slurms_reason():
    seen = []

    def run(cmd, **kw):
        seen.append(cmd)
        bad = any(a == "--gpus-per-node=4" for a in cmd)
        return subprocess.CompletedProcess(cmd, 1 if bad else 0, "",
                                           "allocation failure: Requested node configuration is not available"
                                           if bad else "sbatch: Job 5 to start at 2026-01-01T00:00:00 using 2 ...")
    cmd = ["sbatch", "--parsable", "--job-name=pretrain", "--dependency=afterok:12", "--kill-on-invalid-dep=yes",
           "--gpus-per-node=4", "slurm/pretrain.sh"]
    assert sr.test_only(cmd, run=run) == "allocation failure: Requested node configuration is not available"
    assert seen[0][:2] == ["sbatch", "--test-only"] and not any(a.startswith("--dependency") for a in seen[0])
    assert sr.test_only([*cmd[:-2], "--gpus-per-node=0", cmd[-1]], run=run) is None


def test_pending_reasons_that_never_clear_get_a_fix():
    assert "MaxTime" in sr.never_clears("PartitionTimeLimit")
    assert "smaller slurm" in sr.never_clears("PartitionConfig")
    assert sr.never_clears("Priority") is None and sr.never_clears("Dependency") is None and sr.never_clears(None) is None
    run = _run("PENDING|PartitionConfig\n")
    assert sr.pending_reason("7", run=run) == "PartitionConfig"
    assert sr.pending_reason("7", run=_run("RUNNING|None\n")) is None


def test_slurm_section_checks_its_values():
    from pipeline.config import ConfigError
    from stages import load_config

    cfg = load_config(None, ["slurm.partition=gpu", "slurm.gpus=all", "slurm.time=[pretrain=2-00:00:00,4:00:00]",
                             "slurm.mem=64G"])
    assert cfg.slurm.partition == "gpu" and cfg.slurm.time == ["pretrain=2-00:00:00", "4:00:00"]
    for bad, key in (("slurm.gpus=many", "slurm.gpus"), ("slurm.gpus=99", "slurm.gpus"), ("slurm.mem=lots", "slurm.mem"),
                     ("slurm.partition=a;rm", "slurm.partition"), ("slurm.time=[soon]", "slurm.time")):
        with pytest.raises(ConfigError) as e:
            load_config(None, [bad])
        assert str(e.value).startswith(key), str(e.value)


def test_a_job_without_gpus_on_a_gpu_partition_is_named_and_elsewhere_not():
    job = {"SLURM_JOB_ID": "7"}
    assert "partition gpu:" in sr.gpuless_job_on_gpu_partition({**job, "SLURM_JOB_PARTITION": "gpu"}, run=_run())
    assert sr.gpuless_job_on_gpu_partition({**job, "SLURM_JOB_PARTITION": "debug"}, run=_run()) is None
    assert sr.gpuless_job_on_gpu_partition({**job, "SLURM_JOB_PARTITION": "gpu", "SLURM_GPUS_ON_NODE": "2"},
                                           run=_run()) is None  # it has GPUs
    assert sr.gpuless_job_on_gpu_partition({"SLURM_JOB_PARTITION": "gpu"}, run=_run()) is None  # not a job
    assert sr.gpuless_job_on_gpu_partition({**job, "SLURM_JOB_PARTITION": "gpu"}, run=_run(rc=1)) is None  # cannot tell


def test_the_scripts_ask_for_no_gpus_or_cpus_and_submit_reads_their_defaults():
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[2] / "slurm"
    for script in scripts.glob("*.sh"):
        text = script.read_text()
        assert "#SBATCH --gpus-per-node" not in text and "#SBATCH --cpus-per-task" not in text, script.name
    assert sr.script_defaults(scripts / "pretrain.sh")["gpus-per-node"] == "4"
    assert sr.script_defaults(scripts / "finetune.sh")["cpus-per-task"] == "8"
