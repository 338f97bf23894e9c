"""YAML + dotted overrides -> typed, validated config dataclasses.

All validation happens here, for every section, before any stage starts:
an unknown key (with the closest valid key), a wrong type or an out-of-range value
is a :class:`ConfigError` naming the dotted key, the value and what is accepted.

Sections are plain dataclasses declared by their owners (the stages, the library's
settings groups, the runner); a field's ``metadata`` may carry ``help``, ``min``, ``max``,
``choices``, ``pow2`` (power of two) and ``length``, checked by
:func:`toolbox.settings.check_value` (one home for range checks). The root
config class comes from the registry the runner is handed (:mod:`pipeline.registry`).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from toolbox.settings import SettingError, check_value, is_old_behaviour, setting

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


ConfigError = SettingError
"""A config value or key that is not accepted; the message names key, value and what is expected."""

spec = setting  # a config field: default, help text and range checks (toolbox.settings.setting)


# --------------------------------------------------------------------------------------
# generic conversion


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, key: str):
    """Convert ``value`` (from YAML) to type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own, more precise message
            return _convert(real[0], value, key)
        for a in real:
            try:
                return _convert(a, value, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}{hint}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping ({tp.__name__}), got {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not a bool (true/false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: {value!r} is not an int")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: {value!r} is not a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: {value!r} is not a string")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")




def unknown_key_error(key: str, name: str, valid) -> ConfigError:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {key.rpartition('.')[0] + '.' if '.' in key else ''}{close[0]}?" if close else ""
    return ConfigError(f"{key}: unknown key{hint} (valid keys: {', '.join(sorted(valid))})")


def from_dict(cls, data: dict, prefix: str = "", use_hook: bool = True):
    """Build dataclass ``cls`` from a mapping, strictly (``cls.__from_config__`` may take over)."""
    hook = getattr(cls, "__from_config__", None) if use_hook else None
    if hook is not None:
        return hook(data, prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in (data or {}).items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise unknown_key_error(key, str(name), fields)
        v = _convert(hints[name], value, key)
        check_value(fields[name], v, key)
        kwargs[name] = v
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix or 'config'}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix + ': ' if prefix and not str(e).startswith(prefix) else ''}{e}") from None


def to_record(obj) -> Any:
    """:func:`to_dict` less the settings added later at their old behaviour (``setting(later=...)``):
    what a fingerprint or a lineage records of a config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_record(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not is_old_behaviour(f, getattr(obj, f.name))}
    if isinstance(obj, dict):
        return {k: to_record(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_record(v) for v in obj]
    return obj


def to_dict(obj) -> Any:
    """Plain, YAML/JSON-able view of a config object."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------
# YAML: 1.2-style booleans (only true/false), so keys like `on:` and values like `no` stay strings


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars where 1.1 surprises: only true/false are booleans, ``2e-3`` is a float."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}, again at line "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:bool",
                                                                                  "tag:yaml.org,2002:float",
                                                                                  "tag:yaml.org,2002:int")]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
    [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
   |[-+]?\.(?:inf|Inf|INF)
   |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


# ints: decimal without leading zeros (with _) and 0x hex; no YAML 1.1 sexagesimal (a time limit 4:00:00
# stays a string, not 14400) and no 0-prefixed octal. Every string that yaml.safe_dump writes unquoted
# (it follows YAML 1.1: "0809", "0o17", "4:00:00") therefore reads back as the same string.
_Loader.add_implicit_resolver("tag:yaml.org,2002:int",
                              re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F][0-9a-fA-F_]*)$"),
                              list("-+0123456789"))


def _int_12(loader, node):
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 16) if text.startswith("0x") else int(text, 10)


_Loader.add_constructor("tag:yaml.org,2002:int", _int_12)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


# --------------------------------------------------------------------------------------
# overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.kimg=2")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key part in {key!r}")
    try:
        value = yaml_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({e.problem})") from None
    return key.split("."), value


def apply_override(tree: dict, parts: list[str], value) -> None:
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def load_yaml(path: Path, _chain: tuple = ()) -> dict:
    """A config file as a mapping, its ``extends:`` parent (a path relative to it) merged under it."""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"config file {path}: `extends` goes round in a circle ({cycle})")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file, e.g. configs/default.yaml")
    if not path.is_file():
        why = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {why}" + (f" (extended by {_chain[-1]})" if _chain else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty (an empty file would silently mean every built-in "
                          f"default; write at least `experiment: NAME`, or `extends: default.yaml`)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"config file {path}: extends: {base!r} must be one file name (a string)")
        parent = load_yaml((path.parent / Path(base).expanduser()).resolve(), (*_chain, path.resolve()))
        data = deep_merge(parent, data)
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def rename_sections(tree: dict, renamed: dict[str, str], where: str) -> dict:
    """Move deprecated top-level sections to their new names (one note each on stderr)."""
    for old, new in renamed.items():
        if old in tree:
            if new in tree:
                raise ConfigError(f"{where}: both {old!r} (the old name) and {new!r} are given; "
                                  f"keep only {new!r}")
            print(f"note: {where}: config section {old!r} is now {new!r}; the old name will be refused "
                  f"in the next release", file=sys.stderr)
            tree[new] = tree.pop(old)
    return tree


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), *, registry):
    """Load a config file (default: the registry's, configs/default.yaml for the shipped one), apply
    dotted overrides, validate against ``registry``'s root config (see :func:`pipeline.registry.load`)."""
    path = Path(path) if path else registry.default_config
    if path is not None and path == registry.default_config and not path.is_file():
        raise ConfigError(f"no --config given, and the default config ({path.parent.name}/{path.name} of the "
                          f"repository) is not part of this installation (installed from a wheel?); "
                          f"pass --config FILE")
    tree = rename_sections(load_yaml(path) if path else {}, registry.renamed, str(path or "defaults"))
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] in registry.renamed:
            rename_sections({parts[0]: None}, registry.renamed, f"override {text!r}")
            parts = [registry.renamed[parts[0]], *parts[1:]]
        apply_override(tree, parts, value)
    if registry.resolve is not None:
        tree = registry.resolve(tree)
    cfg = from_dict(registry.root, tree)
    cfg.config_path = str(path or "")
    return cfg
