"""How a stage's run ends when it does not finish: the exceptions the runner (dag), the launcher and a
grid stage's point runs (grid) share. A leaf: it imports nothing of the runner."""
from __future__ import annotations


class StageStopped(RuntimeError):
    """A training stage stopped on a signal after writing its checkpoint."""


class GridIncomplete(RuntimeError):
    """The points asked for are done, others of the grid are not (yet): the stage stays partial."""

    def __init__(self, stage: str, done: list[str], missing: list[str]):
        super().__init__(f"{len(done)} of {len(done) + len(missing)} points done; not yet: {', '.join(missing)}")
        self.stage, self.done, self.missing = stage, done, missing
