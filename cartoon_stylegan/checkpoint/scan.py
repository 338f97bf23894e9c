"""Walk a pickle's opcodes before anything unpickles it: no input may crash or exhaust the reader.

Every checkpoint read in this project goes through ``torch.load(weights_only=True)`` or the NVlabs
reader's restricted unpickler, which run no code from the file. They still *build* what the file
describes, and some shapes of data are enough to take the process down: CPython hashes a tuple by
hashing its items in C without a recursion guard, so a dict key of ~100,000 nested tuples (a 200 KB
pickle with no globals at all) overflows the C stack -- SIGSEGV, no message. This module walks the
opcodes (``pickletools.genops``: streaming, nothing built) and refuses, in one line, a pickle nested
deeper than :data:`MAX_DEPTH` or longer than :data:`MAX_OPS` opcodes; :func:`scan_pickles` does it for
a file of either kind torch writes (its zip format: the ``data.pkl`` members; the legacy format and
plain pickles: the pickles at its start).

A leaf (the standard library only): the checkpoint readers and the NVlabs reader both use it.
"""
from __future__ import annotations

import io
import os
import pickletools
import zipfile

__all__ = ["PickleRefused", "scan_pickle", "scan_pickles", "Window", "MAX_OPS", "MAX_DEPTH", "MAX_FILE_BYTES"]


class PickleRefused(ValueError):
    """A pickle this project will not hand to an unpickler; the message says why, in one line."""


# Bounds on what a file may make the reader do; real snapshots are far inside them. stylegan2-ada's
# 1024 px snapshot (G, G_ema, D, augment_pipe) is about 360 MB and its largest tensor is D's b4.fc
# weight, 8192 x 512 = 4.2M elements. The test fixture's snapshots (tests/interop/nvlabs_fixture.py,
# the same structure) nest 32 deep as _scan counts (each persistent module adds its REDUCE, argument
# tuple, meta dict, state dict and _modules dict) at every resolution from 8 to 64 px; one at 256 px
# with 512 channels (357 MB) has 31,900 opcodes, and each doubling adds about 4,000.
MAX_FILE_BYTES = 2 ** 31
MAX_OPS = 4_000_000
# CPython hashes a tuple by hashing its items in C, without a recursion guard: a dict key of
# ~100,000 nested tuples (200 KB of pickle) overflows the C stack while pickle reads the file
# (SIGSEGV); repr, == and deallocation are guarded. 1000 is far from both.
MAX_DEPTH = 1000
class Window:
    """A binary file read no further than ``end``: pickletools asks read() for whatever length an
    opcode claims, and a file object allocates that much before it finds the bytes missing."""

    def __init__(self, f, end: int):
        self.f, self.end = f, end

    def read(self, n: int = -1) -> bytes:
        left = max(self.end - self.f.tell(), 0)
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        left = max(self.end - self.f.tell(), 0)
        return self.f.readline(left if limit is None or limit < 0 else min(limit, left))

    def tell(self) -> int:
        return self.f.tell()


_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_FILLS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})  # change the object below
# torch's legacy storage format (magic, protocol, sys_info, a persistent-id record, the keys) calls nothing
_CALLS = frozenset({"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"})


def scan_pickle(f, *, storage: bool = False, max_int: int | None = None) -> int:
    """Walk one pickle's opcodes up to its STOP, building nothing; -> how deep its objects nest.

    Each stack entry is the depth of the object it stands for (a container is one deeper than its
    deepest item, a call's result one deeper than its arguments); the memo keeps the depth an object
    had when it was stored. That is exact for tuples (immutable, so built after their items), which
    is what CPython recurses on unguarded (hashing); a list filled after it was nested elsewhere can
    be deeper than counted here, and the walk over the loaded objects (the NVlabs reader's, ``nvlabs._make_tensors``) stops
    at the same depth. ``storage``: one of a storage's torch.save pickles, where any call or a global
    other than ``torch.*Storage`` is refused, and ``max_int`` bounds its integers (the element count).
    Raises :class:`PickleRefused` (the message has no file name).
    """
    stack: list[int] = []
    frames: list[list[int]] = []
    memo: dict[int, int] = {}
    deepest = 0
    try:
        for n, (op, arg, _) in enumerate(pickletools.genops(f)):
            name = op.name
            if n >= MAX_OPS:
                raise PickleRefused(f"more than {MAX_OPS:,} pickle opcodes (an NVlabs snapshot has under 50,000)")
            if storage and (name in _CALLS or name == "GLOBAL" and not (
                    arg.startswith("torch ") and arg.endswith("Storage") and arg.count(" ") == 1)):
                what = name if arg is None else f"{name} {arg}"[:80]
                raise PickleRefused(f"a tensor storage record with a {what} opcode; expected torch's legacy "
                                        "storage format (no calls, no global but a torch.*Storage)")
            if max_int is not None and isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > max_int:
                raise PickleRefused(f"a tensor storage record with the number {arg}, more elements than its "
                                        f"{max_int} bytes hold")
            if name == "STOP":
                return deepest
            if name == "MARK":
                frames.append(stack)
                stack = []
            elif name in _MEMO_PUT:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _MEMO_GET:
                stack.append(memo[arg])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP" and stack:
                stack.pop()
            elif name in ("POP", "POP_MARK"):  # POP with nothing above the mark drops the mark, as pickle does
                stack = frames.pop()
            else:
                before = op.stack_before
                if pickletools.markobject in before:
                    above, stack = stack, frames.pop()
                    below = before.index(pickletools.markobject)
                else:
                    above, below = [], len(before)
                held = [stack.pop() for _ in range(below)]  # held[-1]: the one deepest in the stack
                if name in _FILLS:
                    depth = max(held[-1], 1 + max(above + held[:-1], default=0))
                else:
                    depth = 1 + max(above + held, default=-1)
                if depth > MAX_DEPTH:
                    raise PickleRefused(f"objects nested more than {MAX_DEPTH} deep (at opcode {n:,}, {name}; "
                                            "an NVlabs snapshot nests about 32 deep)")
                deepest = max(deepest, depth)
                stack.extend([depth] * len(op.stack_after))
    except PickleRefused:
        raise
    except (ValueError, IndexError, KeyError) as e:
        raise PickleRefused(f"not a readable pickle ({type(e).__name__}: {e})") from None
    raise PickleRefused("not a readable pickle (it ends before its STOP opcode)")


def scan_pickles(path: str | os.PathLike, count: int = 5) -> None:
    """Walk the pickles at the start of ``path`` (up to ``count``, as many as torch's legacy format
    reads) without building anything; :class:`PickleRefused` for one nested deeper than
    :data:`MAX_DEPTH` or with more than :data:`MAX_OPS` opcodes, which would crash or exhaust the
    unpickler of whatever reader tried it. Stops quietly at the first bytes that are no pickle."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        nbytes = os.fstat(f.fileno()).st_size
        if f.read(2) == b"PK":  # a zip (torch.save): the pickles inside it (data.pkl; the tensors are apart)
            f.seek(0)
            _scan_zip(path, f)
            return
        f.seek(0)
        window = Window(f, nbytes)
        for _ in range(count):
            try:
                scan_pickle(window)
            except PickleRefused as e:
                if str(e).startswith("not a readable pickle"):
                    return
                raise PickleRefused(f"{path}: {e}") from None


MAX_ZIP_PICKLE_BYTES = 1 << 30
"""A torch zip file's data.pkl is the object tree without the tensor bytes: a 1024 px checkpoint's is
under 1 MB."""


def _scan_zip(path: str, f) -> None:
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip after all: the reader says what it is
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".pkl"):
                continue
            if info.file_size > MAX_ZIP_PICKLE_BYTES:
                raise PickleRefused(f"{path}: its {info.filename} is {info.file_size:,} bytes; expected at most "
                                    f"{MAX_ZIP_PICKLE_BYTES:,} (the tensors are stored apart from it)")
            try:
                with zf.open(info) as member:
                    data = member.read()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
                return  # damaged: the reader says so
            try:
                scan_pickle(Window(io.BytesIO(data), len(data)))
            except PickleRefused as e:
                if str(e).startswith("not a readable pickle"):
                    return
                raise PickleRefused(f"{path}: {info.filename}: {e}") from None
