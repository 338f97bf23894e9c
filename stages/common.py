"""Config sections shared by several stages: data, model, the init checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from cartoon_stylegan.checkpoint import formats as importers
from toolbox.settings import derive
from cartoon_stylegan.training.options import LoopOptions
from pipeline.config import ConfigError, spec



@dataclass
class DatasetConfig:
    input: str = spec(help="image folder, .zip of images, or synthetic:faces / synthetic:cartoons / "
                      "synthetic:cartoons@G (the cartoons' geometry moved from the faces' by G, 0..1.5)")
    count: Optional[int] = spec(None, min=1, help="number of images for synthetic inputs (required there); "
                                "for folders/zips an optional cap")

    def __post_init__(self):
        if self.input.startswith("synthetic:"):
            from cartoon_stylegan.data.synthetic import get_domain  # numpy only: no torch at config time

            try:
                get_domain(self.input)
            except ValueError as e:
                raise ConfigError(f"input: {e}") from None
            if self.count is None:
                raise ConfigError(f"count: a synthetic input ({self.input}) needs a count")


@dataclass
class DataConfig:
    resolution: int = spec(32, min=16, max=1024, pow2=True, help="training resolution in pixels (power of two)")
    source: DatasetConfig = spec(factory=lambda: DatasetConfig("synthetic:faces", 4000), help="source domain (photos)")
    target: DatasetConfig = spec(factory=lambda: DatasetConfig("synthetic:cartoons", 2000), help="target domain (cartoons)")
    xflip: bool = spec(True, help="random horizontal flips in the loader")
    num_workers: int = spec(0, min=0, max=64, help="loader worker processes per training process")
    shuffle_buffer: int = spec(1000, min=0, help="WebDataset shuffle buffer (samples)")


@dataclass
class ModelConfig:
    style_dim: int = spec(512, min=8, max=4096, help="W dimension")
    n_mlp: int = spec(8, min=1, max=16, help="mapping network depth")
    channel_multiplier: int = spec(2, min=1, max=4, help="config-f uses 2")
    channel_max: int = spec(512, min=4, max=1024, help="cap on every channel count (tiny CPU models: 32-64)")
    lr_mlp: float = spec(0.01, min=0.0, help="mapping network learning-rate multiplier")
    use_noise: bool = spec(True, help="per-layer noise inputs (false: none, and their strengths do not train; "
                                      "tiny models otherwise spend themselves on speckle)")


IMPORT_FORMATS = Literal[importers.names()]  # the checkpoint formats registered in cartoon_stylegan.checkpoint.formats


@dataclass
class InitConfig:
    path: Optional[str] = spec(None, help="checkpoint to start from (transfer: weights only)")
    format: IMPORT_FORMATS = spec("native", help="; ".join(f"{i.name}: {i.help}" for i in importers.IMPORTERS.values()))


def source_from_file(cfg) -> Optional[str]:
    """Why this config needs neither the pretrain stage nor the source image set, or None.

    The one home of the rule: when ``finetune.init.path`` names a generator file (the common case:
    rosinality's FFHQ .pt, an NVlabs .pkl), that file *is* the source domain's generator -- nothing
    is pretrained, the source images are neither sharded nor read, and eval leaves out the rows that
    score against them. The pretrain stage's ``left_out``, shard and eval all ask this.
    """
    init = cfg.finetune.init
    if not init.path:
        return None
    return (f"the source generator is a file (finetune.init.path={init.path}, format {init.format}): nothing to "
            f"pretrain, and the source image set (data.source) is neither sharded nor read")


_DIGESTS: dict = {}


def init_file_inputs(section: str):
    """``Stage.inputs`` of a training stage: the content of ``<section>.init.path`` (a pretrained network
    outside the run), so that replacing the file at the same path makes the stage stale. Hashed once per
    file version in a process (a 360 MB pickle takes seconds)."""
    def inputs(cfg) -> dict:
        import os

        from pipeline.artifacts import file_digest
        from toolbox import file_version

        init = getattr(cfg, section).init
        if not init.path:
            return {}
        path = os.path.expanduser(init.path)
        try:
            key = file_version(path)
        except OSError:
            return {f"{section}.init.path": "missing"}  # the preflight says so, in one line
        if key not in _DIGESTS:
            _DIGESTS[key] = file_digest(path)
        return {f"{section}.init.path": _DIGESTS[key]}
    return inputs


def datasets_used(cfg) -> tuple[str, ...]:
    """The image sets this config shards and reads: ("source", "target"), or ("target",) when the
    source generator is a file."""
    return ("target",) if source_from_file(cfg) else ("source", "target")


# The training loop's settings are declared once, in the library (LoopOptions, with help and
# ranges); the pretrain and finetune sections and a variant's overrides are copies of them.
LOOP_KEYS = tuple(f.name for f in dataclasses.fields(LoopOptions) if f.name != "seed")  # seed: the root's


def check_compile_backend(root, key: str, value) -> None:
    """``compile: true`` needs the ddp backend: refused at config time, before any process starts
    (the training loop refuses it too)."""
    if value and root.launch.backend != "ddp":
        raise ConfigError(f"{key}: true is not supported with launch.backend={root.launch.backend} (its engines wrap "
                          f"the networks' backward); set {key}=false or launch.backend=ddp")


def check_deepspeed_config(root) -> None:
    """``launch.deepspeed`` names a config the training loop can train with (a shipped preset or a JSON
    file): checked as the config loads, one line naming the key, the file and what is wrong."""
    if root.launch.backend != "deepspeed":
        return
    from cartoon_stylegan.training.deepspeed_config import DeepSpeedConfigError, load_deepspeed_config

    try:
        load_deepspeed_config(root.launch.deepspeed)
    except DeepSpeedConfigError as e:
        raise ConfigError(f"launch.deepspeed: {e}") from None


def training_resources(cfg) -> dict:
    """SLURM, for a training stage: a GPU per process; per process the loader's workers, the process
    itself and one spare CPU."""
    return {"gpu": True, "cpus": cfg.data.num_workers + 2, "procs": cfg.launch.num_processes}


def loop_section(name: str, *, exclude=(), optional: bool = False, doc: str = ""):
    """A config section holding the loop settings (less ``exclude``), for a stage to extend."""
    return derive(LoopOptions, name, exclude=("seed", *exclude), optional=optional, doc=doc, module=__name__)
