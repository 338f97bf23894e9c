"""`python -m pipeline run all` end to end on a reduced default config, then list / rerun / compare.

One real run of the whole DAG (shard -> pretrain -> finetune (4 variants) -> swap, eval) through
the CLI in a subprocess, with the real sqlite MLflow store; the tests below read its outputs.
"""
from __future__ import annotations

import math
import shutil
import signal
import time
from types import SimpleNamespace

import pytest

from e2e_helpers import (TINY_DATA_MODEL, assert_png, cli, kill_group, mlflow_runs, read_json, stage_runs,
                         stage_state, start, wait_for)

pytestmark = pytest.mark.slow

EXP = "e2e-all"
STAGES = ["shard", "pretrain", "finetune", "swap", "eval"]
VARIANTS = ["freezed", "freezeg", "freezesg", "freezesg_structure"]  # configs/default.yaml
TRAIN_KIMG, FINETUNE_KIMG, BATCH = 0.256, 0.064, 8
ARGS = [
    f"experiment={EXP}", *TINY_DATA_MODEL,
    f"pretrain.kimg={TRAIN_KIMG}", f"pretrain.batch={BATCH}", "pretrain.tick_kimg=0.1", "pretrain.sample_kimg=0.1",
    "pretrain.snapshot_kimg=0.1", "pretrain.grid=[4,2]",
    f"finetune.kimg={FINETUNE_KIMG}", f"finetune.batch={BATCH}", "finetune.tick_kimg=0.032",
    "finetune.sample_kimg=0.064", "finetune.snapshot_kimg=0.064", "finetune.grid=[4,2]",
    "eval.n_samples=32", "eval.n_real=32", "eval.kid_subset_size=16", "eval.structure_n=16", "eval.identity_n=4", "eval.batch=16",
    "swap.seeds=3",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-all")
    t0 = time.monotonic()
    proc = cli("run", "all", *ARGS, run_root=root, timeout=900)
    (root / "run-all.log").write_text(proc.stdout)
    return SimpleNamespace(root=root, exp=root / EXP, out=proc.stdout, seconds=time.monotonic() - t0)


def test_run_all_writes_every_output(run):
    exp = run.exp
    for name, count in (("source", 128), ("target", 64)):
        man = read_json(exp / "shard" / name / "manifest.json")
        assert man["count"] == count and man["resolution"] == 16 and not man["skipped"]
        assert sum(s["count"] for s in man["shards"]) == count
        for s in man["shards"]:
            assert (exp / "shard" / name / s["file"]).is_file()
    for stage in STAGES:
        st = stage_state(run.root, EXP, stage)
        assert st["status"] == "done", (stage, st)
        assert read_json(exp / stage / "result.json")["status"] == "done"
        assert f"[{stage}] done in" in run.out

    pre = stage_state(run.root, EXP, "pretrain")["result"]
    assert (exp / "pretrain" / "checkpoints" / "network-final.pt").is_file()
    assert pre["kimg"] == pytest.approx(TRAIN_KIMG) and pre["start_step"] == 0 and pre["resumed_from"] is None
    fin = stage_state(run.root, EXP, "finetune")["result"]
    assert sorted(fin) == sorted(VARIANTS)
    for v in VARIANTS:
        assert (exp / "finetune" / v / "checkpoints" / "network-final.pt").is_file()
        assert fin[v]["kimg"] == pytest.approx(FINETUNE_KIMG)
        for kind in ("weight", "activation"):
            assert_png(exp / "swap" / f"{v}-{kind}.png")

    metrics = read_json(exp / "eval" / "metrics.json")
    assert set(metrics) == {"source", "untrained", "real_floor", *VARIANTS}
    assert metrics["real_floor"]["fid"] < metrics["untrained"]["fid"]  # held-out reals vs an untrained G
    for label, m in metrics.items():
        assert math.isfinite(m["fid"]) and m["fid"] >= 0, (label, m)
        assert m["n_fake"] == 32 and m["n_real"] == 32
    for v in VARIANTS:
        assert "structure_ratio" in metrics[v]
    print(f"\n[e2e] run all took {run.seconds:.0f} s")


def test_list_shows_every_stage_done(run):
    out = cli("list", *ARGS, run_root=run.root).stdout
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.split() and ln.split()[0] in STAGES}
    assert rows == {s: "done" for s in STAGES}, out


def test_mlflow_parent_stage_and_variant_runs(run):
    client, runs = mlflow_runs(run.root, EXP)
    by_id = {r.info.run_id: r for r in runs}
    stage_run = {}
    for stage in STAGES:
        mine = stage_runs(runs, stage)
        assert len(mine) == 1, (stage, [r.info.run_id for r in mine])
        r = stage_run[stage] = mine[0]
        st = stage_state(run.root, EXP, stage)
        assert r.info.run_id == st["mlflow_run_id"] and r.data.tags["fingerprint"] == st["fingerprint"]
        assert r.info.status == "FINISHED" and r.info.run_name == stage
    parents = {r.data.tags["mlflow.parentRunId"] for r in stage_run.values()}  # stage runs stay nested
    assert len(parents) == 1
    parent = by_id[parents.pop()]
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.info.run_name == "run all" and parent.info.status == "FINISHED"

    pre = stage_run["pretrain"].data.metrics
    assert "Loss/G" in pre and "Loss/D" in pre and pre["Progress/kimg"] == pytest.approx(TRAIN_KIMG)
    assert stage_run["shard"].data.metrics["source/written"] == 128
    ev = stage_run["eval"].data.metrics
    for label in ("source", "untrained", *VARIANTS):
        assert math.isfinite(ev[f"{label}/fid"]), label

    metrics = read_json(run.exp / "eval" / "metrics.json")
    variant_runs = [r for r in runs if "variant" in r.data.tags]
    assert sorted(r.data.tags["variant"] for r in variant_runs) == sorted(VARIANTS)
    for r in variant_runs:
        v = r.data.tags["variant"]
        assert r.data.tags["stage"] == "finetune"
        # a top-level run (the runs table lines the variants up), linked to its stage run by a tag
        assert "mlflow.parentRunId" not in r.data.tags
        assert r.data.tags["pipeline.parent"] == stage_run["finetune"].info.run_id
        assert r.info.run_name == f"finetune/{v}" and r.data.tags["seed"] == "0"
        assert r.data.params["variant.name"] == v and "loop.lr_g" in r.data.params
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        assert m["eval/fid"] == pytest.approx(metrics[v]["fid"])
        assert "eval/structure_ratio" in m and "train/minutes" in m and "Loss/G" in m
        assert read_json(run.exp / "finetune" / v / "mlflow_run.json")["run_id"] == r.info.run_id
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "swap")}
        assert {f"swap/{v}-weight.png", f"swap/{v}-activation.png"} <= arts, arts


def test_second_run_all_skips_every_stage(run):
    final = run.exp / "pretrain" / "checkpoints" / "network-final.pt"
    before = final.stat().st_mtime_ns
    out = cli("run", "all", *ARGS, run_root=run.root).stdout
    for stage in STAGES:
        assert f"[{stage}] up to date" in out, out
        assert f"[{stage}] running" not in out, out
    assert final.stat().st_mtime_ns == before
    assert all(stage_state(run.root, EXP, s)["status"] == "done" for s in STAGES)


def test_compare_reads_variants_back_from_mlflow(run, tmp_path):
    png = tmp_path / "compare.png"
    out = cli("compare", *ARGS, "--out", str(png), run_root=run.root).stdout
    metrics = read_json(run.exp / "eval" / "metrics.json")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["variant", "n", "FID"], out
    for v in VARIANTS:
        row = next((ln for ln in lines if ln.split() and ln.split()[0] == v), None)
        assert row is not None, f"no row for {v}:\n{out}"
        assert row.split()[1] == "1"  # one seed
        assert float(row.split()[2].rstrip("*")) == pytest.approx(metrics[v]["fid"], abs=1e-3)
    assert f"bar chart: {png}" in out
    assert_png(png, min_side=100)
    # the default output path: <run_root>/<experiment>/compare.png
    cli("compare", *ARGS, run_root=run.root)
    assert_png(run.exp / "compare.png", min_side=100)


def test_stopped_eval_keeps_its_scores_and_rerun_scores_only_the_rest(run, tmp_path):
    """SIGUSR1 during eval: it stops after the row being scored (exit 3, state "stopped"); each row is a
    point of eval's grid, recorded as it is scored, and a re-run scores only the rows not done."""
    root = tmp_path / "copy"
    shutil.copytree(run.root, root)
    points, log = root / EXP / "eval" / "points", tmp_path / "eval.log"
    rows = ["source", "real_floor", "untrained", *VARIANTS]

    def done():
        return [p for p in rows if (points / p / "point.json").is_file()
                and read_json(points / p / "point.json").get("status") == "done"]
    shutil.rmtree(points)  # the copy's records say done: wait for this run's own
    proc = start("run", "eval", "--force", *ARGS, run_root=root, log=log)
    try:
        wait_for(lambda: bool(done()), timeout=300, proc=proc, log=log, what="the first eval row")
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=300) == 3, log.read_text()[-4000:]
    finally:
        kill_group(proc)
    kept = done()
    assert 1 <= len(kept) < len(rows), kept  # stopped early, not after the last row
    # the rows that depend on their inputs alone (source network, untrained seed, held-out images) were
    # scored by the first run: reused from <run_root>/cache/eval-rows, same figures
    assert "[eval] source: the same inputs were scored before" in log.read_text()
    first = read_json(run.exp / "eval" / "metrics.json")
    assert read_json(points / "source" / "point.json")["result"] == first["source"]
    assert stage_state(root, EXP, "eval")["status"] == "stopped"
    assert "[eval] stopped: stopped before" in log.read_text()

    out = cli("run", "eval", *ARGS, run_root=root).stdout
    assert f"[eval] up to date: {', '.join(kept)}" in out, out
    metrics = read_json(root / EXP / "eval" / "metrics.json")
    assert set(metrics) == set(rows)
    for label in kept:
        assert metrics[label] == read_json(points / label / "point.json")["result"]
    assert stage_state(root, EXP, "eval")["status"] == "done"


def test_variants_compare_in_mlflows_own_ui(run, tmp_path):
    """The experiment opens as a model-training experiment in `mlflow ui`, its runs table lists the
    variant runs, and MLflow's compare page lines them up with their eval metrics -- checked in a
    real browser (headless Chromium)."""
    import json
    import urllib.parse

    from e2e_helpers import browse, chromium, start_mlflow_ui

    if chromium() is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    client, runs = mlflow_runs(run.root, EXP)
    exp = client.get_experiment_by_name(EXP)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    variants = [r for r in runs if "variant" in r.data.tags]
    proc, url = start_mlflow_ui(f"sqlite:///{run.root / 'mlflow.db'}", tmp_path / "ui.log")
    try:
        table = browse(f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning", tmp_path)
        for v in VARIANTS:
            assert f"finetune/{v}" in table, v
        ids = urllib.parse.quote(json.dumps([r.info.run_id for r in variants]))
        page = browse(f"{url}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}",
                      tmp_path, screenshot=tmp_path / "compare.png", size=(1400, 3000))  # tall: rows render
    finally:
        kill_group(proc)
    assert f"Comparing {len(VARIANTS)} Runs" in page
    for r in variants:
        assert r.info.run_name in page
        fid = r.data.metrics["eval/fid"]
        assert f"{fid:.4g}" in page, (r.info.run_name, fid)  # the UI shows 4 significant digits
    # the parameters and metrics tables are virtualized lists: only their first ~17 rows are in the DOM, and
    # the training metrics sort before eval/*; the values above are what the page lines up per run
    assert "variant.freeze_g_up_to" in page
    assert_png(tmp_path / "compare.png", min_side=500)
