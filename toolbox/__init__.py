"""Small mechanisms with one home each, used by the runner (``pipeline/``) and the library
(``cartoon_stylegan/``) alike: atomic writes, file locks, file hashes, a free port.

A leaf package: it imports nothing of this project (a test checks), so that the runner can
stay free of the library and still share these with it.
"""
from toolbox.files import (
    LockBusy,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    file_lock,
    file_version,
    fsync_dir,
    lock_held,
    sha256_file,
)
from toolbox.net import free_port

__all__ = ["LockBusy", "atomic_path", "atomic_write_bytes", "atomic_write_text", "file_lock", "file_version", "fsync_dir",
           "lock_held", "sha256_file", "free_port"]
