"""`pipeline compare` over seeds, read back from a real (sqlite) MLflow store."""
from __future__ import annotations

import math

import pytest

from stages import compare, load_config


def _log(tracker, parent, variant, seed, metrics):
    run = parent.child(f"finetune/{variant} seed {seed}", tags={"stage": "finetune", "variant": variant,
                                                                 "seed": str(seed)})
    run.metrics(metrics)
    run.finish()


@pytest.fixture
def store(tmp_path, monkeypatch):
    from pipeline.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"run_root={tmp_path}", "experiment=seeds"])
    tracker = Tracker(cfg)
    parent = tracker.parent("run all")
    base = {0: 0.70, 1: 0.66, 2: 0.68}
    for seed, s in base.items():
        _log(tracker, parent, "freezed", seed, {"eval/structure_ratio": s, "eval/fid": 280 + seed})
        # clearly better, by 0.2 +- 0.01 on every seed
        _log(tracker, parent, "freezesg_structure", seed,
             {"eval/structure_ratio": s - 0.2 + 0.01 * (seed - 1), "eval/fid": 281 - seed})
        # the same up to noise
        _log(tracker, parent, "freezeg", seed, {"eval/structure_ratio": s + (0.03, -0.02, -0.01)[seed],
                                                "eval/fid": 280 + seed})
    # an older run of one (variant, seed) is superseded by the newer one
    parent.finish()
    return cfg


def test_collect_keeps_the_latest_run_per_variant_and_seed(store):
    from pipeline import tracking

    rows = compare.collect(tracking.read_runs(store))
    assert set(rows) == {"freezed", "freezesg_structure", "freezeg"}
    assert all(set(seeds) == {"0", "1", "2"} for seeds in rows.values())


def test_aggregate_and_paired_test(store):
    from pipeline import tracking

    rows = compare.collect(tracking.read_runs(store))
    mean, std, n = compare.aggregate(rows)["freezed"]["eval/structure_ratio"]
    assert n == 3 and mean == pytest.approx(0.68) and std == pytest.approx(0.02)
    d = compare.paired(rows, "freezesg_structure", "eval/structure_ratio")
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.2) and d["p"] < 0.01
    d = compare.paired(rows, "freezeg", "eval/structure_ratio")
    assert d["p"] > 0.5
    assert compare.paired(rows, "freezed", "eval/structure_ratio") is None
    assert math.isnan(compare.summarise([1.0])[1])


def test_table_and_chart(store, tmp_path, capsys):
    assert compare.main(store, out=tmp_path / "c.png") == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("freezed "))
    cells = row.split()  # variant, n, FID, KID, precision, recall, structure, ...
    assert cells[1] == "3" and cells[2].startswith("281.000±1.000") and cells[6].startswith("0.680±0.020")
    paired = {ln.split()[0]: ln for ln in out.split("paired against freezed")[1].splitlines()[1:] if ln.strip()}
    assert "structure -0.200 (better, p=0.00" in paired["freezesg_structure"]
    assert "structure" in paired["freezeg"] and "within noise" in paired["freezeg"]
    assert (tmp_path / "c.png").stat().st_size > 1000
