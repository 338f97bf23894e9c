"""Atomic writes, advisory file locks and file hashes: the one implementation of each.

Atomic write: the bytes go to a temporary file beside the destination (same folder, so the
same file system), then ``os.replace`` puts it in place; a reader sees the old file or the
new one, never half of one, and a crash leaves at worst a hidden ``.<name>.*.tmp`` file.
``durable=True`` also fsyncs the file and its folder (checkpoints: the rename survives a
power cut). The new file gets the permissions a plain ``open(path, "w")`` would give.

Locks: ``flock`` on a lock file; the kernel drops it when the holder dies (even by SIGKILL),
so a stale lock file never blocks. Some cluster file systems have no ``flock`` (Lustre
mounted without ``-o flock``, some NFS set-ups: ENOLCK, ENOSYS, EOPNOTSUPP, EINVAL). There
the lock cannot protect anything, and refusing to run at all would make the tool unusable on
such a cluster, so :func:`file_lock` goes on *unlocked* after calling ``on_unsupported``
(which should say so); what the lock guarded must then survive two holders (the atomic
writes above do: at worst the work is done twice).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

__all__ = ["LockBusy", "atomic_path", "atomic_write_bytes", "atomic_write_text", "file_lock", "file_version",
           "fsync_dir", "lock_held", "sha256_file", "NO_LOCKING"]

NO_LOCKING = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it, which would
    briefly make other threads' new files world-writable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def fsync_dir(folder) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it inside the ``with``; on success it
    replaces ``path`` atomically, on any error it is removed and ``path`` is untouched.

    The temporary name keeps ``path``'s suffix (``.tmp`` goes before it) so that writers which
    pick a format by suffix (PIL, torch.jit, onnx) still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a plain open() would not
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see the module's note)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


class LockBusy(BlockingIOError):
    """The lock is held by another process (``file_lock(..., wait=False)``); ``.holder`` is what
    the holder wrote into the lock file (its pid and host, if it wrote them)."""

    def __init__(self, path, holder: str):
        super().__init__(errno.EAGAIN, f"{path} is locked by another process")
        self.path, self.holder = path, holder

    def holder_record(self) -> dict:
        """The holder's text as the JSON object the holder wrote ({} when it is none)."""
        try:
            rec = json.loads(self.holder or "{}")
        except ValueError:
            return {}
        return rec if isinstance(rec, dict) else {}


def _read_holder(fd) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def file_lock(path, *, wait: bool = True, timeout: Optional[float] = None, poll: float = 0.2,
              on_wait: Optional[Callable[[], None]] = None,
              on_unsupported: Optional[Callable[[OSError], None]] = None,
              holder: Optional[str] = None, name: str = "lock", shared: bool = False,
              grace: float = 0.0) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    wait=False:     raise :class:`LockBusy` at once when another process holds it
    wait=True:      poll until it is free (``on_wait`` runs once, first); after ``timeout``
                    seconds raise ``TimeoutError``
    on_unsupported: called with the OSError where the file system has no locks; the block then
                    runs without the lock (see the module's note)
    holder:         text written into the lock file once held (who holds it, for the message a
                    waiter gets)
    name:           what the lock is, for the timeout's message
    shared:         a shared lock instead: any number of shared holders at once, none while an
                    exclusive one holds it (the tasks of one job array beside a whole run)
    grace:          wait=False: keep trying this many seconds before LockBusy (a :func:`lock_held`
                    probe holds the lock for an instant)
    Yields True when the lock is held, False when the file system could not lock.
    Works across processes and across threads (each call opens its own file description).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        locked = True
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    deadline = time.monotonic() + grace
                    while True:
                        if time.monotonic() >= deadline:
                            raise LockBusy(path, _read_holder(fd)) from None
                        time.sleep(min(poll, 0.1))
                        try:
                            fcntl.flock(fd, mode | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            continue
                else:
                    if on_wait is not None:
                        on_wait()
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while True:
                        try:
                            fcntl.flock(fd, mode | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            if deadline is not None and time.monotonic() > deadline:
                                raise TimeoutError(f"waited {timeout:.0f} s for the {name} {path}") from None
                            time.sleep(poll)
        except LockBusy:
            raise
        except OSError as e:
            if e.errno not in NO_LOCKING:
                raise
            locked = False
            if on_unsupported is not None:
                on_unsupported(e)
        if holder is not None:  # shared holders overwrite each other: it names one of them
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.encode(), 0)
        yield locked
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_held(path, *, exclusive_only: bool = False) -> Optional[bool]:
    """True while another process holds the lock on ``path`` (exclusive or shared); False when free
    or the file does not exist; None when the file system cannot tell (no locks there). The probe
    takes the lock exclusively for an instant, so that shared holders count (a taker that meets the probe
    retries: :func:`file_lock`'s ``grace``); ``exclusive_only``: only an exclusive holder counts (a shared probe). A
    file this process cannot open for writing is probed shared (NFS emulates flock with fcntl locks,
    whose exclusive kind needs a writable descriptor)."""
    path = Path(path)
    mode = fcntl.LOCK_SH if exclusive_only else fcntl.LOCK_EX
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        mode = fcntl.LOCK_SH
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno in NO_LOCKING:
            return None
        return True
    finally:
        os.close(fd)


def file_version(path) -> tuple:
    """(real path, size, mtime in ns) of an existing file: a key that changes when the file is replaced or
    rewritten, for results computed from its content and kept for the life of a process."""
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def sha256_file(path, block: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex), read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
