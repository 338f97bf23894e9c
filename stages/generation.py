"""Swap and eval recipes: load the source and each fine-tuned generator, call the library, log."""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import read_json, write_json


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_generators(ctx):
    """(source G_ema, {variant: (G_ema, prefix_len)}) from the pretrain and finetune outputs."""
    from stages.training_common import load_weights

    cfg = ctx.cfg
    fin = cfg.finetune
    src_path = fin.init.path or ctx.paths.of("pretrain").final_network()
    src_fmt = fin.init.format if fin.init.path else "native"
    dev = _device()
    G_src = load_weights(cfg, src_path, src_fmt)["g_ema"].eval().requires_grad_(False).to(dev)
    variants = {}
    for name, v in fin.selected().items():
        path = ctx.paths.of("finetune").final_network(name)
        G = load_weights(cfg, path, "native")["g_ema"].eval().requires_grad_(False).to(dev)
        prefix = G.n_wplus_up_to(v.freeze_style_up_to) if v.freeze_style_up_to else 0
        variants[name] = (G, prefix)
    return G_src, variants


def variant_logger(ctx, name):
    """The variant's own MLflow run (made by the finetune stage), so its metrics sit beside its losses."""
    run = read_json(ctx.paths.of("finetune").train_dir(name) / "mlflow_run.json", {}) or {}
    if not run.get("run_id") or not ctx.logger.run_id:
        return None
    return ctx.logger.child(name, run_id=run["run_id"])


def run_swap(ctx):
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.swap import swap_grid, weight_swap

    cfg, sc = ctx.cfg, ctx.cfg.swap
    G_src, variants = load_generators(ctx)
    ctx.log_params({"swap": sc})
    res = cfg.data.resolution
    resolutions = [r for r in (2 ** k for k in range(2, 11)) if sc.min_res <= r <= res]
    out = {}
    for name, (G, prefix) in variants.items():
        for kind in sc.kinds:
            grid, labels = swap_grid(G_src, G, seeds=list(range(sc.seeds)), resolutions=resolutions, kind=kind,
                                     truncation=sc.truncation, mapping=sc.mapping, tgt_prefix_len=prefix,
                                     blend_width=sc.blend_width)
            path = ctx.paths.stage_dir / f"{name}-{kind}.png"
            ctx.log_image(grid, path, "grids")
            out[f"{name}/{kind}"] = {"grid": str(path), "rows": labels}
            ctx.say(f"[swap] {name} ({kind}): {path}")
        if sc.export_at:
            G_sw = weight_swap(G_src, G, sc.export_at, mapping=sc.mapping, blend_width=sc.blend_width)
            dst = ctx.paths.stage_dir / f"{name}-swap{sc.export_at}.pt"
            checkpoint.save_transfer(dst, g=G_sw, d=None, g_ema=G_sw,
                                     meta={"swap_at": sc.export_at, "variant": name, "mapping": sc.mapping})
            out[f"{name}/export"] = str(dst)
    write_json(ctx.paths.stage_dir / "swap.json", out)
    return out


def run_eval(ctx):
    from cartoon_stylegan.metrics import GeneratorDataset, ShardImageDataset, compute_metrics, structure_distance
    from stages.training_common import fresh_models

    cfg, ec = ctx.cfg, ctx.cfg.eval
    dev = _device()
    G_src, variants = load_generators(ctx)
    ctx.log_params({"eval": ec})
    cache = ctx.paths.stats_cache
    common = dict(metrics=tuple(ec.metrics), kid_subset_size=ec.kid_subset_size, batch_size=ec.batch,
                  device=dev, cache_dir=cache, progress=False)
    source_real = ShardImageDataset(ctx.paths.dataset_dir("source"), limit=ec.n_real)
    target_real = ShardImageDataset(ctx.paths.dataset_dir("target"), limit=ec.n_real)
    table = {}
    # Scores survive a stop or a crash: each model's figures go to partial.json as soon as they
    # exist, keyed by the stage fingerprint (config + the upstream runs); a re-run with the same
    # fingerprint scores only what is missing. Removed once metrics.json is written.
    from pipeline import dag

    partial_file, fp = ctx.paths.stage_dir / PARTIAL_FILE, dag.fingerprint(cfg, "eval")
    saved = read_json(partial_file, {}) or {}
    done = dict(saved.get("scores", {})) if saved.get("fingerprint") == fp else {}
    if done:
        ctx.say(f"[eval] continuing an interrupted eval: {', '.join(done)} already scored")

    def stop_point():
        if ctx.should_stop():
            raise dag.StageStopped(f"eval stopped after scoring {len(done)} model(s) ({', '.join(done)}); "
                                   f"run again to score the rest")

    def score(label, fake_fn, real, *, structure=None):
        if label in done:
            table[label] = done[label]
            ctx.say(f"[eval] {label}: kept from the interrupted run")
            return done[label]
        fake = fake_fn()
        ctx.say(f"[eval] {label}: {len(fake)} generated vs {len(real)} real images")
        m = compute_metrics(fake, real, **common)
        ctx.log_metrics({f"{label}/{k}": v for k, v in m.items()})
        if structure is not None:
            s = {k: float(v) for k, v in structure().items() if isinstance(v, (int, float)) and k != "n"}
            m.update({f"structure_{k}": v for k, v in s.items()})
            ctx.log_metrics({f"{label}/structure_{k}": v for k, v in s.items()})
        table[label] = done[label] = m
        write_json(partial_file, {"fingerprint": fp, "scores": done})
        return m

    score("source", lambda: GeneratorDataset(G_src, ec.n_samples, seed=cfg.seed + 1, truncation=ec.truncation,
                                             batch=ec.batch), source_real)
    stop_point()
    if ec.real_floor:
        held_out = _held_out(ctx.paths.dataset_dir("source"), len(source_real), ec.n_samples)
        if held_out is None:
            ctx.say(f"[eval] real_floor skipped: the source shards hold fewer than n_real + n_samples "
                    f"= {len(source_real) + ec.n_samples} images")
        else:
            score("real_floor", lambda: held_out, source_real)
            stop_point()
    if ec.untrained_baseline:
        score("untrained", lambda: GeneratorDataset(fresh_models(cfg, cfg.seed + 12345)["g_ema"].eval().to(dev),
                                                    ec.n_samples, seed=cfg.seed + 1, batch=ec.batch), source_real)
        stop_point()
    if ec.source_vs_target:
        score("source_vs_target", lambda: GeneratorDataset(G_src, ec.n_samples, seed=cfg.seed + 1, batch=ec.batch),
              target_real)
        stop_point()
    for name, (G, prefix) in variants.items():
        m = score(name, lambda: GeneratorDataset(G, ec.n_samples, seed=cfg.seed + 1, truncation=ec.truncation,
                                                 batch=ec.batch, prefix_from=G_src if prefix else None,
                                                 prefix_len=prefix), target_real,
                  structure=lambda: structure_distance(G_src, G, n=ec.structure_n, seed=cfg.seed + 2,
                                                       batch=ec.batch, device=dev, tgt_prefix_len=prefix))
        vlog = variant_logger(ctx, name)  # again for a kept score: a stop may have come before this
        if vlog is not None:
            vlog.metrics({f"eval/{k}": v for k, v in _eval_names(m).items()})
            vlog.finish("FINISHED")
        stop_point()
    write_json(ctx.paths.metrics_file, table)
    partial_file.unlink(missing_ok=True)
    ctx.log_artifact(ctx.paths.metrics_file)
    ctx.say(format_metrics(table))
    return {"metrics": str(ctx.paths.metrics_file), **{k: {kk: round(vv, 4) for kk, vv in v.items()
                                                             if isinstance(vv, float)} for k, v in table.items()}}


PARTIAL_FILE = "partial.json"
"""Eval stage: the scores so far of an interrupted eval (see :func:`run_eval`)."""


def _held_out(shard_dir, skip, n):
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
    cols = ["fid", "kid_mean", "precision", "recall", "structure_ratio", "structure_mean_rank"]
    lines = [f"{'model':18s}" + "".join(f"{c:>20s}" for c in cols)]
    for name, m in table.items():
        lines.append(f"{name:18s}" + "".join(f"{m[c]:>20.4f}" if c in m else f"{'-':>20s}" for c in cols))
    return "\n".join(lines)
