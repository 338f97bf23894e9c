"""Fine-tune stage: FreezeSG / structure loss and the baselines, one sub-run per variant."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from cartoon_stylegan.training.options import FreezeOptions
from pipeline.config import ConfigError, spec, unknown_key_error
from pipeline.registry import Stage
from pipeline.settings import check_name
from stages.common import (LOOP_KEYS, InitConfig, check_compile_backend, init_file_inputs, loop_section,
                           training_resources)
from toolbox.settings import derive, overrides_of


@dataclass
class StructureLossConfig:
    up_to: int = spec(32, min=4, pow2=True, help="blocks at resolutions <= up_to (from 8 px) take part")
    weight: float = spec(1.0, min=0.0, help="lambda; with reduce: mean (the paper's text) the loss is the MEAN "
                         "over the blocks, with reduce: sum (the reference code) their sum: n_blocks x the mean")
    on: Literal["rgb", "features"] = spec("rgb", help="compare RGB skip outputs (paper) or feature maps (reference code)")
    # added after runs existed (later=): at these values they stay out of fingerprints and lineages
    reduce: Literal["mean", "sum"] = spec("mean", later="mean", help="mean (paper's text) or sum (reference code) "
                                          "of the per-block MSEs")
    source_w: Literal["target", "own"] = spec("target", later="target", help="the W+ the source runs on: the "
                                              "target's (the loss sees only the synthesis layers) or its own "
                                              "mapping's for the same z (reference code: a drifting target mapping "
                                              "is penalised too)")


# A variant's freezing options are the library's FreezeOptions (FreezePlan's fields) (declared there once, with help and
# range), copied into the config schema.
_FreezeOptions = derive(FreezeOptions, "VariantFreezeOptions", module=__name__)
FREEZE_KEYS = tuple(f.name for f in dataclasses.fields(FreezeOptions))


@dataclass
class VariantConfig(loop_section("VariantLoopOverrides", optional=True), _FreezeOptions):
    """A fine-tuning method: what it freezes (FreezePlan's options) and adds; any loop setting given
    here overrides the finetune section's for this variant only (the copy of the loop settings with
    every key optional)."""
    structure_loss: Optional[StructureLossConfig] = spec(None, help="structure loss against the source generator")

    def loop_overrides(self) -> dict:
        """The loop settings this variant sets (those not None)."""
        return overrides_of(self, LOOP_KEYS)

    def freeze_plan(self, freeze_d_above: Optional[int] = None):
        """This variant's FreezePlan; ``freeze_d_above``: the finetune section's, used where the
        variant sets none."""
        plan = {k: getattr(self, k) for k in FREEZE_KEYS}
        if plan["freeze_d_above"] is None:
            plan["freeze_d_above"] = freeze_d_above
        from cartoon_stylegan.training import FreezePlan

        return FreezePlan(**plan)


def default_variants():
    """The paper's comparison (arXiv 2106.12445); the D side (finetune.freeze_d_above, ada) is shared.

    freezed             FreezeD + ADA only: the baseline
    freezeg             + the low-resolution blocks and the mapping network frozen (reference FreezeG)
    freezesg            + the low-resolution blocks frozen, their W+ from the frozen *source* mapping;
                        the target mapping trains and styles the layers above
    freezesg_structure  freezesg + the structure loss

    configs/comparison.yaml adds freezeg_mapping (blocks frozen, the mapping trains and feeds them: the
    FreezeG the paper argues against) and structure (the structure loss alone: the reference's setting).
    """
    return {
        "freezed": VariantConfig(),
        "freezeg": VariantConfig(freeze_g_up_to=8, freeze_mapping=True),
        "freezesg": VariantConfig(freeze_g_up_to=8, freeze_style_up_to=8),
        "freezesg_structure": VariantConfig(freeze_g_up_to=8, freeze_style_up_to=8,
                                            structure_loss=StructureLossConfig(up_to=16, weight=1.0)),
    }


RESERVED = {"points": "the runner's folder of grid points", "source": "an eval row",
            "real_floor": "an eval row", "untrained": "an eval row", "source_vs_target": "an eval row"}
"""Names a variant cannot take: its folder or its eval row would clash."""


@dataclass(frozen=True)
class VariantRun:
    """One training run of a variant: its folder under finetune/ (also its label in swap and eval)."""
    dir: str
    variant: str
    config: VariantConfig
    seed: int

    @property
    def title(self) -> str:
        """The MLflow run name, e.g. ``finetune/freezesg seed 1``."""
        return f"finetune/{self.variant}" + (f" seed {self.seed}" if self.dir != self.variant else "")


def variant_logger(ctx, run: VariantRun):
    """The MLflow run of a trained variant (made by the finetune stage), so that swap grids and eval
    figures sit beside its losses and samples; None when tracking is off."""
    from pipeline.artifacts import read_json
    from stages.paths import StagePaths

    rec = read_json(StagePaths(ctx.cfg, "finetune").train_dir(run.dir) / "mlflow_run.json", {}) or {}
    if not rec.get("run_id") or not ctx.logger.run_id:
        return None
    return ctx.logger.child(run.title, run_id=rec["run_id"])


@dataclass
class FinetuneConfig(loop_section("FinetuneLoop", exclude=("pl_weight", "ada", "ema_rampup"))):
    pl_weight: Optional[float] = spec(None, min=0.0, help="path-length weight; null: off when G blocks are "
                                      "frozen (as the reference code), else 2")
    ada: bool = spec(True, help="adaptive discriminator augmentation, for every variant (the reference "
                     "adds --augment to every fine-tuning command)")
    ema_rampup: Optional[float] = spec(None, min=0.0, help="G_ema ramp-up; null: none -- a fine-tune is a "
                                       "transfer, G_ema starts as the source generator itself")
    freeze_d_above: Optional[int] = spec(None, min=4, pow2=True, help="FreezeD for every variant (a variant's "
                                         "own freeze_d_above wins): D blocks reading inputs above this do not "
                                         "train; the reference's --freezeD=3 at 256 px is 32")
    init: InitConfig = spec(factory=InitConfig, help="start from these weights instead of the pretrain stage (a transfer)")
    variants: dict[str, VariantConfig] = spec(factory=default_variants, help="fine-tuning methods, each trained into its own dir")
    run_variants: Optional[list[str]] = spec(None, help="which variants to train (null: all)")
    seeds: Optional[list[int]] = spec(None, min=0, help="train every variant once per seed, each in "
                                      "finetune/<variant>-seed<k>/ with its own MLflow run, for results over "
                                      "seeds (`pipeline compare`: mean +- std); null: once, at the root seed, "
                                      "in finetune/<variant>/")

    def selected(self) -> dict[str, VariantConfig]:
        names = self.run_variants if self.run_variants is not None else list(self.variants)
        return {n: self.variants[n] for n in names}

    def runs(self, root_seed: int) -> list["VariantRun"]:
        """Every (variant, seed) run this config trains, in order."""
        if self.seeds is None:
            return [VariantRun(n, n, v, root_seed) for n, v in self.selected().items()]
        return [VariantRun(f"{n}-seed{k}", n, v, k) for n, v in self.selected().items() for k in self.seeds]

    def validate_against(self, root):
        res = root.data.resolution
        if not self.variants:
            raise ConfigError("finetune.variants: at least one variant is needed")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"finetune.seeds: {self.seeds!r} must be a non-empty list of different seeds, or null")
        if self.run_variants is not None and not self.run_variants:
            raise ConfigError("finetune.run_variants: empty; list the variants to train, or null for all")
        for n in self.run_variants or []:
            if n not in self.variants:
                raise unknown_key_error(f"finetune.run_variants: {n!r}", n, self.variants)
        if self.freeze_d_above is not None and self.freeze_d_above > res:
            raise ConfigError(f"finetune.freeze_d_above: {self.freeze_d_above} is above data.resolution ({res})")
        for name, v in self.variants.items():
            check_name(name, f"finetune.variants.{name}")
            if name in RESERVED:
                raise ConfigError(f"finetune.variants.{name}: the name {name!r} is taken ({RESERVED[name]}); "
                                  f"call the variant otherwise")
            if v.compile is None:  # the section's value is this variant's
                check_compile_backend(root, "finetune.compile", self.compile)
            else:
                check_compile_backend(root, f"finetune.variants.{name}.compile", v.compile)
            for k in ("freeze_d_above", "freeze_g_up_to", "freeze_style_up_to"):
                r = getattr(v, k)
                if r is not None and r > res:
                    raise ConfigError(f"finetune.variants.{name}.{k}: {r} is above data.resolution ({res})")
            if v.structure_loss and not (8 <= v.structure_loss.up_to <= res):
                raise ConfigError(f"finetune.variants.{name}.structure_loss.up_to: {v.structure_loss.up_to} "
                                  f"must be between 8 and data.resolution ({res})")


def preflight(cfg):
    from stages.models import check_init

    check_init(cfg, "finetune", cfg.finetune.init)


def points(cfg) -> list[str]:
    """The grid: one point per (variant, seed) run, named by its folder under finetune/."""
    return [r.dir for r in cfg.finetune.runs(cfg.seed)]


_LOADED: dict = {}  # the source networks of this process, by (file, format, file version): a grid's
                    # points run one after another in one process load them once


def _source_networks(cfg, path, fmt):
    from stages.models import load_weights
    from toolbox import file_version

    key = (file_version(path), fmt, cfg.data.resolution, repr(cfg.model))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_weights(cfg, path, fmt)
    return _LOADED[key]


def run(ctx):
    """Train the grid point ``ctx.point`` (every run when None: a caller outside the runner)."""
    import copy

    from stages.models import source_path
    from stages.training import run_training

    cfg = ctx.cfg
    path, fmt = source_path(cfg, ctx.paths)
    runs = cfg.finetune.runs(cfg.seed)
    if ctx.point is not None:
        runs = [r for r in runs if r.dir == ctx.point]
        if not runs:
            raise ValueError(f"finetune: no run {ctx.point!r} in this config (its runs: {', '.join(points(cfg))})")
    loaded = _source_networks(cfg, path, fmt)  # every (variant, seed) run starts from copies
    out = {}
    for run in runs:
        nets = {k: copy.deepcopy(v) for k, v in loaded.items()}
        # G, G_ema and the frozen source all start as the source generator (its EMA weights): every
        # frozen tensor agrees between them from step 0 on, and the structure loss starts at 0
        nets["g"] = copy.deepcopy(nets["g_ema"])
        G_source = copy.deepcopy(nets["g_ema"]).eval().requires_grad_(False)
        ctx.say(f"[{run.title}] source generator: {path}")
        out[run.dir] = run_training(ctx, section=cfg.finetune, data_name="target", nets=nets, G_source=G_source,
                                    variant=run, source=path)
    return out[ctx.point] if ctx.point is not None else out


def digest(cfg) -> str:
    from pipeline.artifacts import digest_of, file_digest
    from stages.paths import StagePaths

    paths = StagePaths(cfg, "finetune")
    return digest_of({r.dir: file_digest(paths.final_network(r.dir)) for r in cfg.finetune.runs(cfg.seed)})




STAGE = Stage(
    name="finetune", run=run, config=FinetuneConfig, needs=("pretrain",), preflight=preflight, distributed=True, resources=training_resources,
    digest=digest, inputs=init_file_inputs("finetune"), points=points, makes="finetune/<variant>/checkpoints/network-final.pt",
    reads=("seed", "data.resolution", "data.target", "data.xflip", "data.shuffle_buffer", "model", "finetune"),
    help="finetune stage: one run per variant and seed (a grid: each run on its own)")
