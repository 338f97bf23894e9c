"""Stage registry (needs / makes / config sections), ordering, fingerprints, skip-if-done.

A stage is up to date when the fingerprint of (its resolved config sections, the
fingerprints and finish times of the stages it needs, the package version) equals the one
recorded in ``<stage dir>/stage.json`` when it last finished.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import time
import traceback
from dataclasses import dataclass
from datetime import datetime

from pipeline import artifacts
from pipeline.config import to_dict

EXIT_OK, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3


@dataclass(frozen=True)
class Stage:
    name: str
    module: str                 # "stages.shard": has run(ctx)
    needs: tuple[str, ...]
    sections: tuple[str, ...]   # dotted config keys that feed the fingerprint
    makes: str                  # what it writes, for `list`
    distributed: bool = False   # run through the launcher (accelerate) when >1 process


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("shard", "stages.shard", (), ("seed", "data.resolution", "data.source", "data.target", "shard"),
          "shard/<dataset>/*.tar + manifest.json"),
    Stage("pretrain", "stages.pretrain", ("shard",), ("seed", "data", "model", "train"),
          "pretrain/checkpoints/network-final.pt", distributed=True),
    Stage("finetune", "stages.finetune", ("pretrain",), ("seed", "data", "model", "finetune"),
          "finetune/<variant>/checkpoints/network-final.pt", distributed=True),
    Stage("swap", "stages.swap", ("finetune",), ("seed", "swap"), "swap/<variant>-<kind>.png"),
    Stage("eval", "stages.evaluate", ("finetune",), ("seed", "eval"), "eval/metrics.json"),
)}


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r} failed: {message}")
        self.stage = stage


class StageStopped(RuntimeError):
    """A training stage stopped on a signal after writing its checkpoint."""


def plan(targets) -> list[str]:
    """The stages needed for ``targets`` ("all" or names), dependencies first, registry order."""
    if not targets or list(targets) == ["all"]:
        return list(STAGES)
    want = set()

    def visit(name):
        if name not in STAGES:
            import difflib
            close = difflib.get_close_matches(name, list(STAGES) + ["all"], n=1)
            raise KeyError(f"unknown stage {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                           + f" (stages: {', '.join(STAGES)}, or all)")
        if name not in want:
            want.add(name)
            for dep in STAGES[name].needs:
                visit(dep)

    for t in targets:
        visit(t)
    return [n for n in STAGES if n in want]


def _section(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return to_dict(obj)


def fingerprint(cfg, name: str) -> str:
    from cartoon_stylegan import __version__

    st = STAGES[name]
    deps = {}
    for dep in st.needs:
        state = read_state(cfg, dep)
        deps[dep] = [state.get("fingerprint"), state.get("finished")]
    blob = {"stage": name, "config": {s: _section(cfg, s) for s in st.sections},
            "inputs": deps, "version": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_state(cfg, name: str) -> dict:
    return artifacts.read_json(artifacts.StagePaths(cfg, name).state_file, {}) or {}


def write_state(cfg, name: str, **fields) -> dict:
    paths = artifacts.StagePaths(cfg, name).ensure()
    state = {**read_state(cfg, name), **fields}
    artifacts.write_json(paths.state_file, state)
    return state


def status(cfg, name: str) -> str:
    """done | stale | never run | failed | stopped | running."""
    state = read_state(cfg, name)
    if not state:
        return "never run"
    if state.get("status") == "done":
        fresh = state.get("fingerprint") == fingerprint(cfg, name)
        return "done" if fresh and all(status(cfg, d) == "done" for d in STAGES[name].needs) else "stale"
    return state.get("status", "never run")


def load_stage_module(name: str):
    return importlib.import_module(STAGES[name].module)


def fmt_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def run(cfg, targets, *, force=False, execute, say=print) -> int:
    """Run the plan for ``targets``. ``execute(name, fingerprint, previous_state) -> result`` runs one stage.

    Returns an exit code: 0 all done, 1 a stage failed (dependents not run), 3 stopped by a signal.
    """
    order = plan(targets)
    everything = not targets or list(targets) == ["all"]
    forced = set() if not force else set(order) if everything else set(targets)
    for name in order:
        fp = fingerprint(cfg, name)
        state = read_state(cfg, name)
        if name not in forced and state.get("status") == "done" and state.get("fingerprint") == fp:
            say(f"[{name}] up to date (fingerprint {fp}, finished {state.get('finished_at', '?')}); skipped")
            continue
        reason = ("forced" if name in forced else "never run" if not state else
                  f"previous run {state.get('status')}" if state.get("status") != "done" else "inputs or config changed")
        say(f"[{name}] running ({reason})")
        start = time.time()
        write_state(cfg, name, status="running", fingerprint=fp, started=start,
                    started_at=datetime.now().isoformat(timespec="seconds"), error=None)
        try:
            result = execute(name, fp, state)
        except StageStopped as e:
            write_state(cfg, name, status="stopped", duration=time.time() - start, error=str(e))
            say(f"[{name}] stopped: {e}")
            return EXIT_STOPPED
        except KeyboardInterrupt:
            write_state(cfg, name, status="failed", duration=time.time() - start, error="interrupted (Ctrl-C)")
            say(f"[{name}] interrupted; run again to continue from this stage")
            return EXIT_FAILED
        except Exception as e:  # noqa: BLE001 -- any stage error stops the plan, named
            msg = f"{type(e).__name__}: {e}"
            write_state(cfg, name, status="failed", duration=time.time() - start, error=msg,
                        traceback=traceback.format_exc())
            rest = order[order.index(name) + 1:]
            say(f"[{name}] FAILED: {msg}")
            if rest:
                say(f"  not run: {', '.join(rest)} (they depend on {name}); "
                    f"fix it and run again: finished stages are kept")
            return EXIT_FAILED
        now = time.time()
        write_state(cfg, name, status="done", fingerprint=fp, finished=now,
                    finished_at=datetime.now().isoformat(timespec="seconds"), duration=now - start,
                    result=result)
        say(f"[{name}] done in {fmt_duration(now - start)}")
    return EXIT_OK
