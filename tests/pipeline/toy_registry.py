"""A toy registry for the runner's tests: three stages that write small files, no torch, no stages package.

    a ──> b ──┬─> c
              └─> d   (d reads only `d.word`; d.word=no-b leaves b out: c and d then wait for a)
"""
from __future__ import annotations

from dataclasses import dataclass

from toolbox.settings import setting
from pipeline.artifacts import write_json
from pipeline.registry import Registry, Section, Stage


@dataclass
class Shared:
    size: int = setting(4, min=1, help="shared by a and b")


@dataclass
class AConfig:
    n: int = setting(2, min=0, max=10, help="how many items a writes")


@dataclass
class DConfig:
    word: str = setting("hi", help="what d writes")

    def validate_against(self, root):
        if self.word == "bad" and root.shared.size > 1:
            from pipeline.config import ConfigError

            raise ConfigError("d.word: 'bad' needs shared.size 1")


def _writer(tag):
    def run(ctx):
        out = {"stage": ctx.stage, "tag": tag, "fingerprint": ctx.fingerprint}
        write_json(ctx.paths.stage_dir / "out.json", out)
        ctx.say(f"[{ctx.stage}] wrote {tag}")
        return out
    return run


REGISTRY = Registry(
    stages=[
        Stage("a", _writer("A"), config=AConfig, reads=("seed", "shared", "a"), makes="a/out.json"),
        Stage("b", _writer("B"), needs=("a",), reads=("shared.size",), makes="b/out.json",
              left_out=lambda cfg: "d.word is 'no-b'" if cfg.d.word == "no-b" else None),
        Stage("c", _writer("C"), needs=("b",), makes="c/out.json"),
        Stage("d", _writer("D"), config=DConfig, needs=("b",), reads=("d.word",), makes="d/out.json"),
    ],
    shared=[Section("shared", Shared, "shared settings")],
    renamed={"old_a": "a"},
)
