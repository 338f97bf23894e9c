"""`pipeline compare` over seeds, read back from a real (sqlite) MLflow store, with eval's per-latent files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stages import compare, load_config

SEEDS = (0, 1, 2)
N_LATENTS = 24


def _log(parent, variant, seed, metrics):
    run = parent.child(f"finetune/{variant} seed {seed}", tags={"stage": "finetune", "variant": variant,
                                                                 "seed": str(seed)})
    run.metrics(metrics)
    run.finish()
    return run.run_id


def _experiment(root, name, seeds=SEEDS):
    """An experiment in the (shared) MLflow store under ``root``: three variants x ``seeds``."""
    from pipeline.tracking import Tracker

    cfg = load_config(None, [f"run_root={root}", f"experiment={name}"])
    parent = Tracker(cfg).parent("run all")
    base = {0: 0.70, 1: 0.66, 2: 0.68}
    ids = {}
    for seed in seeds:
        s = base[seed]
        ids["freezed", seed] = _log(parent, "freezed", seed, {"eval/structure_ratio": s, "eval/fid": 280 + seed})
        # clearly better, by 0.2 +- 0.01 on every seed
        ids["freezesg_structure", seed] = _log(parent, "freezesg_structure", seed, {
            "eval/structure_ratio": s - 0.2 + 0.01 * (seed - 1), "eval/fid": 281 - seed})
        # the same up to noise
        ids["freezeg", seed] = _log(parent, "freezeg", seed, {"eval/structure_ratio": s + (0.03, -0.02, -0.01)[seed],
                                                               "eval/fid": 280 + seed})
    parent.finish()
    return cfg, ids


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """One sqlite MLflow store (its set-up is the slow part), one experiment per case:
    seeds (no per-latent files), latents, noids (files without run ids, and a broken one),
    mixed (files from two latent seeds), one-seed (files)."""
    root = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        out = {"seeds": _experiment(root, "seeds")[0]}
        cfg, ids = _experiment(root, "latents")
        _per_latent(cfg, ids)
        out["latents"] = cfg
        cfg, ids = _experiment(root, "noids")
        (_per_latent(cfg, ids, run_ids=False) / "broken.json").write_text("{not json")
        out["noids"] = cfg
        cfg, ids = _experiment(root, "mixed")
        _per_latent(cfg, {k: v for k, v in ids.items() if k[0] != "freezeg"})
        _per_latent(cfg, {k: v for k, v in ids.items() if k[0] == "freezeg"}, latent_seed=6)
        out["mixed"] = cfg
        cfg, ids = _experiment(root, "one-seed", seeds=(0,))
        _per_latent(cfg, ids)
        out["one-seed"] = cfg
        out["root"] = root
        yield out


@pytest.fixture
def store(experiments):
    return experiments["seeds"]


def _per_latent(cfg, ids, *, shift=None, n=N_LATENTS, latent_seed=5, run_ids=True):
    """eval/per_latent/ as eval writes it (through its own writer): per-latent values whose means are the
    logged structure figures; ``shift``: {variant: added to every latent}."""
    from pipeline.artifacts import write_json
    from stages.paths import StagePaths
    from stages.eval import PER_LATENT_DIR, write_per_latent
    from stages.finetune import VariantConfig, VariantRun

    folder = StagePaths(cfg, "eval").stage_dir / PER_LATENT_DIR
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.1, n)
    for (variant, seed), run_id in ids.items():
        run = VariantRun(dir=f"{variant}-seed{seed}", variant=variant, config=VariantConfig(), seed=seed)
        if run_ids:
            write_json(StagePaths(cfg, "finetune").train_dir(run.dir) / "mlflow_run.json", {"run_id": run_id})
        mean = {"freezed": 0.7, "freezesg_structure": 0.5, "freezeg": 0.7}[variant] + (shift or {}).get(variant, 0.0)
        ratio = mean + shared + rng.normal(0, 0.05, n) + rng.normal(0, 0.01)
        scores = {"n": n, "method": "edges+ssm",
                  "per_latent": {"ratio": ratio.tolist(), "mean_rank": (1 + 3 * ratio).tolist(),
                                 "matched": (2 * ratio).tolist()}}
        write_per_latent(folder, cfg, run, scores, latent_seed=latent_seed)
    return folder


def test_collect_keeps_the_latest_run_per_variant_and_seed(store):
    from pipeline import tracking

    rows = compare.collect(tracking.read_runs(store))
    assert set(rows) == {"freezed", "freezesg_structure", "freezeg"}
    assert all(set(seeds) == {"0", "1", "2"} for seeds in rows.values())


def test_aggregate(store):
    from pipeline import tracking

    rows = compare.collect(tracking.read_runs(store))
    mean, std, n = compare.aggregate(rows)["freezed"]["eval/structure_ratio"]
    assert n == 3 and mean == pytest.approx(0.68) and std == pytest.approx(0.02)
    assert math.isnan(compare.summarise([1.0])[1])


def _tests(out: str) -> dict:
    """{(metric title, A, B): the row's cells} of the paired-tests table."""
    part = out.split("paired tests of every pair")[1].split("\nover:")[0]
    rows = {}
    for ln in part.splitlines()[3:]:
        cells = ln.split()
        title = " ".join(cells[:2]) if cells[0] == "src" else cells[0]
        rest = cells[2:] if cells[0] == "src" else cells[1:]
        rows[title, rest[0], rest[1]] = rest[2:]
    return rows


def test_every_pair_over_seeds_without_per_latent_files(store, tmp_path, capsys):
    assert compare.main(store, out=tmp_path / "c.png") == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("freezed "))
    cells = row.split()  # variant, n, FID, KID, precision, recall, structure, ...
    assert cells[1] == "3" and cells[2].startswith("281.000±1.000") and cells[6].startswith("0.680±0.020")
    rows = _tests(out)
    pairs = {("freezed", "freezesg_structure"), ("freezed", "freezeg"), ("freezesg_structure", "freezeg")}
    assert {(a, b) for (_, a, b) in rows} == pairs
    assert {t for (t, _, _) in rows} == {"FID", "structure"}  # the metrics the runs have
    diff, lo, hi, p, tost, margin, *verdict = rows["structure", "freezed", "freezesg_structure"]
    assert float(diff) == pytest.approx(0.2) and 0 < float(lo.strip("[,")) < 0.2 < float(hi.strip("]"))
    # the paired t-test over 3 seeds (diffs 0.21, 0.2, 0.19), Holm over 6 tests
    from scipy import stats

    raw = stats.ttest_1samp([0.21, 0.20, 0.19], 0).pvalue
    assert float(p) == pytest.approx(min(1, 6 * raw), abs=2e-3)
    assert " ".join(verdict) == "different (freezesg_structure better)"
    assert rows["structure", "freezed", "freezeg"][-1] == "inconclusive"
    assert "structure: 3 seeds." in out and "linear mixed model" in out
    assert "no per-latent structure values" in out
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["family_size"] == 6 and len(record["tests"]) == 6
    assert {t["verdict"] for t in record["tests"]} <= {"different", "equivalent", "inconclusive"}
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_structure_paired_over_seeds_and_latents(experiments, tmp_path, capsys):
    assert compare.main(experiments["latents"], out=tmp_path / "c.png") == 0
    out = capsys.readouterr().out
    assert "structure: 3 seeds x 24 latents" in out and "FID: 3 seeds;" in out
    record = json.loads((tmp_path / "c.json").read_text())
    by = {(t["metric"], t["a"], t["b"]): t for t in record["tests"]}
    effect = by["structure_ratio", "freezed", "freezesg_structure"]
    assert effect["n_latents"] == N_LATENTS and effect["n_seeds"] == 3 and effect["df"] == 2
    assert effect["verdict"] == "different" and effect["better"] == "freezesg_structure"
    assert effect["ci"][0] > 0 and effect["ci"][0] < 0.2 < effect["ci"][1]
    rank = by["structure_rank", "freezed", "freezesg_structure"]  # 1 + 3 x ratio: three times the difference
    assert rank["mean"] == pytest.approx(3 * effect["mean"])
    assert record["family_size"] == 3 * 3 and record["margins"]["structure_ratio"] == 0.02


def test_matched_by_variant_and_seed_without_run_ids_and_bad_files_are_one_line(experiments, tmp_path, capsys):
    assert compare.main(experiments["noids"], out=tmp_path / "c.png") == 0
    out = capsys.readouterr().out
    assert "structure: 3 seeds x 24 latents" in out
    assert "note: broken.json: unreadable per-latent file" in out


def test_per_latent_files_from_different_latents_do_not_pair(experiments, tmp_path, capsys):
    assert compare.main(experiments["mixed"], out=tmp_path / "c.png") == 0
    out = capsys.readouterr().out
    assert "do not pair; structure tested over seeds only" in out and "structure: 3 seeds." in out


def test_one_seed_fid_is_not_testable_and_structure_is_this_pairs_latents(experiments, tmp_path, capsys):
    assert compare.main(experiments["one-seed"], out=tmp_path / "c.png") == 0
    out = capsys.readouterr().out
    assert "FID: not testable (1 seed, one value per run)" in out
    assert "structure: 1 seed: this trained pair's latents only" in out
    assert not any(t == "FID" for (t, _, _) in _tests(out))
    record = json.loads((tmp_path / "c.json").read_text())
    fid = [t for t in record["tests"] if t["metric"] == "fid"]
    assert fid and all(t["p"] is None and t["verdict"] == "not testable" for t in fid)
    assert record["family_size"] == 6  # structure ratio and rank x 3 pairs
    s = next(t for t in record["tests"] if t["metric"] == "structure_ratio")
    assert s["scope"].startswith("1 seed: this trained pair") and s["p"] is not None


def test_equivalence_margin_is_a_config_option(experiments, tmp_path, capsys):
    wide = load_config(None, [f"run_root={experiments['root']}", "experiment=latents",
                              "compare.margins.structure_ratio=0.5"])
    assert compare.main(wide, out=tmp_path / "c.png") == 0
    record = json.loads((tmp_path / "c.json").read_text())
    same = next(t for t in record["tests"] if (t["metric"], t["a"], t["b"]) == ("structure_ratio", "freezed", "freezeg"))
    assert same["margin"] == 0.5 and same["verdict"] == "equivalent"
    capsys.readouterr()
