"""The checkpoint formats a run can start from: one registry, read by the config (``init.format``'s
choices and help), by the init preflight (which format a wrongly declared file really is) and by
the stages (``stages.models.load_weights``).

Each :class:`Importer` names a function ``fn(path, map_location="cpu") -> {"g", "d", "g_ema", ...}``
returning built modules (None where the file has none) and optionally ``"latent_avg"``. This
module imports nothing heavy: the functions are resolved when first used, so reading a config
does not load torch. Add a format by adding an entry (or calling :func:`register`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Importer", "IMPORTERS", "register", "get", "names", "sniff"]


@dataclass(frozen=True)
class Importer:
    name: str
    target: str            # "module:function"
    help: str              # what files, in a few words (the config's help lists these)
    exact: bool = False    # the file records the full architecture (our own transfer format)

    @property
    def load(self) -> Callable[..., dict[str, Any]]:
        mod, fn = self.target.split(":")
        return getattr(importlib.import_module(mod), fn)


IMPORTERS: dict[str, Importer] = {}


def register(importer: Importer) -> Importer:
    if importer.name in IMPORTERS:
        raise ValueError(f"checkpoint format {importer.name!r} is registered twice")
    IMPORTERS[importer.name] = importer
    return importer


register(Importer("native", "cartoon_stylegan.checkpoint:load_transfer",
                  "this project's transfer file (network-final.pt)", exact=True))
register(Importer("rosinality", "cartoon_stylegan.checkpoint:import_rosinality",
                  "a .pt of rosinality's stylegan2-pytorch (train.py, convert_weight.py) or the Cartoon-StyleGAN repo"))
register(Importer("nvlabs", "cartoon_stylegan.checkpoint.nvlabs:import_nvlabs",
                  "a .pkl of NVlabs' stylegan2-ada-pytorch / stylegan3 with a StyleGAN2 network (read without "
                  "running it)"))


def get(name: str) -> Importer:
    try:
        return IMPORTERS[name]
    except KeyError:
        raise ValueError(f"unknown checkpoint format {name!r}; known: {', '.join(IMPORTERS)}") from None


def names() -> tuple[str, ...]:
    return tuple(IMPORTERS)


def sniff(path, skip: str | None = None, reasons: dict | None = None) -> tuple[str | None, dict | None]:
    """(name, networks) of the first registered format that reads ``path`` (registration order, ``skip``
    left out), or (None, None). The networks are what that importer returned: no need to read it again.
    A plain pickle nested deep enough to crash an unpickler (``torch.load``'s too) is none: (None, None).
    ``reasons``: filled with {format: why it could not read the file} (one line each)."""
    import warnings

    from cartoon_stylegan.checkpoint.scan import PickleRefused, scan_pickles

    try:
        scan_pickles(path)
    except (PickleRefused, OSError) as e:
        if reasons is not None:
            reasons["any"] = " ".join(str(e).split())
        return None, None
    for imp in IMPORTERS.values():
        if imp.name == skip:
            continue
        try:
            with warnings.catch_warnings():  # a wrong guess may warn (e.g. torch on a plain pickle)
                warnings.simplefilter("ignore")
                return imp.name, imp.load(path)
        except Exception as e:  # noqa: BLE001 -- any failure means "not this format"
            if reasons is not None:
                reasons[imp.name] = " ".join(str(e).split())[:400] or type(e).__name__
            continue
    return None, None
