"""DeepSpeed configs the training loop can train with: the shipped presets (package data) and the checks
that refuse, in one line naming the file and key, what the GAN loop cannot use (ZeRO-3, DeepSpeed's own
fp16/bf16 sections: see backends.py for why)."""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

__all__ = ["DeepSpeedConfigError", "SHIPPED_DEEPSPEED", "deepspeed_config_path", "check_deepspeed_config",
           "load_deepspeed_config"]

# the presets are package data (pyproject: package-data), found through the package so that a wheel or
# a non-editable install has them too
SHIPPED_DEEPSPEED = Path(str(resources.files("cartoon_stylegan.training") / "deepspeed_presets"))


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config this loop cannot train with (the message names the file and key)."""


def deepspeed_config_path(name_or_path: str) -> Path:
    """A shipped config by name (``zero1``, ``zero2`` -> the package's deepspeed_presets/<name>.json) or a JSON file."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path):
        return SHIPPED_DEEPSPEED / f"{name_or_path}.json"
    return Path(name_or_path)


def check_deepspeed_config(cfg: dict, where: str = "the DeepSpeed config") -> dict:
    """``cfg`` checked for this loop; returns it. Raises DeepSpeedConfigError naming the key."""
    if not isinstance(cfg, dict):
        raise DeepSpeedConfigError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise DeepSpeedConfigError(f"{where}: zero_optimization must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if stage == 3:
        raise DeepSpeedConfigError(
            f"{where}: zero_optimization.stage 3 is not supported for the GAN loop: ZeRO-3 partitions the weights, "
            "but every step reads all of G's weights (EMA, sampling) and runs D's bare module for R1 and G's loss; "
            "use stage 1 (optimizer state partitioned) or 2 (gradients too)")
    if stage not in (0, 1, 2):
        raise DeepSpeedConfigError(f"{where}: zero_optimization.stage must be 0, 1 or 2, got {stage!r}")
    for key in ("fp16", "bf16", "torch_autocast"):
        if isinstance(cfg.get(key), dict) and cfg[key].get("enabled", False):
            raise DeepSpeedConfigError(
                f"{where}: {key}.enabled is not supported: weights and optimizer stay fp32 under DeepSpeed; "
                "set launch.mixed_precision=bf16 for bf16 autocast on a GPU (as under DDP)")
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise DeepSpeedConfigError(
                f"{where}: remove the {key!r} section: the loop brings its own Adam per network (learning rates "
                "and betas corrected for lazy regularisation, set by pretrain/finetune lr_g, lr_d, betas)")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none") if isinstance(zero.get(key), dict) else "none"
        if device not in (None, "none"):
            raise DeepSpeedConfigError(
                f"{where}: zero_optimization.{key} is not supported (it needs DeepSpeed's CPU Adam, built from "
                "source, in place of the loop's optimizer)")
    gas = cfg.get("gradient_accumulation_steps", 1)
    if gas not in (1, "auto"):
        raise DeepSpeedConfigError(f"{where}: gradient_accumulation_steps must be 1 (each GAN phase is one "
                                   f"optimizer step), got {gas!r}")
    if cfg.get("gradient_clipping", 0) not in (0, 0.0):
        raise DeepSpeedConfigError(f"{where}: gradient_clipping is not used by StyleGAN2; set it to 0 or remove it")
    return cfg


def load_deepspeed_config(name_or_path: str) -> tuple[Path, dict]:
    path = deepspeed_config_path(name_or_path)
    if not path.is_file():
        shipped = sorted(p.stem for p in SHIPPED_DEEPSPEED.glob("*.json"))
        raise DeepSpeedConfigError(f"{name_or_path!r} is neither a shipped config ({', '.join(shipped)}) "
                                   f"nor a JSON file ({path} not found)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DeepSpeedConfigError(f"{path}: not valid JSON ({e})") from None
    return path, check_deepspeed_config(cfg, str(path))


