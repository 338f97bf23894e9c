"""The pipeline's stages: one module per DAG step, each declaring its own ``STAGE``.

This is the one place that assembles them (in run order) with the config sections they
share; the runner (``pipeline/``) is handed ``REGISTRY`` and knows nothing else of them.
To add a stage: write ``stages/<name>.py`` with its config dataclass, ``run(ctx)`` and
``STAGE = Stage(...)``, and add it to the list below.
"""
from __future__ import annotations

from cartoon_stylegan import __version__
from pipeline.config import DEFAULT_CONFIG
from pipeline.registry import Registry, Section
from stages import compare, finetune, pretrain, shard, swap, use
from stages import eval as eval_stage
from stages.common import DataConfig, ModelConfig
from stages.models import architecture_from_init
from stages.paths import StagePaths

REGISTRY = Registry(
    stages=[shard.STAGE, pretrain.STAGE, finetune.STAGE, swap.STAGE, eval_stage.STAGE],
    shared=[Section("data", DataConfig, "datasets"), Section("model", ModelConfig, "architecture"),
            Section("compare", compare.CompareConfig, "pipeline compare: the paired tests (read by no stage)")],
    renamed={"train": "pretrain"},  # configs in the wild use `train:`; accepted with a note for one release
    compare=compare.main,
    commands=use.COMMANDS,  # generate, sefa, mix, cartoonize, serve, export, build-ops (stages/use/)
    default_config=DEFAULT_CONFIG,
    resolve=architecture_from_init,  # a source generator file fixes data.resolution and model.*
    version=__version__,  # cartoon_stylegan's: part of every stage's fingerprint
    paths=StagePaths,  # ctx.paths: where these stages put what they make (stages/paths.py)
)


def load_config(path=None, overrides=()):
    """The config of this registry (a convenience for tests and notebooks)."""
    from pipeline.config import load_config as load
    from pipeline.registry import load as load_registry

    return load(path, overrides, registry=load_registry(__name__))
