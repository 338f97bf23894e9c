"""Declared settings: a dataclass field carries its help text and accepted range, checked in one place.

A setting is declared once, where it is used (e.g. `training.LoopOptions`), with
:func:`setting`; everything else is derived from that declaration: the range checks
(:func:`check_value`, :func:`check_fields`), the config schema that the pipeline's loader
reads (plain ``dataclasses.Field.metadata``: ``help``, ``min``, ``max``, ``choices``,
``pow2``, ``length``), and copies of a group of settings (:func:`derive`): a stage's
config section without the fields its caller sets, or an all-optional copy for
per-variant overrides.

No ``assert``: the checks raise :class:`SettingError` (``python -O`` would strip asserts).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Optional, get_type_hints

__all__ = ["SettingError", "setting", "check_value", "check_fields", "derive", "overrides_of"]

_CHECKS = ("min", "max", "choices", "pow2", "length")


class SettingError(ValueError):
    """A setting value that is not accepted; the message names the key, the value and what is expected."""


_NOT_LATER = object()


def setting(default=dataclasses.MISSING, *, help: str = "", factory=None, later=_NOT_LATER, **checks) -> Any:
    """A dataclass field with a help text and range checks (min, max, choices, pow2, length).

    ``later``: the setting was added after runs existed, and this value (or None: not set) behaves as
    before it existed. Records of what a run is -- a stage's fingerprint, a training dir's lineage --
    leave it out at that value (:func:`is_old_behaviour`), so adding a setting never makes finished
    work look changed."""
    unknown = set(checks) - set(_CHECKS)
    if unknown:
        raise TypeError(f"setting(): unknown check(s) {sorted(unknown)}; known: {list(_CHECKS)}")
    meta = {"help": help, **checks}
    if later is not _NOT_LATER:
        meta["later"] = later
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _check_scalar(m, value, key: str) -> None:
    if "choices" in m and value not in m["choices"]:
        raise SettingError(f"{key}: {value!r} is not one of {list(m['choices'])}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError(f"{key}: {value!r} is not a finite number")
    if "min" in m and value < m["min"]:
        raise SettingError(f"{key}: {value!r} is below the minimum {m['min']}")
    if "max" in m and value > m["max"]:
        raise SettingError(f"{key}: {value!r} is above the maximum {m['max']}")
    if m.get("pow2") and (value < 1 or int(value) & (int(value) - 1)):
        raise SettingError(f"{key}: {value!r} is not a power of two")


def check_value(field: dataclasses.Field, value, key: str) -> None:
    """Raise SettingError naming ``key`` if ``value`` is outside the field's declared range.

    For a list or tuple, ``length`` checks its length and the other checks apply to each item.
    """
    if value is None:
        return
    m = field.metadata
    if isinstance(value, (list, tuple)):
        if "length" in m and len(value) != m["length"]:
            raise SettingError(f"{key}: {list(value)!r} must have {m['length']} entries")
        for i, v in enumerate(value):
            _check_scalar(m, v, f"{key}[{i}]")
        return
    _check_scalar(m, value, key)


def is_old_behaviour(field: dataclasses.Field, value) -> bool:
    """True for a setting declared with ``later=`` whose value behaves as before it existed."""
    return "later" in field.metadata and (value is None or value == field.metadata["later"])


def check_fields(obj, prefix: str = "") -> None:
    """Check every declared field of the dataclass instance ``obj`` (for ``__post_init__``)."""
    for f in dataclasses.fields(obj):
        check_value(f, getattr(obj, f.name), f"{prefix}{f.name}")


def derive(cls, name: str, *, exclude: Iterable[str] = (), optional: bool = False,
           extra: Iterable[tuple[str, Any, dataclasses.Field]] = (), doc: str | None = None,
           module: str | None = None):
    """A new dataclass with ``cls``'s declared fields (same help and ranges), less ``exclude``.

    ``optional=True``: every copied field becomes ``Optional[...]`` with default None ("not
    set": a per-variant override). ``extra``: (name, type, field) triples appended or
    replacing a copied field of that name. The copy does not inherit ``cls``'s methods:
    it is a schema, turned back into ``cls`` by the caller.
    """
    hints = get_type_hints(cls)
    skip = set(exclude)
    extra = list(extra)
    replaced = {n for n, _, _ in extra}
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in replaced or not f.init:
            continue
        tp = hints[f.name]
        if optional:
            specs.append((f.name, Optional[tp], dataclasses.field(default=None, metadata=f.metadata)))
        else:
            kw = ({"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING
                  else {"default": f.default})
            specs.append((f.name, tp, dataclasses.field(metadata=f.metadata, **kw)))
    specs += extra
    out = dataclasses.make_dataclass(name, specs)
    out.__doc__ = doc or f"{cls.__name__} settings" + (" (all optional: overrides)" if optional else "")
    if module:
        out.__module__ = module
    return out


def overrides_of(obj, names: Iterable[str]) -> dict:
    """The fields of ``obj`` among ``names`` that are set (not None): an optional copy's overrides."""
    return {n: getattr(obj, n) for n in names if getattr(obj, n, None) is not None}
