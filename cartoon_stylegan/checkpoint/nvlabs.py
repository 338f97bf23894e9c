"""Import StyleGAN2 networks from NVlabs pickles (stylegan2-ada-pytorch, stylegan3) without running them.

Their ``network-snapshot-*.pkl`` files are plain pickles of ``{"G", "D", "G_ema",
"augment_pipe", "training_set_kwargs"}`` whose networks are ``torch_utils.persistence``
classes: each one is stored as a call ``_reconstruct_persistent_obj(meta)`` with
``meta = {type, version, module_src, class_name, state}``, where ``module_src`` is the
Python source of the module that defined the class and ``state`` the module's ``__dict__``
(``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, plain attributes). Loading one
with ``pickle`` *executes* ``module_src``.

Here a restricted unpickler resolves only the globals such a file needs (the reconstruct hook,
``OrderedDict``, torch's tensor/parameter rebuilders, the storage loader -- itself read with
``torch.load(weights_only=True)`` --, numpy scalars, ``dnnlib.EasyDict``) and refuses every
other one with a message naming it. The reconstruct hook is replaced by one that returns an
inert :class:`Record` (class name + state); ``module_src`` is never executed or compiled.

The records are then mapped onto this project's (rosinality-layout) networks:

======================================  ==========================================
NVlabs (``G``, ``G_ema``)               ours
======================================  ==========================================
mapping.fc{i}.weight / .bias            style.{i+1}.weight / .bias
mapping.w_avg                           the truncation centre (sampling)
synthesis.b4.const (C, 4, 4)            input.input (1, C, 4, 4)
synthesis.b4.conv1                      conv1
synthesis.b4.torgb                      to_rgb1
synthesis.b{2**(j+3)}.conv0 / .conv1    convs.{2j} / convs.{2j+1}
synthesis.b{2**(j+3)}.torgb             to_rgbs.{j}
<layer>.weight (O, I, k, k)             <layer>.conv.weight (1, O, I, k, k)
<layer>.affine.weight / .bias           <layer>.conv.modulation.weight / .bias
<layer>.noise_strength ()               <layer>.noise.weight (1,)
<layer>.noise_const (r, r)              noises.noise_{n} (1, 1, r, r)
<layer>.bias (O,)  [torgb: (3,)]        <layer>.activate.bias (O,)  [ToRGB: bias (1, 3, 1, 1)]
*.resample_filter (normalised 4x4)      checked to be [1,3,3,1]; ours builds its blur kernels
======================================  ==========================================

``D``: ``b{size}.fromrgb`` -> ``convs.0``; block ``b{r}`` -> ``convs.{i}`` (conv0 -> conv1,
conv1 -> conv2, skip -> skip); ``b4.conv / .fc / .out`` -> ``final_conv`` / ``final_linear.0 / .1``.

Both projects store unscaled weights (equalised learning rate: the gains 1/sqrt(fan_in) and the
mapping's lr multiplier are applied in the forward pass), use the same padding and filter
arithmetic for the up/down-sampling convolutions and take W+ entries in the same order, so the
tensors are copied unchanged. The one arithmetic difference: both demodulate with eps 1e-8, NVlabs
added to the sum over the *unscaled* modulated weight, rosinality (and we) after the 1/sqrt(fan_in)
gain -- a relative difference of about 1e-8, far below float32 rounding (``benchmarks/nvlabs_parity.py`` compares
images and logits with NVlabs' own code). What has no counterpart here is refused with the
reason: StyleGAN3 (alias-free) generators, conditional networks (``c_dim > 0``), other
architectures (``orig``/``resnet`` G, ``orig``/``skip`` D), other filters, minibatch-std other
than group 4 / 1 channel (for D alone: the generator is still imported, with a warning, and a run
starting from the file gets a fresh D). ``conv_clamp`` (activations clamped to +-256, set by stylegan2-ada's
training configs) is not part of our networks: it is dropped, with a warning (it only changes an
image where an activation exceeds the clamp).

A hostile file cannot make the reader allocate or recurse without bound: before ``pickle`` reads it,
its opcodes are walked once (streaming, no objects built) and a file nested deeper than
:data:`~cartoon_stylegan.checkpoint.scan.MAX_DEPTH` (CPython hashes a nested tuple recursively in C: a 200 KB dict key of nested tuples
overflows the C stack), with more than :data:`MAX_OPS` opcodes or larger than :data:`MAX_FILE_BYTES`
is refused; each storage's bytes are walked the same way before ``torch.load`` sees them. A
tensor is not made while the pickle is read: the rebuild call returns an inert record (a BUILD
opcode after it -- torch's ``Tensor.__setstate__`` would ``set_`` any size over the storage -- is
refused), and only after loading is each record checked against its storage and the element caps
(:data:`MAX_TENSOR_ELEMENTS`, and in all no more elements than the file has bytes) and made a tensor.
"""
from __future__ import annotations

import io
import math
import operator
import os
import pickle
import warnings
from collections import OrderedDict
from typing import Any

import torch

from cartoon_stylegan.checkpoint.scan import MAX_DEPTH, MAX_FILE_BYTES, PickleRefused, Window, scan_pickle

__all__ = ["import_nvlabs", "read_nvlabs_pickle", "Record", "NVlabsImportError", "KNOWN_CLASSES"]


class NVlabsImportError(PickleRefused):
    """The file is not an NVlabs StyleGAN2 pickle we can import (one line saying why)."""


# Persistent classes of stylegan2-ada-pytorch's training/networks.py and stylegan3's
# networks_stylegan2.py / networks_stylegan3.py / augment.py. Records of these become inert
# Records; any other class name is refused.
STYLEGAN2_CLASSES = frozenset({
    "Generator", "MappingNetwork", "FullyConnectedLayer", "SynthesisNetwork", "SynthesisBlock",
    "SynthesisLayer", "ToRGBLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock",
    "DiscriminatorEpilogue", "MinibatchStdLayer"})
OTHER_CLASSES = frozenset({"AugmentPipe", "SynthesisInput"})
KNOWN_CLASSES = STYLEGAN2_CLASSES | OTHER_CLASSES


class Record:
    """An inert stand-in for one persistent object: its class name and pickled state (never run)."""

    __slots__ = ("class_name", "state", "source_chars")

    def __init__(self, class_name: str, state: dict, source_chars: int):
        self.class_name, self.state, self.source_chars = class_name, state, source_chars

    def __repr__(self) -> str:
        return f"Record({self.class_name})"

    # the parts of an nn.Module's __dict__
    def children(self) -> "OrderedDict[str, Record]":
        mods = self.state.get("_modules") or {}
        return OrderedDict((k, v) for k, v in mods.items() if v is not None)

    def child(self, name: str) -> "Record | None":
        return self.children().get(name)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for group in ("_parameters", "_buffers"):
            for k, v in (self.state.get(group) or {}).items():
                if v is not None:
                    out[k] = v
        return out

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def flat(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """All tensors below this record, named as NVlabs' ``state_dict()`` names them."""
        out = {prefix + k: v for k, v in self.tensors().items()}
        for name, rec in self.children().items():
            if isinstance(rec, Record):
                out.update(rec.flat(f"{prefix}{name}."))
        return out


# ------------------------------------------------------------------------------ unpickling
class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access)."""


def _reconstruct(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise NVlabsImportError("a persistent-object record that is not a class instance (type "
                                f"{meta.get('type') if isinstance(meta, dict) else type(meta).__name__!r})")
    name = meta["class_name"]
    if name not in KNOWN_CLASSES:
        raise NVlabsImportError(f"refuses persistent class {name!r}: not a class of NVlabs' StyleGAN2/3 "
                                "networks (nothing from the file was run)")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise NVlabsImportError(f"persistent class {name!r} has no state dict")
    src = meta.get("module_src")
    return Record(name, state, len(src) if isinstance(src, str) else 0)


# Bounds on the tensors of a file; the pickle's own bounds (opcodes, nesting) are in pickle_scan.
MAX_TENSOR_ELEMENTS = 2 ** 27  # 32x D.b4.fc at 1024 px / 512 channels; 512 MiB as float32
MAX_DIMS = 8


def _load_storage(data: bytes):
    """A storage from its legacy torch.save bytes (what ``_load_from_bytes`` holds), walked first:
    its pickles call nothing and name no more elements than the bytes can hold."""
    if not isinstance(data, (bytes, bytearray)):
        raise NVlabsImportError("a tensor storage record without bytes")
    if data[:2] == b"PK":
        raise NVlabsImportError("a tensor storage in torch's zip format (NVlabs pickles hold the legacy format)")
    f = Window(io.BytesIO(data), len(data))
    try:
        for i in range(5):  # magic number, protocol, sys_info, the storage's record, its keys
            scan_pickle(f, storage=True, max_int=len(data) if i == 3 else None)
    except PickleRefused as e:
        raise NVlabsImportError(str(e)) from None
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 -- torch's legacy reader asserts on bad keys (found by the fuzz test)
        raise NVlabsImportError(f"a tensor storage torch cannot read ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise NVlabsImportError(f"a tensor storage record holding a {type(storage).__name__}, not a storage")
    with warnings.catch_warnings():  # TypedStorage is deprecated, and what the legacy format holds
        warnings.simplefilter("ignore")
        nbytes = storage.nbytes()
    if nbytes > len(data):
        raise NVlabsImportError(f"a tensor storage of {nbytes} bytes from a record of {len(data)}")
    return storage


class _TensorRecord:
    """What a tensor rebuild call in the file asked for. It becomes a tensor only after the whole
    file is read and its size, stride and offset are checked (:class:`_TensorMaker`); until then
    no tensor exists that a BUILD opcode could re-shape."""

    __slots__ = ("storage", "offset", "size", "stride", "build")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride, self.build = storage, offset, size, stride, None

    def __setstate__(self, state):
        # a BUILD opcode after the rebuild call: torch's Tensor.__setstate__ would set_(storage, offset,
        # size, stride) from the state, unchecked. Kept (never applied) to refuse the tensor by its name.
        self.build = state if isinstance(state, tuple) else (state,)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    """torch's _rebuild_tensor_v2, deferred: a :class:`_TensorRecord` (checked and made a tensor after loading)."""
    if backward_hooks:
        raise NVlabsImportError("a tensor with backward hooks (code) attached")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise NVlabsImportError(f"a tensor over a {type(storage).__name__}, not a typed storage")
    return _TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if backward_hooks:
        raise NVlabsImportError("a parameter with backward hooks (code) attached")
    return data


def _np_scalar(dtype, data=None):
    import numpy as np

    dt = np.dtype(dtype.str)  # rebuilt from its type code: a BUILD opcode cannot have changed its flags
    if dt.kind not in "biuf" or not isinstance(data, (bytes, bytearray)) or len(data) != dt.itemsize:
        raise NVlabsImportError(f"refuses numpy scalar of dtype {dtype}")
    return np.frombuffer(data, dtype=dt)[0].item()


def _np_dtype(*args):
    import numpy as np

    if not args or not isinstance(args[0], str) or args[0][:1] not in "biuf":
        raise NVlabsImportError(f"refuses numpy dtype {args[:1]!r} (numbers only)")
    return np.dtype(args[0])


def _allowed() -> dict[tuple[str, str], Any]:
    allow: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set, ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("numpy", "dtype"): _np_dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # NVlabs store numpy float64 gains
        allow[(mod, "scalar")] = _np_scalar
    return allow


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str):
        super().__init__(f)
        self._path, self._allow = path, _allowed()

    def find_class(self, module: str, name: str):
        fn = self._allow.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # vars: no lazy submodule import
            return vars(torch)[name]
        if module.startswith("dnnlib.tflib"):
            raise NVlabsImportError(f"{self._path}: a TensorFlow StyleGAN/StyleGAN2 pickle ({module}.{name}); "
                                    "convert it with NVlabs' stylegan2-ada-pytorch legacy.py first")
        raise NVlabsImportError(f"{self._path}: refuses {module}.{name}: not part of an NVlabs network pickle "
                                "(nothing from the file was run)")

    def persistent_load(self, pid):
        raise NVlabsImportError(f"{self._path}: unexpected persistent id {pid!r} (a torch.save file, not an "
                                "NVlabs pickle? try format rosinality or native)")


def _ints(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list, torch.Size)) or len(values) > MAX_DIMS:
        raise NVlabsImportError(f"{what} {values!r:.80} is not a tuple of at most {MAX_DIMS} integers")
    try:
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise NVlabsImportError(f"{what} {values!r:.80} is not a tuple of integers") from None


class _TensorMaker:
    """Makes each :class:`_TensorRecord` a tensor once its size, stride and offset fit its storage, it
    has at most :data:`MAX_TENSOR_ELEMENTS` elements and all tensors together no more elements than the
    file has bytes (every element takes one byte or more; more would mean storages read many times)."""

    def __init__(self, file_bytes: int):
        self.budget, self.total = max(file_bytes, 0), 0

    def __call__(self, rec: _TensorRecord, where: str) -> torch.Tensor:
        if rec.build is not None:
            asked = f" (size {rec.build[2]!r:.60} / stride {rec.build[3]!r:.60})" if len(rec.build) == 4 else ""
            raise NVlabsImportError(f"tensor {where}: a BUILD opcode after its rebuild call would re-shape it over "
                                    f"its storage{asked}, unchecked; expected none (torch pickles no tensor state)")
        size, stride = _ints(rec.size, f"tensor {where}: size"), _ints(rec.stride, f"tensor {where}: stride")
        try:
            offset = operator.index(rec.offset)
        except TypeError:
            raise NVlabsImportError(f"tensor {where}: storage offset {rec.offset!r:.40} is not an integer") from None
        with warnings.catch_warnings():  # TypedStorage is deprecated, and what the legacy format holds
            warnings.simplefilter("ignore")
            avail = len(rec.storage)
        n = math.prod(size)
        shape = f"size {size} / stride {stride} / offset {offset}"
        if len(size) != len(stride) or min(size + stride + (offset,)) < 0:
            raise NVlabsImportError(f"tensor {where}: {shape}: expected one stride per size, none negative")
        reach = offset + sum((sz - 1) * st for sz, st in zip(size, stride)) + 1 if n else offset
        if reach > avail or n > avail or any(st == 0 for sz, st in zip(size, stride) if sz > 1):
            raise NVlabsImportError(f"tensor {where}: a tensor of {shape} that its storage ({avail} elements) does "
                                    f"not hold (expected a dense tensor inside it, not stride-0 expanded; it "
                                    f"reaches element {reach})")
        if n > MAX_TENSOR_ELEMENTS:
            raise NVlabsImportError(f"tensor {where}: {shape} has {n:,} elements; expected at most "
                                    f"{MAX_TENSOR_ELEMENTS:,} (StyleGAN2's largest tensor at 1024 px has 4.2M)")
        self.total += n
        if self.total > self.budget:
            raise NVlabsImportError(f"tensor {where}: the tensors so far hold {self.total:,} elements, more than the "
                                    f"file's {self.budget:,} bytes can store (storages reused by many tensors?)")
        return torch._utils._rebuild_tensor_v2(rec.storage, offset, size, stride, False, OrderedDict())


_GROUPS = frozenset({"_parameters", "_buffers", "_modules"})  # left out of a tensor's name, as state_dict() does


def _name(path) -> str:
    parts = []
    while path is not None:
        path, label = path
        parts.append(label)
    name = "".join(reversed(parts)).lstrip(".")
    return name or "(the pickle's top object)"


def _parts(obj) -> list | None:
    """(label, item) of what a tensor record may sit in and be replaced in; None for anything else
    (a record left in a set, a dict key or an attribute stays an inert record, never a tensor)."""
    if isinstance(obj, Record):
        return [("", obj.state)]
    if isinstance(obj, dict):
        return [("" if k in _GROUPS else f".{k}" if isinstance(k, str) else f"[{k!r:.40}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    return None


def _make_tensors(root, make):
    """``root`` with each :class:`_TensorRecord` in its dicts, lists, tuples and Records replaced by
    ``make(record, name)`` (once per record, however often it is reached). Iterative and depth-bounded:
    the loaded objects may nest deeper than the opcode walk counted (lists filled after nesting)."""
    if isinstance(root, _TensorRecord):
        return make(root, _name(None))
    done: dict[int, Any] = {}  # id -> replacement, for records made and containers finished
    alive = [root]  # what done's ids belong to stays referenced, so no id is reused meanwhile
    open_ids = {id(root)}
    todo = [(root, None, iter(_parts(root) or ()))]
    while todo:
        obj, path, items = todo[-1]
        for label, item in items:
            if id(item) in done or id(item) in open_ids:
                continue
            if isinstance(item, _TensorRecord):
                done[id(item)] = make(item, _name((path, label)))
                alive.append(item)
                continue
            sub = _parts(item)
            if sub:
                if len(todo) >= MAX_DEPTH:
                    raise NVlabsImportError(f"objects nested more than {MAX_DEPTH} deep (at {_name((path, label))})")
                open_ids.add(id(item))
                todo.append((item, (path, label), iter(sub)))
                break
        else:
            todo.pop()
            open_ids.discard(id(obj))
            done[id(obj)] = _replaced(obj, done)
            alive.append(obj)
    return done[id(root)]


def _replaced(obj, done: dict[int, Any]):
    """obj with its items swapped for their replacements in ``done`` (dicts, lists, Records in place)."""
    if isinstance(obj, Record):
        obj.state = done.get(id(obj.state), obj.state)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if id(v) in done:
                obj[k] = done[id(v)]
    elif isinstance(obj, list):
        obj[:] = [done.get(id(v), v) for v in obj]
    elif isinstance(obj, tuple) and any(id(v) in done and done[id(v)] is not v for v in obj):
        obj = tuple(done.get(id(v), v) for v in obj)
    return obj


def _check_size(path: str, nbytes: int) -> None:
    if nbytes > MAX_FILE_BYTES:
        raise NVlabsImportError(f"{path}: {nbytes:,} bytes; expected at most {MAX_FILE_BYTES:,} (a 1024 px NVlabs "
                                "snapshot has about 360 MB)")


def read_nvlabs_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """The pickle's top-level dict with every network as a :class:`Record` (no code from the file runs)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        nbytes = os.fstat(f.fileno()).st_size
        _check_size(path, nbytes)
        head = f.read(2)
        if head[:2] == b"PK":
            raise NVlabsImportError(f"{path}: a torch.save zip file, not an NVlabs pickle "
                                    "(use format native or rosinality)")
        f.seek(0)
        try:
            scan_pickle(Window(f, nbytes))  # before pickle builds anything from it
            f.seek(0)
            data = _make_tensors(_RestrictedUnpickler(f, path).load(), _TensorMaker(nbytes))
        except PickleRefused as e:  # NVlabsImportError is one too
            msg = str(e)
            raise NVlabsImportError(msg if msg.startswith(path) else f"{path}: {msg}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError,
                MemoryError, RecursionError) as e:
            raise NVlabsImportError(f"{path}: not a readable pickle ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if isinstance(data, tuple):
        raise NVlabsImportError(f"{path}: a TensorFlow-era pickle (a tuple of networks); convert it with NVlabs' "
                                "legacy.py first")
    if not isinstance(data, dict) or not any(isinstance(data.get(k), Record) for k in ("G", "D", "G_ema")):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise NVlabsImportError(f"{path}: has none of the networks G, D, G_ema (found {found})")
    return data


# ------------------------------------------------------------------------------ mapping
_BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0])


def _check_filter(rec: Record, where: str) -> None:
    f = rec.tensors().get("resample_filter")
    if f is None:
        return
    want = _BLUR[:, None] * _BLUR[None, :]
    want = want / want.sum()
    if tuple(f.shape) != (4, 4) or not torch.allclose(f.float(), want, atol=1e-6):
        raise NVlabsImportError(f"{where}.resample_filter is not the [1,3,3,1] filter our networks use")


def _need(rec: Record | None, what: str, cls: str | tuple[str, ...]) -> Record:
    classes = (cls,) if isinstance(cls, str) else cls
    if not isinstance(rec, Record):
        raise NVlabsImportError(f"{what} is missing")
    if rec.class_name not in classes:
        raise NVlabsImportError(f"{what} is a {rec.class_name}, expected {' or '.join(classes)}")
    return rec


def _block(rec: Record | None, where: str, cls: str, architecture: str, kind: str) -> Record:
    rec = _need(rec, where, cls)
    if rec.attr("architecture", architecture) != architecture:
        raise NVlabsImportError(f"{where}: architecture {rec.attr('architecture')!r}; ours is StyleGAN2's "
                                f"{architecture!r} {kind}")
    _check_filter(rec, where)
    return rec


def _conv_clamp(rec: Record, clamps: set) -> None:
    c = rec.attr("conv_clamp")
    if c is not None:
        clamps.add(float(c))


def _fc(rec: Record, what: str, lr: float | None = None, activation: str | None = None) -> dict[str, torch.Tensor]:
    rec = _need(rec, what, "FullyConnectedLayer")
    t = rec.tensors()
    if "weight" not in t or "bias" not in t:
        raise NVlabsImportError(f"{what} lacks a weight or bias")
    if lr is not None and not math.isclose(float(rec.attr("bias_gain", 1.0)), lr, rel_tol=1e-6):
        raise NVlabsImportError(f"{what}: lr multiplier {rec.attr('bias_gain')} differs from the mapping's {lr}")
    if activation is not None and rec.attr("activation", "linear") != activation:
        raise NVlabsImportError(f"{what}: activation {rec.attr('activation')!r}, expected {activation!r}")
    return t


def _stylegan3_hint(synth: Record) -> str | None:
    names = set(synth.children())
    if synth.class_name == "SynthesisNetwork" and ("input" in names or any(n.startswith("L0_") for n in names)):
        return "a StyleGAN3 (alias-free) generator, not StyleGAN2: our networks cannot express it"
    return None


def generator_from_record(G: Record, what: str = "G"):
    """Our :class:`~cartoon_stylegan.networks.Generator` with the weights of an NVlabs StyleGAN2 generator
    record, and its ``mapping.w_avg`` (or None). Raises :class:`NVlabsImportError` naming what does not fit."""
    from cartoon_stylegan.networks import Generator

    _need(G, what, "Generator")
    synth = G.child("synthesis")
    if isinstance(synth, Record):
        hint = _stylegan3_hint(synth)
        if hint:
            raise NVlabsImportError(f"{what} is {hint}")
    synth = _need(synth, f"{what}.synthesis", "SynthesisNetwork")
    mapping = _need(G.child("mapping"), f"{what}.mapping", "MappingNetwork")
    c_dim = int(G.attr("c_dim", 0) or 0)
    if c_dim or mapping.child("embed") is not None:
        raise NVlabsImportError(f"{what} is a conditional generator (c_dim={c_dim}); ours are unconditional")
    z_dim, w_dim = int(G.attr("z_dim")), int(G.attr("w_dim"))
    fc0 = mapping.child("fc0")
    shape0 = tuple(fc0.tensors().get("weight", torch.empty(0)).shape) if isinstance(fc0, Record) else None
    if shape0 != (w_dim, z_dim) or not 1 <= w_dim <= 4096:
        raise NVlabsImportError(f"{what}: w_dim {w_dim} / z_dim {z_dim} do not match mapping.fc0's weight {shape0} "
                                "(or exceed 4096)")
    if z_dim != w_dim:
        raise NVlabsImportError(f"{what}: z_dim {z_dim} differs from w_dim {w_dim}; ours use one style_dim for both")
    if int(G.attr("img_channels", 3)) != 3:
        raise NVlabsImportError(f"{what}: {G.attr('img_channels')} image channels; ours draw RGB (3)")
    size = int(G.attr("img_resolution"))
    if size < 4 or size > 1024 or size & (size - 1):
        raise NVlabsImportError(f"{what}: img_resolution {size} is not a power of two in [4, 1024]")

    n_mlp = int(mapping.attr("num_layers"))
    fcs = [mapping.child(f"fc{i}") for i in range(n_mlp)]
    lr_mlp = float(_need(fcs[0], f"{what}.mapping.fc0", "FullyConnectedLayer").attr("bias_gain", 0.01))
    state: dict[str, torch.Tensor] = {}
    for i, fc in enumerate(fcs):
        t = _fc(fc, f"{what}.mapping.fc{i}", lr=lr_mlp, activation="lrelu")
        state[f"style.{i + 1}.weight"], state[f"style.{i + 1}.bias"] = t["weight"], t["bias"]

    clamps: set = set()
    use_noise: set = set()
    noises: dict[int, torch.Tensor] = {}
    widths: dict[int, int] = {}

    def layer(rec: Record | None, where: str, ours: str, up: bool, noise_index: int) -> None:
        rec = _need(rec, where, "SynthesisLayer")
        t = rec.tensors()
        if rec.attr("activation", "lrelu") != "lrelu" or int(rec.attr("up", 1)) != (2 if up else 1):
            raise NVlabsImportError(f"{where}: activation {rec.attr('activation')!r} / up {rec.attr('up')} "
                                    "differ from StyleGAN2's lrelu / skip layout")
        _check_filter(rec, where)
        _conv_clamp(rec, clamps)
        aff = _fc(rec.child("affine"), f"{where}.affine")
        state[f"{ours}.conv.weight"] = t["weight"].unsqueeze(0)
        state[f"{ours}.conv.modulation.weight"], state[f"{ours}.conv.modulation.bias"] = aff["weight"], aff["bias"]
        state[f"{ours}.activate.bias"] = t["bias"]
        noisy = bool(rec.attr("use_noise", "noise_const" in t))
        use_noise.add(noisy)
        if noisy:
            state[f"{ours}.noise.weight"] = t["noise_strength"].reshape(1)
            noises[noise_index] = t["noise_const"]

    def torgb(rec: Record | None, where: str, ours: str) -> None:
        rec = _need(rec, where, "ToRGBLayer")
        t = rec.tensors()
        _conv_clamp(rec, clamps)
        aff = _fc(rec.child("affine"), f"{where}.affine")
        state[f"{ours}.conv.weight"] = t["weight"].unsqueeze(0)
        state[f"{ours}.conv.modulation.weight"], state[f"{ours}.conv.modulation.bias"] = aff["weight"], aff["bias"]
        state[f"{ours}.bias"] = t["bias"].reshape(1, -1, 1, 1)

    for k in range(2, int(math.log2(size)) + 1):
        res = 2 ** k
        where = f"{what}.synthesis.b{res}"
        block = _block(synth.child(f"b{res}"), where, "SynthesisBlock", "skip", "generator")
        if res == 4:
            const = block.tensors().get("const")
            if const is None:
                raise NVlabsImportError(f"{where}.const is missing")
            state["input.input"] = const.unsqueeze(0)
            layer(block.child("conv1"), f"{where}.conv1", "conv1", False, 0)
            torgb(block.child("torgb"), f"{where}.torgb", "to_rgb1")
        else:
            j = k - 3
            layer(block.child("conv0"), f"{where}.conv0", f"convs.{2 * j}", True, 2 * j + 1)
            layer(block.child("conv1"), f"{where}.conv1", f"convs.{2 * j + 1}", False, 2 * j + 2)
            torgb(block.child("torgb"), f"{where}.torgb", f"to_rgbs.{j}")
        widths[res] = int(state["input.input" if res == 4 else f"convs.{2 * (k - 3) + 1}.conv.weight"].shape[1])
    extra = sorted(n for n in synth.children() if n not in {f"b{2 ** k}" for k in range(2, int(math.log2(size)) + 1)})
    if extra:
        raise NVlabsImportError(f"{what}.synthesis has modules we do not know: {extra}")
    if len(use_noise) > 1:
        raise NVlabsImportError(f"{what}: some layers use noise and others not; ours switch it for all layers")
    noisy = use_noise == {True}
    if clamps:
        warnings.warn(f"{what}: conv_clamp {sorted(clamps)} dropped (our networks do not clamp activations; only "
                      "an activation beyond the clamp draws differently)", stacklevel=3)

    cmax = max(widths.values())
    cm = _multiplier(widths, cmax, size, what)
    cfg = dict(size=size, style_dim=w_dim, n_mlp=n_mlp, channel_multiplier=cm, lr_mlp=lr_mlp,
               channel_max=cmax, use_noise=noisy)
    try:
        net = Generator(**cfg)
    except ValueError as e:
        raise NVlabsImportError(f"{what}: {e}") from None
    if {r: net.channels[r] for r in widths} != widths:
        raise NVlabsImportError(f"{what}: channel widths {widths} are not min(channel_max, 16384 * m / res) for "
                                "any integer m: NVlabs' channel_base must be a multiple of 16384 here")
    own = net.state_dict()
    for i in range(net.num_layers):
        key = f"noises.noise_{i}"
        state[key] = noises[i].reshape(own[key].shape) if noisy else torch.zeros_like(own[key])
    for key, val in own.items():
        if key.endswith(".kernel"):  # blur kernels: buffers our layers derive from blur_kernel
            state[key] = val
        elif key.endswith(".noise.weight") and not noisy:
            state[key] = torch.zeros_like(val)
    _load_strict(net, state, what)
    w_avg = mapping.tensors().get("w_avg")
    return net, (None if w_avg is None else w_avg.detach().float().reshape(1, -1).clone())


def discriminator_from_record(D: Record, what: str = "D"):
    """Our :class:`~cartoon_stylegan.networks.Discriminator` with the weights of an NVlabs StyleGAN2
    discriminator record."""
    from cartoon_stylegan.networks import Discriminator

    _need(D, what, "Discriminator")
    if int(D.attr("c_dim", 0) or 0) or D.child("mapping") is not None:
        raise NVlabsImportError(f"{what} is a conditional discriminator (c_dim={D.attr('c_dim')}); ours are "
                                "unconditional")
    if int(D.attr("img_channels", 3)) != 3:
        raise NVlabsImportError(f"{what}: {D.attr('img_channels')} image channels; ours read RGB (3)")
    size = int(D.attr("img_resolution"))
    if size < 8 or size > 1024 or size & (size - 1):
        raise NVlabsImportError(f"{what}: img_resolution {size} is not a power of two in [8, 1024]")
    clamps: set = set()
    state: dict[str, torch.Tensor] = {}

    def conv(rec: Record | None, where: str, *, act: bool = True, bias: bool = True, down: int = 1):
        rec = _need(rec, where, "Conv2dLayer")
        if int(rec.attr("down", 1)) != down or int(rec.attr("up", 1)) != 1:
            raise NVlabsImportError(f"{where}: up/down {rec.attr('up')}/{rec.attr('down')} differ from StyleGAN2's")
        if rec.attr("activation", "linear") != ("lrelu" if act else "linear"):
            raise NVlabsImportError(f"{where}: activation {rec.attr('activation')!r} differs from StyleGAN2's")
        _check_filter(rec, where)
        _conv_clamp(rec, clamps)
        t = rec.tensors()
        if ("bias" in t) != bias:
            raise NVlabsImportError(f"{where}: {'lacks' if bias else 'has'} a bias, unlike StyleGAN2's")
        return t

    widths: dict[int, int] = {}
    n_blocks = int(math.log2(size)) - 2
    for i in range(1, n_blocks + 1):
        res = size >> (i - 1)
        where = f"{what}.b{res}"
        block = _block(D.child(f"b{res}"), where, "DiscriminatorBlock", "resnet", "discriminator")
        if i == 1:
            t = conv(block.child("fromrgb"), f"{where}.fromrgb")
            state["convs.0.0.weight"], state["convs.0.1.bias"] = t["weight"], t["bias"]
            widths[res] = int(t["weight"].shape[0])
        elif block.child("fromrgb") is not None:
            raise NVlabsImportError(f"{where} reads the image again (fromrgb): not the resnet layout")
        t0 = conv(block.child("conv0"), f"{where}.conv0")
        t1 = conv(block.child("conv1"), f"{where}.conv1", down=2)
        ts = conv(block.child("skip"), f"{where}.skip", act=False, bias=False, down=2)
        state[f"convs.{i}.conv1.0.weight"], state[f"convs.{i}.conv1.1.bias"] = t0["weight"], t0["bias"]
        state[f"convs.{i}.conv2.1.weight"], state[f"convs.{i}.conv2.2.bias"] = t1["weight"], t1["bias"]
        state[f"convs.{i}.skip.1.weight"] = ts["weight"]
        widths[res // 2] = int(t1["weight"].shape[0])
    epi = _need(D.child("b4"), f"{what}.b4", "DiscriminatorEpilogue")
    if epi.attr("architecture", "resnet") != "resnet" or int(epi.attr("cmap_dim", 0) or 0):
        raise NVlabsImportError(f"{what}.b4: architecture {epi.attr('architecture')!r} / cmap_dim "
                                f"{epi.attr('cmap_dim')} differ from StyleGAN2's unconditional resnet epilogue")
    mbstd = epi.child("mbstd")
    if mbstd is None or int(mbstd.attr("group_size") or 0) != Discriminator.stddev_group or \
            int(mbstd.attr("num_channels", 1)) != Discriminator.stddev_feat:
        got = None if mbstd is None else (mbstd.attr("group_size"), mbstd.attr("num_channels"))
        raise NVlabsImportError(f"{what}.b4.mbstd (group size, channels) = {got}; ours use "
                                f"({Discriminator.stddev_group}, {Discriminator.stddev_feat})")
    t = conv(epi.child("conv"), f"{what}.b4.conv")
    state["final_conv.0.weight"], state["final_conv.1.bias"] = t["weight"], t["bias"]
    fc = _fc(epi.child("fc"), f"{what}.b4.fc", lr=1.0, activation="lrelu")
    out = _fc(epi.child("out"), f"{what}.b4.out", lr=1.0, activation="linear")
    state["final_linear.0.weight"], state["final_linear.0.bias"] = fc["weight"], fc["bias"]
    state["final_linear.1.weight"], state["final_linear.1.bias"] = out["weight"], out["bias"]
    if clamps:
        warnings.warn(f"{what}: conv_clamp {sorted(clamps)} dropped (our networks do not clamp activations)",
                      stacklevel=3)
    cmax = max(widths.values())
    cm = _multiplier(widths, cmax, size, what)
    net = Discriminator(size, channel_multiplier=cm, channel_max=cmax)
    own = net.state_dict()
    if any(int(own[f"convs.{i}.conv2.1.weight"].shape[0]) != widths[(size >> (i - 1)) // 2]
           for i in range(1, n_blocks + 1)):
        raise NVlabsImportError(f"{what}: channel widths {widths} are not min(channel_max, 16384 * m / res) for any "
                                "integer m: NVlabs' channel_base must be a multiple of 16384 here")
    for key, val in own.items():
        if key.endswith(".kernel"):
            state[key] = val
    _load_strict(net, state, what)
    return net


def _multiplier(widths: dict[int, int], cmax: int, size: int, what: str) -> int:
    from cartoon_stylegan.checkpoint.rosinality import infer_multiplier

    try:
        return infer_multiplier(widths, cmax, size, what)
    except ValueError:
        raise NVlabsImportError(f"{what}: channel widths {widths} are not min(channel_max, 16384 * m / res) for any "
                                "integer m: NVlabs' channel_base must be a multiple of 16384 here") from None


def _load_strict(net, state: dict[str, torch.Tensor], what: str) -> None:
    from cartoon_stylegan.checkpoint.native import CheckpointMismatch, state_diff

    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    missing, unexpected, shapes = state_diff(net, state)
    if missing or unexpected or shapes:
        raise CheckpointMismatch(f"{what}: NVlabs network mapped onto {type(net).__name__}({net.config})",
                                 missing, unexpected, shapes)
    net.load_state_dict(state, strict=True)


def import_nvlabs(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Build modules from an NVlabs stylegan2-ada-pytorch / stylegan3 pickle of a StyleGAN2 network
    -> {"g", "d", "g_ema", "latent_avg"} (entries absent from the file are None).

    No code from the file runs (see the module docstring). ``latent_avg`` is G_ema's ``w_avg``
    (1, style_dim); it is also attached to ``g_ema`` as its truncation centre, so that sampling
    with truncation draws what NVlabs' ``G(z, c, truncation_psi)`` draws.
    """
    from cartoon_stylegan.sampling import set_truncation_center

    path = os.fspath(path)
    data = read_nvlabs_pickle(path)
    out: dict[str, Any] = {"g": None, "d": None, "g_ema": None, "latent_avg": None}
    for key, ours in (("G", "g"), ("G_ema", "g_ema")):
        rec = data.get(key)
        if isinstance(rec, Record):
            net, w_avg = _mapped(generator_from_record, rec, f"{path}:{key}")
            if w_avg is not None:
                set_truncation_center(net, w_avg)
                if ours == "g_ema":
                    out["latent_avg"] = w_avg
            out[ours] = net.to(map_location)
    if isinstance(data.get("D"), Record):
        try:
            out["d"] = _mapped(discriminator_from_record, data["D"], f"{path}:D").to(map_location)
        except NVlabsImportError as e:
            if out["g"] is None and out["g_ema"] is None:
                raise
            # a generator without its D still serves (sampling, export, fine-tuning from a fresh D)
            warnings.warn(f"{e} -- the discriminator is not imported; a run starting from this file gets a new one",
                          stacklevel=2)
    return out


def _mapped(fn, rec, what):
    """fn(rec, what), with a malformed record (missing tensor, wrong attribute type) as one NVlabsImportError."""
    try:
        return fn(rec, what)
    except NVlabsImportError:
        raise
    except (KeyError, AttributeError, TypeError, ValueError, IndexError) as e:
        from cartoon_stylegan.checkpoint import CheckpointMismatch

        if isinstance(e, CheckpointMismatch):
            raise
        raise NVlabsImportError(f"{what}: not the structure of an NVlabs StyleGAN2 network "
                                f"({type(e).__name__}: {e})") from None
