"""What pretrain and finetune share: build or load the models, map the config onto the loop, run it.

A recipe, no tensor math: the library's training loop does the work.
"""
from __future__ import annotations

import copy
import json
import shutil
import time

from pipeline import dag
from pipeline.artifacts import read_json, write_json
from stages.common import LOOP_FIELDS


def arch(cfg) -> tuple[dict, dict]:
    m = cfg.model
    g = dict(size=cfg.data.resolution, style_dim=m.style_dim, n_mlp=m.n_mlp,
             channel_multiplier=m.channel_multiplier, channel_max=m.channel_max, lr_mlp=m.lr_mlp,
             use_noise=m.use_noise)
    d = dict(size=cfg.data.resolution, channel_multiplier=m.channel_multiplier, channel_max=m.channel_max)
    return g, d


def fresh_models(cfg, seed):
    import torch

    from cartoon_stylegan.networks import Discriminator, Generator

    g_cfg, d_cfg = arch(cfg)
    torch.manual_seed(seed)
    G, D = Generator(**g_cfg), Discriminator(**d_cfg)
    G_ema = copy.deepcopy(G).eval()
    return {"g": G, "d": D, "g_ema": G_ema}


def load_weights(cfg, path, fmt):
    """A transfer: weights of G, D, G_ema from a file, checked against the configured architecture."""
    from cartoon_stylegan import checkpoint

    g_cfg, d_cfg = arch(cfg)
    if fmt == "rosinality":
        nets = checkpoint.import_rosinality(path)
        for key, want in (("g", g_cfg), ("g_ema", g_cfg), ("d", d_cfg)):
            net = nets.get(key)
            if net is not None:
                training_only = ("lr_mlp", "use_noise")  # choices of this run, not stored by rosinality
                got = {k: net.config.get(k) for k in want if k not in training_only}
                exp = {k: v for k, v in want.items() if k not in training_only}
                if got != exp:
                    raise checkpoint.CheckpointMismatch(
                        f"{path}: {key} has architecture {got}, the config asks for {exp} "
                        f"(set data.resolution / model.* to match the checkpoint)")
                if key != "d":
                    net.use_noise = want["use_noise"]
    else:
        nets = checkpoint.load_transfer(path, expect_g_config=g_cfg, expect_d_config=d_cfg)
    if nets.get("g_ema") is None and nets.get("g") is None:
        raise ValueError(f"{path}: holds no generator")
    if nets.get("g") is None:
        nets["g"] = copy.deepcopy(nets["g_ema"])
    if nets.get("g_ema") is None:
        nets["g_ema"] = copy.deepcopy(nets["g"])
    if nets.get("d") is None:
        from cartoon_stylegan.networks import Discriminator

        nets["d"] = Discriminator(**d_cfg)
    return nets


def loop_options(section, variant=None, *, seed):
    """The stage section (and a variant's overrides) -> LoopOptions for the library loop."""
    from cartoon_stylegan.training import LoopOptions

    values = {k: getattr(section, k) for k in LOOP_FIELDS}
    if variant is not None:
        values.update(variant.loop)
        if values["pl_weight"] is None:  # reference behaviour: no path-length reg when G blocks are frozen
            values["pl_weight"] = 0.0 if variant.freeze_g_up_to else 2.0
    if values["pl_weight"] is None:
        values["pl_weight"] = 2.0
    grid = values.pop("grid")
    values["grid_size"] = tuple(grid)
    return LoopOptions(**values, seed=seed)


def _own_dir(train_dir, fingerprint):
    """Checkpoints in ``train_dir`` belong to one fingerprint; a changed config starts afresh."""
    marker = train_dir / "owner.json"
    owner = read_json(marker, {}) or {}
    if owner.get("fingerprint") != fingerprint and train_dir.exists():
        for sub in ("checkpoints", "samples"):
            shutil.rmtree(train_dir / sub, ignore_errors=True)
        (train_dir / "done.json").unlink(missing_ok=True)
    write_json(marker, {"fingerprint": fingerprint})


def run_training(ctx, *, section, data_name, variant):
    import torch

    from cartoon_stylegan.data import make_loader
    from cartoon_stylegan.training import FreezePlan, StructureLoss, find_latest_resume, train

    cfg, acc = ctx.cfg, ctx.accelerator
    name, v = variant if variant else (None, None)
    fingerprint = dag.read_state(cfg, ctx.stage).get("fingerprint", "")
    train_dir = ctx.paths.train_dir(name)
    ckpt_dir = ctx.paths.checkpoint_dir(name)
    if ctx.is_main:
        train_dir.mkdir(parents=True, exist_ok=True)
        _own_dir(train_dir, fingerprint)
    acc.wait_for_everyone()
    done = read_json(train_dir / "done.json")
    if done:
        ctx.say(f"[{ctx.stage}{'/' + name if name else ''}] already trained ({done['kimg']} kimg); kept")
        return done

    opts = loop_options(section, v, seed=cfg.seed)
    label = f"{ctx.stage}/{name}" if name else ctx.stage
    logger = ctx.logger
    if name is not None and ctx.is_main:
        run_file = train_dir / "mlflow_run.json"
        logger = ctx.child_logger(name, run_id=(read_json(run_file, {}) or {}).get("run_id"))
        if logger.run_id:
            write_json(run_file, {"run_id": logger.run_id})
    ctx.log_params({"variant": {"name": name, **_variant_dict(v)} if v else None,
                    "loop": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
                    "model": cfg.model, "data": cfg.data}, logger=logger)

    # models: fresh, imported (transfer), or the pretrain stage's result (finetune)
    G_source = None
    init = section.init
    if ctx.stage == "pretrain":
        nets = load_weights(cfg, init.path, init.format) if init.path else fresh_models(cfg, cfg.seed)
    else:
        path = init.path or ctx.paths.of("pretrain").final_network()
        fmt = init.format if init.path else "native"
        nets = load_weights(cfg, path, fmt)
        G_source = copy.deepcopy(nets["g_ema"]).eval().requires_grad_(False)
        ctx.say(f"[{label}] source generator: {path}")
    freeze = structure = None
    if v is not None:
        freeze = FreezePlan(freeze_d_above=v.freeze_d_above, freeze_g_up_to=v.freeze_g_up_to,
                            freeze_style_up_to=v.freeze_style_up_to, freeze_mapping=v.freeze_mapping)
        if v.structure_loss:
            structure = StructureLoss(up_to=v.structure_loss.up_to, weight=v.structure_loss.weight,
                                      on=v.structure_loss.on)

    shard_dir = ctx.paths.dataset_dir(data_name)

    def data(start_step: int):
        # the stream of a resumed run is a function of (seed, step): no batch is seen twice in a row
        return make_loader(shard_dir, batch_size=opts.batch, rank=acc.process_index, world_size=acc.num_processes,
                           seed=cfg.seed * 1_000_003 + start_step, num_workers=cfg.data.num_workers,
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
    result = train(acc, G=nets["g"], D=nets["d"], G_ema=nets["g_ema"], data=data, opts=opts, ckpt_dir=ckpt_dir,
                   report=report, report_image=report_image, G_source=G_source, freeze=freeze,
                   structure=structure, should_stop=ctx.should_stop)
    if result.status == "stopped":
        raise dag.StageStopped(f"{label} stopped at {result.kimg:.2f} kimg (step {result.step}); "
                               f"checkpoint {result.last_checkpoint}")
    ctx.trained[label] = nets
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
