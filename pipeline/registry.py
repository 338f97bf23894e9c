"""What the runner knows of a stage, and the registry it is handed.

The runner (dag, config, launch, the CLI) never imports a stage: each stage module
declares its own :class:`Stage` record (``STAGE = Stage(...)``), one module assembles them
into a :class:`Registry` (``stages/__init__.py``: ``REGISTRY``), and the CLI loads that
module by name (``--registry``, default ``stages``). A test can hand the runner a toy
registry the same way.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

DEFAULT_REGISTRY = "stages"


@dataclass(frozen=True)
class Stage:
    """One node of the DAG.

    name:        the stage's name: also its output folder and (by default) its config section
    run:         ``run(ctx) -> JSON-able result`` (ctx: :class:`pipeline.context.StageContext`)
    config:      the dataclass of its config section (None: the stage has no section of its own)
    needs:       stages that must be done first
    reads:       dotted config keys whose values change what the stage produces (its fingerprint); or
                 ``reads(cfg) -> keys`` when that depends on the config
    points:      ``points(cfg) -> [name, ...]``: a grid stage, made of independent points (finetune: one per
                 (variant, seed) run): ``run(ctx)`` runs the one point ``ctx.point`` and returns its
                 result; the runner records each point, reruns only those not done, runs several at
                 once (``launch.parallel_runs``) or as a SLURM job array (pipeline/grid.py). Its
                 result is ``{point: result}``. Names are path components (checked).
    finish:      a grid stage: ``finish(ctx, {point: result}) -> result``, run once every point is done
                 (e.g. eval's table of all rows); None: the stage's result is ``{point: result}``
    inputs:      ``inputs(cfg) -> {name: digest}``: files outside the run the stage reads (e.g. a
                 pretrained network), by content: part of its fingerprint
    makes:       what it writes, for ``list`` / ``--dry-run``
    distributed: run through the launcher (``accelerate launch``) when more than one process
    preflight:   ``preflight(cfg)``: checks of its inputs before any stage starts (raise ConfigError)
    digest:      ``digest(cfg) -> str``: a hash of what it wrote, for its dependents' fingerprints
                 (None: its fingerprint and finish time stand for its outputs)
    help:        one line for the config schema
    resources:   ``resources(cfg) -> {"gpu": bool, "cpus": int, "procs": int}``: what a SLURM job of the
                 stage needs (GPU or not, CPUs per process, processes per node); None: a GPU and one
                 process per GPU for a distributed stage, else one CPU (pipeline/slurm/resources.py)
    left_out:    ``left_out(cfg) -> str | None``: why this config does not need the stage at all (e.g.
                 pretrain when the source generator is a file), or None. A stage left out is not
                 planned and not run; its dependents wait for what it needed instead (and must not
                 read it).
    """
    name: str
    run: Callable[[Any], Any]
    config: Optional[type] = None
    needs: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    makes: str = ""
    distributed: bool = False
    preflight: Optional[Callable[[Any], None]] = None
    digest: Optional[Callable[[Any], str]] = None
    help: str = ""
    resources: Optional[Callable[[Any], dict]] = None
    left_out: Optional[Callable[[Any], Optional[str]]] = None
    inputs: Optional[Callable[[Any], dict]] = None
    points: Optional[Callable[[Any], list]] = None
    finish: Optional[Callable[[Any, dict], Any]] = None

    def reads_for(self, cfg) -> tuple[str, ...]:
        """The config keys this stage reads under ``cfg``."""
        return tuple(self.reads(cfg)) if callable(self.reads) else tuple(self.reads)

    def needs_on_slurm(self, cfg) -> dict:
        """What a SLURM job of this stage needs (see ``resources``)."""
        base = {"gpu": self.distributed, "cpus": 2 if self.distributed else 1,
                "procs": cfg.launch.num_processes if self.distributed else 1}
        return {**base, **(self.resources(cfg) if self.resources else {})}


@dataclass(frozen=True)
class Section:
    """A config section that several stages share (e.g. data, model)."""
    name: str
    config: type
    help: str = ""


@dataclass(frozen=True)
class Command:
    """A command of the CLI that uses what the stages made (``python -m pipeline NAME``), e.g. generate.

    arguments: ``arguments(parser)`` adds its options (the config options are added for it)
    run:       ``run(registry, cfg, args) -> exit code``
    config:    False: the command reads no config (``cfg`` is None; no --config or KEY=VALUE options)
    """
    name: str
    help: str
    arguments: Callable[[Any], None]
    run: Callable[[Any, Any, Any], int]
    config: bool = True


@dataclass
class Registry:
    """The stages of a pipeline (in a valid run order), the shared config sections, and extras.

    renamed:  old section name -> new one; the loader accepts the old key with a deprecation note
    compare:  ``compare(cfg, experiment=None, out=None) -> exit code`` for ``python -m pipeline compare``
    commands: :class:`Command` s that use the trained models (``python -m pipeline generate ...``)
    default_config: the YAML file used when no ``--config`` is given (None: every default)
    version:  the version of what the stages run (part of every fingerprint: a new version reruns them)
    paths:    the class of ``ctx.paths`` (a :class:`pipeline.artifacts.StagePaths` that knows the files the
              stages make; None: the runner's own)
    resolve:  ``resolve(tree) -> tree``: fills in config keys from what the config names, on the raw
              mapping (YAML + overrides) before validation -- e.g. the architecture from the
              checkpoint a run starts from; raises ConfigError for a key that contradicts it
    """
    stages: list[Stage]
    shared: list[Section] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    compare: Optional[Callable[..., int]] = None
    commands: list[Command] = field(default_factory=list)
    default_config: Optional[Path] = None
    resolve: Optional[Callable[[dict], dict]] = None
    version: str = ""
    paths: Optional[type] = None
    name: str = DEFAULT_REGISTRY

    def __post_init__(self):
        seen: dict[str, Stage] = {}
        for st in self.stages:
            if st.name in seen:
                raise ValueError(f"registry {self.name}: stage {st.name!r} declared twice")
            for dep in st.needs:
                if dep not in seen:
                    raise ValueError(f"registry {self.name}: stage {st.name!r} needs {dep!r}, "
                                     f"which is not declared before it")
            seen[st.name] = st
        self.by_name = seen
        if self.paths is None:
            from pipeline.artifacts import StagePaths

            self.paths = StagePaths
        self.root = None  # the root config class, built by pipeline.settings.root_config

    def __getitem__(self, name: str) -> Stage:
        if name not in self.by_name:
            close = [c for c in difflib.get_close_matches(name, list(self.by_name) + ["all"], n=2) if c != name][:1]
            raise KeyError(f"unknown stage {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                           + f" (stages: {', '.join(self.by_name)}, or all)")
        return self.by_name[name]

    def __iter__(self):
        return iter(self.by_name)

    def names(self) -> list[str]:
        return list(self.by_name)

    def why_left_out(self, name: str, cfg) -> Optional[str]:
        """Why ``cfg`` does not need stage ``name`` (its ``left_out``), or None (no config: None)."""
        st = self[name]
        return st.left_out(cfg) if cfg is not None and st.left_out is not None else None

    def needs_of(self, name: str, cfg=None) -> tuple[str, ...]:
        """The stages ``name`` waits for under ``cfg``: its ``needs``, where a stage the config leaves
        out is replaced by what *it* needs (finetune without pretrain still waits for shard)."""
        out: list[str] = []
        for dep in self[name].needs:
            for d in ((dep,) if self.why_left_out(dep, cfg) is None else self.needs_of(dep, cfg)):
                if d not in out:
                    out.append(d)
        return tuple(out)

    def left_out(self, cfg) -> dict[str, str]:
        """{stage: why} of every stage this config does not need."""
        return {n: why for n in self.by_name if (why := self.why_left_out(n, cfg)) is not None}

    def plan(self, targets, cfg=None) -> list[str]:
        """The stages needed for ``targets`` ("all" or names), dependencies first, registry order;
        with ``cfg``, less the stages it leaves out (``Stage.left_out``). Naming a left-out stage
        is an error (KeyError naming why)."""
        for t in targets or []:
            if t != "all":
                self[t]  # an unknown name fails with a suggestion
                why = self.why_left_out(t, cfg)
                if why is not None:
                    raise KeyError(f"stage {t!r} is not part of this config's plan: {why}")
        if not targets or list(targets) == ["all"]:
            return [n for n in self.by_name if self.why_left_out(n, cfg) is None]
        want: set[str] = set()

        def visit(name):
            if name not in want:
                want.add(name)
                for dep in self.needs_of(name, cfg):
                    visit(dep)

        for t in targets:
            visit(t)
        return [n for n in self.by_name if n in want]

    def sections(self) -> list[tuple[str, type, str]]:
        """(name, config class, help) of every config section: shared ones, then one per stage."""
        out = [(s.name, s.config, s.help) for s in self.shared]
        out += [(st.name, st.config, st.help or f"{st.name} stage") for st in self.stages if st.config is not None]
        return out


def load(name: str = DEFAULT_REGISTRY) -> Registry:
    """The ``REGISTRY`` of module ``name`` (its root config class built)."""
    from pipeline.settings import root_config

    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise KeyError(f"registry module {name!r} not found ({e})") from None
    reg = getattr(module, "REGISTRY", None)
    if not isinstance(reg, Registry):
        raise KeyError(f"registry module {name!r} has no REGISTRY (a pipeline.registry.Registry)")
    reg.name = name
    if reg.root is None:
        reg.root = root_config(reg)
    return reg


OMIT = object()
"""What :func:`section_value` gives for a setting added later, at its old behaviour: not recorded."""


def section_value(cfg, dotted: str):
    """The value at a dotted config key (``data.source``), as plain data, as a fingerprint records it
    (settings added later, at their old behaviour, left out; such a leaf key itself: :data:`OMIT`)."""
    import dataclasses

    from pipeline.config import to_record
    from toolbox.settings import is_old_behaviour

    obj, parent = cfg, None
    for part in dotted.split("."):
        parent, obj = obj, getattr(obj, part)
    if dataclasses.is_dataclass(parent):
        field = next((f for f in dataclasses.fields(parent) if f.name == dotted.rsplit(".", 1)[-1]), None)
        if field is not None and is_old_behaviour(field, obj):
            return OMIT
    return to_record(obj)
