"""This project's checkpoint files (transfer, resume) and the one ``torch.save`` / ``torch.load`` of the project.

Three kinds, told apart by a format tag:

- *transfer* (``cartoon-stylegan/transfer-v1``): the weights another run starts from
  (G, D, G_ema state dicts + the configs that rebuild them + a meta dict);
- *resume* (``cartoon-stylegan/resume-v1``): this run's exact state (any plain dict
  of tensors, numbers, strings, lists, dicts);
- rosinality's training checkpoints (``{"g", "d", "g_ema", "g_optim", "d_optim",
  "args"}``) and his ``convert_weight.py`` outputs: ``rosinality.py`` (:func:`import_rosinality`),
  through :func:`load_file` here.

Every load uses ``weights_only=True``; the only class ever allowed besides tensors and
containers is ``argparse.Namespace``, and only while reading rosinality files (``rosinality.py``). Writes
go to a temporary file in the target directory, are fsync'ed, then renamed over the
target, so a crash leaves either the old file or the new one.
"""
from __future__ import annotations

import inspect
import os
import pickle
import re
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.checkpoint.scan import PickleRefused, scan_pickles
from toolbox import atomic_path

TRANSFER_FORMAT = "cartoon-stylegan/transfer-v1"
RESUME_FORMAT = "cartoon-stylegan/resume-v1"
_MAX_LISTED = 20


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the module: lists missing/unexpected keys and shape clashes."""

    def __init__(self, what: str, missing=(), unexpected=(), shapes=(), config_diff=()):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.shapes, self.config_diff = list(shapes), list(config_diff)
        lines = [f"{what} does not match the checkpoint:"]
        sections = (
            ("config differs", [f"{k}: checkpoint {a!r} vs expected {b!r}" for k, a, b in self.config_diff]),
            ("shape mismatch", [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shapes]),
            ("missing in checkpoint", self.missing),
            ("unexpected in checkpoint", self.unexpected),
        )
        for title, items in sections:
            if items:
                shown = ", ".join(items[:_MAX_LISTED])
                more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
                lines.append(f"  {title} ({len(items)}): {shown}{more}")
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------- writing
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then os.replace onto ``path`` (and fsync
    the folder: the rename survives a crash) -- toolbox.atomic_path, durable."""
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def unwrap(module: nn.Module) -> nn.Module:
    """The bare model inside DDP / accelerate (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class CheckpointRefused(pickle.UnpicklingError, ValueError):
    """A file the weights-only reader (or the opcode walk before it) refuses; one line naming why. An
    UnpicklingError as torch's own, and a ValueError as every other 'this file cannot be used'."""


def load_file(path: str | os.PathLike, map_location: Any = "cpu", hint: str = "", mmap: bool = False) -> Any:
    try:
        scan_pickles(path)  # a pickle nested deep enough to crash the unpickler never reaches it
    except PickleRefused as e:
        raise CheckpointRefused(str(e)) from None
    try:
        with warnings.catch_warnings():  # a plain pickle (NVlabs') makes torch warn before it refuses it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(os.fspath(path), map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointRefused(f"{os.fspath(path)}: {refusal(e)}{hint}") from e


def refusal(e: BaseException) -> str:
    """One line for the weights-only loader's refusal: what the file would have run or imported. torch's
    own message is a paragraph whose point (the global it refused) comes last."""
    text = " ".join(str(e).split())
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
    if m:
        return (f"holds Python objects that would import or run {m.group(1)} when loaded; refused (only tensors, "
                "numbers, strings and plain containers are read; load it elsewhere only if you trust its source, "
                "and save its state dicts)")
    return f"refused by the weights-only loader: {text[:300]}"


def _format_of(obj: Any) -> str | None:
    return obj.get("format") if isinstance(obj, dict) else None


# ---------------------------------------------------------------------- compatibility
def state_diff(module: nn.Module, state: Mapping[str, torch.Tensor]):
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def check_compatible(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str | None = None) -> None:
    """Raise :class:`CheckpointMismatch` unless ``state_dict`` has exactly ``module``'s keys and shapes."""
    missing, unexpected, shapes = state_diff(module, state_dict)
    if missing or unexpected or shapes:
        cfg = getattr(module, "config", None)
        name = (what or type(module).__name__) + ("" if cfg is None else f" {cfg}")
        raise CheckpointMismatch(name, missing, unexpected, shapes)


def _norm_config(cls, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with defaults filled in and values in the form ``cls(...).config`` reports."""
    unknown = set(cfg) - set(cls.config_keys())
    if unknown:
        raise ValueError(f"{cls.__name__} config has unknown keys {sorted(unknown)}")
    params = inspect.signature(cls.__init__).parameters
    out = {k: cfg[k] if k in cfg else params[k].default for k in cls.config_keys()}
    if any(v is inspect.Parameter.empty for v in out.values()):
        raise ValueError(f"{cls.__name__} config lacks {[k for k, v in out.items() if v is inspect.Parameter.empty]}")
    out["blur_kernel"] = [float(t) for t in out["blur_kernel"]]
    if "lr_mlp" in out:
        out["lr_mlp"] = float(out["lr_mlp"])
    return out


def build_network(cls, file_cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], what: str,
           expect: Mapping[str, Any] | None = None) -> nn.Module:
    """Build ``cls`` from ``expect`` (or the file's config), check the state dict fits, load strictly."""
    have = _norm_config(cls, file_cfg)
    want = have if expect is None else _norm_config(cls, expect)
    diff = [(k, have[k], want[k]) for k in want if have[k] != want[k]]
    module = cls.from_config(want)
    missing, unexpected, shapes = state_diff(module, state)
    if diff or missing or unexpected or shapes:
        raise CheckpointMismatch(f"{what}: {cls.__name__}({want})", missing, unexpected, shapes, diff)
    module.load_state_dict(state, strict=True)
    return module


# ---------------------------------------------------------------------- transfer
def save_transfer(path: str | os.PathLike, *, g: nn.Module | None, d: nn.Module | None,
                  g_ema: nn.Module | None, meta: dict | None = None) -> None:
    """Write a transfer file: state dicts of g, d, g_ema (any may be None), their configs, ``meta``.

    ``g_config`` comes from g_ema (or g; both must agree), ``d_config`` from d.
    ``meta`` must be plain data (numbers, strings, lists, dicts, tensors).
    """
    g, d, g_ema = (None if m is None else unwrap(m) for m in (g, d, g_ema))
    if g is not None and g_ema is not None and g.config != g_ema.config:
        raise ValueError(f"save_transfer: g config {g.config} differs from g_ema config {g_ema.config}")
    gsrc = g_ema if g_ema is not None else g
    atomic_save({
        "format": TRANSFER_FORMAT,
        "g_config": None if gsrc is None else gsrc.config,
        "d_config": None if d is None else d.config,
        "g": None if g is None else _cpu_state(g),
        "d": None if d is None else _cpu_state(d),
        "g_ema": None if g_ema is None else _cpu_state(g_ema),
        "meta": dict(meta or {}),
    }, path)


def load_transfer(path: str | os.PathLike, *, expect_g_config: dict | None = None,
                  expect_d_config: dict | None = None, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a transfer file -> {"g", "d", "g_ema", "meta"} with built, strictly loaded modules (or None).

    With ``expect_*_config`` the modules are built from the expected config and the
    file must match it exactly (config values, key names and tensor shapes), else
    :class:`CheckpointMismatch` names every difference.
    """
    ck = load_file(path, map_location, " (a rosinality checkpoint? use import_rosinality)")
    fmt = _format_of(ck)
    if fmt != TRANSFER_FORMAT:
        hint = ("a resume file: use load_resume" if fmt == RESUME_FORMAT else
                "looks like a rosinality checkpoint: use import_rosinality"
                if isinstance(ck, dict) and ("g_ema" in ck or "g" in ck) else "unknown content")
        raise ValueError(f"{os.fspath(path)} is not a transfer checkpoint (format {fmt!r}; {hint})")
    out: dict[str, Any] = {"meta": ck.get("meta") or {}}
    for key in ("g", "g_ema"):
        out[key] = None if ck[key] is None else build_network(
            Generator, ck["g_config"], ck[key], f"{os.fspath(path)}:{key}", expect_g_config)
    out["d"] = None if ck["d"] is None else build_network(
        Discriminator, ck["d_config"], ck["d"], f"{os.fspath(path)}:d", expect_d_config)
    return out


# ---------------------------------------------------------------------- resume
def save_resume(path: str | os.PathLike, state: dict) -> None:
    """Write this run's exact state (plain dict; numpy arrays must be converted to tensors/lists)."""
    if not isinstance(state, dict):
        raise TypeError(f"save_resume: state must be a dict, got {type(state).__name__}")
    atomic_save({"format": RESUME_FORMAT, "state": state}, path)


def load_resume(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Read a file written by :func:`save_resume` and return its state dict.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check that the file is
    complete and of this format (a truncated file fails either way).
    """
    ck = load_file(path, map_location, mmap=mmap)
    fmt = _format_of(ck)
    if fmt != RESUME_FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a resume checkpoint (format {fmt!r}; "
                         f"{'a transfer file: use load_transfer' if fmt == TRANSFER_FORMAT else 'unknown content'})")
    return ck["state"]
