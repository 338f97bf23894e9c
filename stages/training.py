"""The training recipe pretrain and finetune share: map the config onto the loop, run it, log.

A recipe, no tensor math: the library's training loop does the work. The stage hands it
the networks to start from (stages/models.py builds or loads them).
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime

from pipeline import dag
from pipeline.artifacts import digest_of, read_json, write_json
from pipeline.config import to_dict
from stages.common import LOOP_KEYS


def loop_options(section, variant=None, *, seed):
    """The stage section (and a variant's overrides) -> LoopOptions for the library loop."""
    from cartoon_stylegan.training import LoopOptions

    values = {k: getattr(section, k) for k in LOOP_KEYS if hasattr(section, k)}  # a section may leave some out
    if variant is not None:
        values.update(variant.loop_overrides())
        if values["pl_weight"] is None:  # reference behaviour: no path-length reg when G blocks are frozen
            values["pl_weight"] = 0.0 if variant.freeze_g_up_to else 2.0
    if values["pl_weight"] is None:
        values["pl_weight"] = 2.0
    return LoopOptions(**values, seed=seed)


def lineage(cfg, data_name: str, opts, *, variant=None, source: str | None = None, init=None) -> dict:
    """What a training dir's model *is*: data, architecture, the loop settings that change what is
    trained (not the budget or the reporting intervals: ``RUN_ONLY``), the variant's method and
    the weights it started from. A run with the same lineage continues the dir's checkpoints."""
    import dataclasses

    from cartoon_stylegan.training.options import RUN_ONLY
    from pipeline.config import to_record
    from toolbox.settings import is_old_behaviour
    from pipeline.artifacts import file_digest

    data = cfg.data
    manifest = read_json(_shard_manifest(cfg, data_name), {}) or {}
    out = {
        "data": {"resolution": data.resolution, "xflip": data.xflip, "shuffle_buffer": data.shuffle_buffer,
                 "shards": [s.get("sha256") for s in manifest.get("shards", [])]},
        "model": to_dict(cfg.model),
        "loop": {f.name: to_record(getattr(opts, f.name)) for f in dataclasses.fields(opts)
                 if f.name not in RUN_ONLY and not is_old_behaviour(f, getattr(opts, f.name))},
    }
    if variant is not None:
        out["variant"] = {k: v for k, v in to_record(variant).items() if k not in LOOP_KEYS}
    if source is not None:
        out["source"] = file_digest(source)
    if init is not None and init.path:
        out["init"] = {"format": init.format, "sha256": file_digest(init.path)}
    return out


def _shard_manifest(cfg, data_name):
    from stages.paths import StagePaths

    return StagePaths(cfg, "shard").dataset_dir(data_name) / "manifest.json"


def claim_dir(train_dir, owner: dict, say) -> None:
    """Make ``train_dir`` hold a model of lineage ``owner``; a model of another lineage is kept,
    moved aside to ``superseded/<time>/`` (nothing a user trained is deleted)."""
    marker = train_dir / "owner.json"
    previous = read_json(marker, {}) or {}
    key = digest_of(owner)
    mine = [train_dir / n for n in ("checkpoints", "samples", "done.json", "mlflow_run.json")
            if (train_dir / n).exists()]
    if previous.get("lineage") != key and mine:
        dst = train_dir / "superseded" / datetime.now().strftime("%Y%m%d-%H%M%S")
        dst.mkdir(parents=True, exist_ok=True)
        for p in mine:
            os.replace(p, dst / p.name)
        changed = sorted(k for k in set(owner) | set(previous.get("owner", {}))
                         if owner.get(k) != previous.get("owner", {}).get(k)) or ["(unknown: an older layout)"]
        say(f"  {train_dir.name}: the model there was trained with other settings ({', '.join(changed)} "
            f"differ); kept in {dst}, training a new one")
    write_json(marker, {"lineage": key, "owner": owner})


def run_training(ctx, *, section, data_name, nets, G_source=None, variant=None, source=None):
    """Train ``nets`` ({"g", "d", "g_ema"}) on the ``data_name`` shards with ``section``'s loop settings.

    variant: a fine-tuning ``VariantRun`` (its own dir, seed, MLflow run, freezing and structure
    loss); G_source: the frozen source generator a variant may need; source: the file the
    networks came from (part of the model's lineage).

    A dir whose model has the same lineage is continued: a larger ``kimg`` trains on from its
    newest checkpoint; a smaller or equal one keeps the model as it is. A model of another
    lineage is moved aside, never deleted (:func:`claim_dir`).
    """
    import torch

    from cartoon_stylegan.data import make_loader
    from cartoon_stylegan.training import StructureLoss, find_latest_resume, train
    from cartoon_stylegan.training.backends import make_backend

    cfg, acc = ctx.cfg, ctx.accelerator
    name, v, seed = (variant.dir, variant.config, variant.seed) if variant else (None, None, cfg.seed)
    train_dir = ctx.paths.train_dir(name)
    ckpt_dir = ctx.paths.checkpoint_dir(name)
    opts = loop_options(section, v, seed=seed)
    label = variant.title if variant else ctx.stage
    freeze = structure = None
    if v is not None:
        freeze = v.freeze_plan(getattr(section, "freeze_d_above", None))
        if v.structure_loss:
            sl = v.structure_loss
            structure = StructureLoss(up_to=sl.up_to, weight=sl.weight, on=sl.on, reduce=sl.reduce,
                                      source_w=sl.source_w)

    if ctx.is_main:
        train_dir.mkdir(parents=True, exist_ok=True)
        init = None if variant is not None else getattr(section, "init", None)
        owner = lineage(cfg, data_name, opts, variant=v, source=source, init=init)
        if freeze is not None:
            owner["freeze"] = freeze.to_dict()  # the variant's own and the shared D side
        claim_dir(train_dir, owner, ctx.say)
    acc.wait_for_everyone()
    done = read_json(train_dir / "done.json")
    if done and done["kimg"] >= opts.kimg - 1e-9:
        more = f"; {opts.kimg:g} kimg asked, the model is kept as it is" if done["kimg"] > opts.kimg + 1e-9 else ""
        ctx.say(f"[{label}] already trained ({done['kimg']} kimg){more}")
        return done
    if done:
        ctx.say(f"[{label}] trained {done['kimg']} kimg before; continuing to {opts.kimg:g} kimg")
    logger = ctx.logger
    if name is not None and ctx.is_main:
        run_file = train_dir / "mlflow_run.json"
        logger = ctx.child_logger(variant.title, tags={"variant": variant.variant, "seed": str(seed)},
                                  run_id=(read_json(run_file, {}) or {}).get("run_id"))
        if logger.run_id:
            write_json(run_file, {"run_id": logger.run_id})
    ctx.log_params({"variant": {"name": variant.variant, "seed": seed, **_variant_dict(v)} if v else None,
                    "loop": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
                    "model": cfg.model, "data": cfg.data}, logger=logger)

    shard_dir = ctx.paths.dataset_dir(data_name)

    def data(start_step: int):
        # the stream of a resumed run is a function of (seed, step): no batch is seen twice in a row
        return make_loader(shard_dir, batch_size=opts.batch, rank=acc.process_index, world_size=acc.num_processes,
                           seed=seed * 1_000_003 + start_step, num_workers=cfg.data.num_workers,
                           shuffle_buffer=cfg.data.shuffle_buffer, xflip=cfg.data.xflip)

    samples_dir = train_dir / "samples"

    def report(metrics, step):
        ctx.log_metrics(metrics, step, logger=logger)

    def report_image(tag, array, step):
        ctx.log_image(array, samples_dir / f"{tag}-{step:08d}.png", "samples", logger=logger)

    latest = find_latest_resume(ckpt_dir)
    if latest is not None:
        ctx.say(f"[{label}] resuming from {latest}")
    t0 = time.time()
    backend = make_backend(acc, cfg.launch.backend, deepspeed_config=cfg.launch.deepspeed, batch=opts.batch)
    if backend.name != "ddp" or acc.num_processes > 1:
        ctx.say(f"[{label}] backend: {backend.describe()}")
    result = train(acc, G=nets["g"], D=nets["d"], G_ema=nets["g_ema"], data=data, opts=opts, ckpt_dir=ckpt_dir,
                   report=report, report_image=report_image, G_source=G_source, freeze=freeze,
                   structure=structure, should_stop=ctx.should_stop, backend=backend)
    if result.status == "stopped":
        raise dag.StageStopped(f"{label} stopped at {result.kimg:.2f} kimg (step {result.step}); "
                               f"checkpoint {result.last_checkpoint}")
    minutes = (time.time() - t0) / 60
    out = {"kimg": result.kimg, "step": result.step, "network": str(ctx.paths.final_network(name)),
           "minutes_this_attempt": round(minutes, 2), "start_step": result.start_step,
           "resumed_from": result.resumed_from}
    if ctx.is_main:
        ctx.log_metrics({"train/minutes": minutes}, result.step, logger=logger)
        if result.last_checkpoint and samples_dir.exists():
            last = sorted(samples_dir.glob("*.png"))
            if last:
                ctx.log_artifact(last[-1], "final", logger=logger)
        write_json(train_dir / "done.json", out)
        if logger is not ctx.logger:
            logger.finish("FINISHED")
    acc.wait_for_everyone()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def _variant_dict(v):
    from pipeline.config import to_dict

    return json.loads(json.dumps(to_dict(v), default=str))
