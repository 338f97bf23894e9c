"""Eval stage: FID / KID / precision-recall per variant and for the source, plus structure distance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pipeline.artifacts import read_json, write_json
from pipeline.config import spec
from pipeline.registry import Stage


@dataclass
class EvalConfig:
    n_samples: int = spec(1000, min=16, help="generated images per model (paper configs: 50000)")
    n_real: Optional[int] = spec(None, min=16, help="real images used (null: all in the shards)")
    metrics: list[Literal["fid", "kid", "pr"]] = spec(factory=lambda: ["fid", "kid", "pr"], help="which metrics")
    kid_subset_size: int = spec(1000, min=2, help="KID subset size (capped at the sample count)")
    batch: int = spec(64, min=1, help="batch size for sampling and Inception")
    truncation: float = spec(1.0, min=0.0, max=1.0, help="truncation psi when sampling")
    structure_n: int = spec(256, min=4, help="latents for the structure distance")
    identity_n: int = spec(32, min=0, later=0, help="latents for the identity measure (dlib's face-recognition "
                           "embedding of the source's and the variant's full-size face: the faces extra); 0: off")
    real_floor: bool = spec(True, help="also score n_samples held-out source images (after the first n_real) "
                            "against the reference: what a perfect generator would get at these sample sizes")
    untrained_baseline: bool = spec(True, help="also score an untrained generator against the source shards")
    source_vs_target: bool = spec(False, help="also score the source generator against the target shards "
                                  "(how far from cartoons fine-tuning started)")

    def validate_against(self, root):
        from pipeline.config import ConfigError

        if not self.metrics:
            raise ConfigError("eval.metrics: empty; give at least one of fid, kid, pr")
        if self.identity_n == 1:
            raise ConfigError("eval.identity_n: 1 latent has no other latents' faces to compare with; 0 (off) or >= 2")


def preflight(cfg):
    """The reference sets will be as large as asked (checked before training, not after)."""
    from pipeline.config import ConfigError

    from stages.common import datasets_used

    n_real = cfg.eval.n_real
    for name in datasets_used(cfg):
        ds = getattr(cfg.data, name)
        if n_real and ds.input.startswith("synthetic:") and ds.count and n_real > ds.count:
            raise ConfigError(f"eval.n_real: {n_real} is more than data.{name}.count ({ds.count}): "
                              f"the reference set would be short; lower eval.n_real or raise the count")


BASELINE_ROWS = ("source", "real_floor", "untrained", "source_vs_target")
"""The rows that are not fine-tuned runs (a variant may not take these names)."""


def points(cfg) -> list[str]:
    """Eval's grid: one point per row of metrics.json, each scored on its own (an array task on SLURM,
    a slot of launch.parallel_runs): the baselines this config asks for, then every fine-tuned run."""
    from stages.common import source_from_file

    ec, out = cfg.eval, []
    if not source_from_file(cfg):
        out += _source_rows(ec)
    if ec.source_vs_target:
        out.append("source_vs_target")
    return out + [r.dir for r in cfg.finetune.runs(cfg.seed)]


def _source_rows(ec) -> list[str]:
    """The rows scored against the source image set that this eval asks for."""
    return ["source"] + (["real_floor"] if ec.real_floor else []) + (["untrained"] if ec.untrained_baseline else [])


def run(ctx):
    """Score the row ``ctx.point`` (every row, then the table, when None: a caller outside the runner)."""
    if ctx.point is None:
        return finish(ctx, {p: score_row(ctx, p) for p in points(ctx.cfg)})
    return score_row(ctx, ctx.point)


def score_row(ctx, label: str) -> dict:
    """The figures of one row: FID/KID/PR against its reference set; for a fine-tuned run also the
    structure distance (at every resolution) and the style drift. Rows that depend on their inputs alone
    (source network, untrained seed, held-out images) are kept in ``<run_root>/cache/eval-rows/`` and reused
    by any later eval that asks the same. ``{"skipped": why}`` for a row the data cannot give."""
    from cartoon_stylegan.metrics import GeneratorDataset, ShardImageDataset, compute_metrics, structure_distance
    from cartoon_stylegan.metrics.drift import style_drift
    from cartoon_stylegan.metrics.inception import backend_tag
    from cartoon_stylegan.sampling import Sampler
    from pipeline.artifacts import file_digest
    from stages.finetune import variant_logger
    from stages.models import arch, device, fresh_models, load_source, load_variant, source_path

    cfg, ec = ctx.cfg, ctx.cfg.eval
    acc = ctx.accelerator
    dev = acc.device if acc is not None else device()
    ranks = None
    if acc is not None and acc.num_processes > 1:  # launch.num_processes: the generated side split across them
        from accelerate.utils import gather_object

        from cartoon_stylegan.metrics import Ranks

        ranks = Ranks(acc.process_index, acc.num_processes, lambda obj: gather_object([obj]))
    inception = backend_tag(dev)
    ctx.log_params({"eval": ec, "eval.inception_backend": inception})
    ctx.say(f"[eval] {label}: Inception on {dev.type} through {inception}")
    G_src = load_source(cfg, ctx.paths, dev)
    source = Sampler(G_src, truncation=ec.truncation)
    cache = ctx.paths.stats_cache
    common = dict(metrics=tuple(ec.metrics), kid_subset_size=ec.kid_subset_size, batch_size=ec.batch,
                  device=dev, cache_dir=cache, progress=False, ranks=ranks)
    rows_dir = cache.parent / "eval-rows"
    same_scoring = dict(metrics=sorted(ec.metrics), kid_subset_size=ec.kid_subset_size, n_samples=ec.n_samples,
                        batch=ec.batch, version=_scoring_version(), inception=inception)

    def reals(name):
        return ShardImageDataset(ctx.paths.dataset_dir(name), limit=ec.n_real)

    def generated(sampler):
        return lambda: GeneratorDataset(sampler, ec.n_samples, seed=cfg.seed + 1, batch=ec.batch)

    def score(fake_fn, real, *, inputs=None):
        m, row_file = None, None
        if inputs is not None:
            material = {"label": label, "real": getattr(real, "cache_key", None), "n_real": len(real),
                        **same_scoring, **inputs}
            row_file = rows_dir / (_digest(material) + ".json")
            kept = read_json(row_file, None)
            if isinstance(kept, dict) and kept.get("inputs") == material and isinstance(kept.get("scores"), dict):
                m = kept["scores"]
            if ranks is not None:  # rank 0 decides: every rank must take part in scoring, or none
                m = ranks.gather(m)[0]
            if m is not None:
                ctx.say(f"[eval] {label}: the same inputs were scored before ({row_file.name}): reused")
        if m is None:
            fake = fake_fn()
            ctx.say(f"[eval] {label}: {len(fake)} generated vs {len(real)} real images")
            m = compute_metrics(fake, real, **common)
            if row_file is not None and ctx.is_main:
                write_json(row_file, {"inputs": material, "scores": m})
        ctx.log_metrics({f"{label}/{k}": v for k, v in m.items()})
        return m

    if label == "source":
        src_file, src_fmt = source_path(cfg, ctx.paths)
        return score(generated(source), reals("source"),
                     inputs={"network": file_digest(Path(src_file)), "format": src_fmt, "truncation": ec.truncation,
                             "seed": cfg.seed + 1, "device": dev.type})
    if label == "real_floor":
        n_real = len(reals("source"))
        held_out = held_out_images(ctx.paths.dataset_dir("source"), n_real, ec.n_samples)
        if held_out is None:
            why = (f"the source shards hold fewer than n_real + n_samples = {n_real + ec.n_samples} images")
            ctx.say(f"[eval] real_floor skipped: {why}")
            return {"skipped": why}
        return score(lambda: held_out, reals("source"), inputs={"held_out": held_out.dataset.cache_key, "from": n_real})
    if label == "untrained":
        untrained = Sampler(fresh_models(cfg, cfg.seed + 12345)["g_ema"].eval().to(dev))
        return score(generated(untrained), reals("source"),
                     inputs={"arch": arch(cfg)[0], "init_seed": cfg.seed + 12345, "seed": cfg.seed + 1,
                             "device": dev.type})
    if label == "source_vs_target":
        return score(generated(Sampler(G_src)), reals("target"))

    run = {r.dir: r for r in cfg.finetune.runs(cfg.seed)}[label]
    sampler = load_variant(cfg, ctx.paths, G_src, run, dev, truncation=ec.truncation)
    m = dict(score(generated(sampler), reals("target")))
    if not ctx.is_main:  # the other ranks helped with FID/KID/PR; the rest is rank 0's
        return m
    # the structure distance at every resolution, up to the full image (what the user sees)
    resolutions = [2 ** k for k in range(2, cfg.data.resolution.bit_length())]  # 4 .. data.resolution
    scores = structure_distance(source, sampler, n=ec.structure_n, seed=cfg.seed + 2, batch=ec.batch,
                                device=dev, resolutions=resolutions)
    for r, s in scores.pop("by_resolution").items():  # logged as structure_ratio_at_<R>, ..._rank_at_<R>
        scores[f"ratio_at_{r}"], scores[f"rank_at_{r}"] = s["ratio"], s["mean_rank"]
    ident = None
    if ec.identity_n:
        from cartoon_stylegan.metrics.identity import identity_distance, unavailable

        why = unavailable()
        if why:
            ctx.say(f"[eval] {label}: no identity measure ({why})")
        else:
            ident = identity_distance(source, sampler, n=ec.identity_n, seed=cfg.seed + 2, batch=ec.batch, device=dev)
    write_per_latent(ctx.paths.stage_dir / PER_LATENT_DIR, cfg, run, scores, latent_seed=cfg.seed + 2, identity=ident)
    s = {f"structure_{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float)) and k != "n"}
    if ident is not None:
        s.update({f"identity_{k}": ident[k] for k in ("ratio", "distance", "same")})
    m.update(s)
    # the style drift is read over the layers the comparison freezes (the largest frozen resolution of any
    # variant), so that every variant's figure covers the same W+ entries
    frozen_res = max((max(r.config.freeze_g_up_to or 0, r.config.freeze_style_up_to or 0)
                      for r in cfg.finetune.runs(cfg.seed)), default=0)
    drift = style_drift(source, sampler, up_to=frozen_res or None, n=ec.structure_n, seed=cfg.seed + 2)
    m["style_drift"] = drift["mapping"]
    if "frozen" in drift:
        m["style_drift_frozen"] = drift["frozen"]
    ctx.log_metrics({f"{label}/{k}": m[k] for k in (*s, "style_drift", "style_drift_frozen") if k in m})
    vlog = variant_logger(ctx, run)
    if vlog is not None:
        vlog.metrics({f"eval/{k}": v for k, v in _eval_names(m).items()})
        vlog.finish("FINISHED")
    return m


def finish(ctx, rows: dict) -> dict:
    """Once every row is scored: metrics.json (the rows in grid order; skipped rows left out), the
    per-latent files of runs no longer in the config removed, the table printed."""
    from stages.common import source_from_file

    no_source_set = source_from_file(ctx.cfg)
    if no_source_set:
        ctx.say(f"[eval] rows left out: {', '.join(_source_rows(ctx.cfg.eval))} (they score against the source image set, and "
                f"{no_source_set.split(': ', 1)[0]}); every variant is scored against the target set")
    table = {k: v for k, v in rows.items() if not (isinstance(v, dict) and "skipped" in v)}
    per_latent = ctx.paths.stage_dir / PER_LATENT_DIR
    for f in per_latent.glob("*.json") if per_latent.is_dir() else ():
        if f.stem not in table:
            f.unlink()
    write_json(ctx.paths.metrics_file, table)
    ctx.log_artifact(ctx.paths.metrics_file)
    ctx.say(format_metrics(table))
    return {"metrics": str(ctx.paths.metrics_file), **{k: {kk: round(vv, 4) for kk, vv in v.items()
                                                             if isinstance(vv, float)} for k, v in table.items()}}


PER_LATENT_DIR = "per_latent"
"""Eval stage: one JSON file per variant run with its per-latent structure values (see :func:`write_per_latent`)."""


def write_per_latent(folder: Path, cfg, run, scores: dict, *, latent_seed: int, identity: dict | None = None) -> Path:
    """``<folder>/<run dir>.json``: a variant run's structure values per latent, for the paired tests of
    ``pipeline compare``. The latents come from ``latent_seed`` (the same for every variant and seed,
    so latent i pairs across runs); ``run_id`` is the variant's MLflow run (None when tracking is off).
    ``values``: ``structure_ratio`` and ``structure_rank`` (their means are eval's figures of the same
    names) and ``structure_matched``; with ``identity`` (:func:`identity_scores`) also ``identity_ratio`` and
    ``identity_distance`` (``identity_n`` latents drawn from the same seed)."""
    from stages.paths import StagePaths

    record = read_json(StagePaths(cfg, "finetune").train_dir(run.dir) / "mlflow_run.json", {}) or {}
    values = scores["per_latent"]
    path = Path(folder) / f"{run.dir}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"variant": run.variant, "seed": run.seed, "dir": run.dir, "run_id": record.get("run_id"),
                      "latent_seed": int(latent_seed), "n": int(scores["n"]), "method": scores["method"],
                      "values": {"structure_ratio": values["ratio"], "structure_rank": values["mean_rank"],
                                 "structure_matched": values["matched"],
                                 **({"identity_ratio": identity["per_latent"]["ratio"],
                                     "identity_distance": identity["per_latent"]["distance"]} if identity else {})},
                      **({"identity_n": identity["n"]} if identity else {})})
    return path


def _digest(material: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _scoring_version() -> str:
    """What else decides a score: this package, torch-fidelity and torch (the generator's arithmetic)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import cartoon_stylegan

    try:
        fid = version("torch-fidelity")
    except PackageNotFoundError:
        fid = "?"
    from cartoon_stylegan.metrics.fidelity import SCORING

    return (f"cartoon-stylegan {cartoon_stylegan.__version__} ({SCORING}), torch-fidelity {fid}, "
            f"torch {torch.__version__}")


def held_out_images(shard_dir, skip, n):
    """Source images ``skip .. skip + n`` of the shards (disjoint from the reference set), or None."""
    from torch.utils.data import Subset

    from cartoon_stylegan.metrics import ShardImageDataset

    if int((read_json(Path(shard_dir) / "manifest.json", {}) or {}).get("count", 0)) < skip + n:
        return None
    return Subset(ShardImageDataset(shard_dir, limit=skip + n), range(skip, skip + n))


def _eval_names(m):
    """Metric names as `pipeline compare` reads them (eval/<name>)."""
    out = dict(m)
    if "structure_mean_rank" in m:
        out["structure_rank"] = m["structure_mean_rank"]
    return out


def format_metrics(table) -> str:
    cols = ["fid", "kid_mean", "precision", "recall", "structure_ratio", "structure_mean_rank", "identity_ratio",
            "style_drift_frozen"]
    lines = [f"{'model':18s}" + "".join(f"{c:>20s}" for c in cols)]
    for name, m in table.items():
        lines.append(f"{name:18s}" + "".join(f"{m[c]:>20.4f}" if c in m else f"{'-':>20s}" for c in cols))
    return "\n".join(lines)


STAGE = Stage(name="eval", run=run, config=EvalConfig, needs=("finetune",), reads=("seed", "eval"), preflight=preflight,
              makes="eval/metrics.json", help="eval stage: FID/KID/PR and structure distance, one row per point",
              points=points, finish=finish, distributed=True,  # launch.num_processes ranks share each row's images
              resources=lambda cfg: {"gpu": True, "cpus": 4, "procs": cfg.launch.num_processes})
