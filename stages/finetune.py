"""Fine-tune stage: FreezeSG / structure loss and the baselines, one sub-run per variant."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, get_type_hints

from pipeline.config import ConfigError, _check_range, _convert, spec, unknown_key_error
from stages.common import LOOP_FIELDS, InitConfig, LoopConfig


@dataclass
class StructureLossConfig:
    up_to: int = spec(32, min=4, pow2=True, help="blocks at resolutions <= up_to (from 8 px) take part")
    weight: float = spec(1.0, min=0.0, help="lambda")
    on: Literal["rgb", "features"] = spec("rgb", help="compare RGB skip outputs (paper) or feature maps (reference code)")


_VARIANT_OWN = ("freeze_d_above", "freeze_g_up_to", "freeze_style_up_to", "freeze_mapping", "structure_loss")


@dataclass
class VariantConfig:
    """A fine-tuning method; keys other than the freeze options override loop settings for this variant."""
    freeze_d_above: Optional[int] = spec(None, min=4, pow2=True, help="FreezeD: D blocks above this resolution do not train")
    freeze_g_up_to: Optional[int] = spec(None, min=4, pow2=True, help="FreezeG: G const/mapping/blocks up to this resolution do not train")
    freeze_style_up_to: Optional[int] = spec(None, min=4, pow2=True, help="FreezeSG: W+ of layers up to this resolution from the frozen source mapping")
    freeze_mapping: bool = spec(False, help="the target mapping network does not train")
    structure_loss: Optional[StructureLossConfig] = spec(None, help="structure loss against the source generator")
    loop: dict = field(default_factory=dict, metadata={"help": "loop settings for this variant only"})

    @classmethod
    def __from_config__(cls, data, prefix):
        from pipeline.config import from_dict

        data = dict(data or {})
        nested = data.pop("loop", None) or {}  # a resolved config written back has them nested
        if not isinstance(nested, dict):
            raise ConfigError(f"{prefix}.loop: expected a mapping of loop settings, got {nested!r}")
        loop_raw = {**nested, **{k: data.pop(k) for k in list(data) if k in LOOP_FIELDS}}
        bad = [k for k in loop_raw if k not in LOOP_FIELDS]
        if bad:
            raise unknown_key_error(f"{prefix}.loop.{bad[0]}", bad[0], LOOP_FIELDS)
        unknown = [k for k in data if k not in _VARIANT_OWN]
        if unknown:
            raise unknown_key_error(f"{prefix}.{unknown[0]}", unknown[0], _VARIANT_OWN + LOOP_FIELDS)
        variant = from_dict(cls, data, prefix, use_hook=False)
        hints = get_type_hints(LoopConfig)
        fields = LoopConfig.__dataclass_fields__
        for k, v in loop_raw.items():
            key = f"{prefix}.{k}"
            variant.loop[k] = _convert(hints[k], v, key)
            _check_range(fields[k], variant.loop[k], key)
        return variant


def default_variants():
    return {
        "freezed": VariantConfig(freeze_d_above=16, loop={"ada": True}),
        "freezeg": VariantConfig(freeze_g_up_to=8),
        "freezesg": VariantConfig(freeze_g_up_to=8, freeze_style_up_to=8),
        "freezesg_structure": VariantConfig(freeze_g_up_to=8, freeze_style_up_to=8,
                                            structure_loss=StructureLossConfig(up_to=16, weight=1.0)),
    }


@dataclass
class FinetuneConfig(LoopConfig):
    pl_weight: Optional[float] = spec(None, min=0.0, help="path-length weight; null: off when G blocks are "
                                      "frozen (as the reference code), else 2")
    init: InitConfig = spec(factory=InitConfig, help="start from these weights instead of the pretrain stage (a transfer)")
    variants: dict[str, VariantConfig] = spec(factory=default_variants, help="fine-tuning methods, each trained into its own dir")
    run_variants: Optional[list[str]] = spec(None, help="which variants to train (null: all)")

    def selected(self) -> dict[str, VariantConfig]:
        names = self.run_variants if self.run_variants is not None else list(self.variants)
        return {n: self.variants[n] for n in names}

    def validate_against(self, root):
        res = root.data.resolution
        if not self.variants:
            raise ConfigError("finetune.variants: at least one variant is needed")
        for n in self.run_variants or []:
            if n not in self.variants:
                raise unknown_key_error(f"finetune.run_variants: {n!r}", n, self.variants)
        for name, v in self.variants.items():
            for k in ("freeze_d_above", "freeze_g_up_to", "freeze_style_up_to"):
                r = getattr(v, k)
                if r is not None and r > res:
                    raise ConfigError(f"finetune.variants.{name}.{k}: {r} is above data.resolution ({res})")
            if v.structure_loss and not (8 <= v.structure_loss.up_to <= res):
                raise ConfigError(f"finetune.variants.{name}.structure_loss.up_to: {v.structure_loss.up_to} "
                                  f"must be between 8 and data.resolution ({res})")


def preflight(cfg):
    cfg.finetune.init.preflight("finetune")


def run(ctx):
    from stages import training_common as tc

    out = {}
    for name, variant in ctx.cfg.finetune.selected().items():
        out[name] = tc.run_training(ctx, section=ctx.cfg.finetune, data_name="target", variant=(name, variant))
    return out
