"""Build the CUDA kernels in ``csrc/`` into a per-user cache, once, and load them.

Cache layout (``CARTOON_STYLEGAN_CACHE`` overrides the root; the default is
``$XDG_CACHE_HOME/cartoon_stylegan``, else ``~/.cache/cartoon_stylegan``)::

    <root>/ops/<key>.lock                      the builders' file lock
    <root>/ops/<key>-sm90/                     one finished build per target set
        cartoon_stylegan_ops_<key12>.so
        build.json                             what it was built from and for

``key`` hashes everything the binary depends on except the GPU: the sources, the torch
version, the CUDA version torch was built with, the compiler flags and ``BUILD_VERSION``.
The GPU architectures are in the directory name, so an ahead-of-time build for several
architectures (``build_ops``) serves every GPU it covers, and a compute node without nvcc
can load what a login node built. The toolkit's own version is recorded, not hashed, for
the same reason.

Concurrency: builders take an exclusive ``fcntl.flock`` on ``<key>.lock`` (released by the
kernel when a process dies, so a crashed rank never leaves a stale lock); the others
block, then find the finished build and load it. A build happens in a temporary
directory that is renamed into place only once complete, so a reader never sees half a
build, even one that does not take the lock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from toolbox import atomic_write_text, file_lock as _lock

import torch

log = logging.getLogger("cartoon_stylegan.ops")

BUILD_VERSION = 1
SOURCE_SUFFIXES = (".cu", ".cpp", ".h", ".cuh")
# GPU targets of an ahead-of-time build when no GPU is visible and TORCH_CUDA_ARCH_LIST is
# unset: Ampere, Ada, Hopper (SASS), plus PTX of the newest for later GPUs.
DEFAULT_ARCHES = ("8.0", "8.6", "8.9", "9.0")
CXX_FLAGS = ("-O3",)
CUDA_FLAGS = ("-O3", "-lineinfo")
LOCK_TIMEOUT_S = 3600  # a build takes minutes; only a hung one holds the lock this long


class OpsBuildError(RuntimeError):
    """The kernels cannot be built or loaded. ``reason`` says why, ``fix`` what to do, ``detail``
    holds the compiler's output (if any). ``str()`` is one line: ``reason; fix``."""

    def __init__(self, reason: str, fix: str = "", detail: str = ""):
        self.reason = reason
        self.fix = fix
        self.detail = detail
        super().__init__(reason + (f"; {fix}" if fix else ""))


# ------------------------------------------------------------------------------ sources, key


def csrc_dir() -> Path:
    return Path(__file__).resolve().parent / "csrc"


def source_files() -> list[Path]:
    """Every file that goes into the build, in a stable order."""
    return sorted(p for p in csrc_dir().iterdir() if p.suffix in SOURCE_SUFFIXES)


def compiled_sources(files: Sequence[Path]) -> list[Path]:
    return [p for p in files if p.suffix in (".cu", ".cpp")]


def build_key(files: Sequence[Path] | None = None) -> str:
    """Hash of what the binary depends on, the GPU architectures excepted."""
    h = hashlib.sha256()
    for p in files if files is not None else source_files():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    for part in (
        f"build={BUILD_VERSION}",
        f"torch={torch.__version__}",
        f"cuda={torch.version.cuda}",
        f"abi={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"machine={platform.machine()}",
        "cxx=" + " ".join(CXX_FLAGS),
        "nvcc=" + " ".join(CUDA_FLAGS),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    root = os.environ.get("CARTOON_STYLEGAN_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "cartoon_stylegan")
    return Path(root) / "ops"


# ------------------------------------------------------------------------------ architectures


def normalize_arch(arch: str) -> str:
    """'90', 'sm_90', '9.0' -> '9.0'."""
    a = arch.strip().lower().replace("sm_", "").replace("compute_", "").replace("+ptx", "")
    if "." not in a:
        if not a.isdigit() or len(a) < 2:
            raise ValueError(f"GPU architecture {arch!r} is not like '9.0' or 'sm_90'")
        a = f"{a[:-1]}.{a[-1]}"
    major, minor = a.split(".")
    return f"{int(major)}.{minor}"


def device_arches() -> list[str]:
    """Compute capabilities of the visible GPUs, e.g. ['9.0']."""
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return sorted(f"{major}.{minor}" for major, minor in caps)


def arch_tag(arches: Sequence[str], ptx: bool) -> str:
    tag = "-".join("sm" + a.replace(".", "") for a in sorted(arches, key=_arch_order))
    return tag + ("-ptx" if ptx else "")


def _arch_order(a: str) -> tuple[int, str]:
    major, minor = a.split(".")
    return int(major), minor


def gencode_flags(arches: Sequence[str], ptx: bool) -> list[str]:
    ordered = sorted(arches, key=_arch_order)
    flags = []
    for a in ordered:
        n = a.replace(".", "")
        flags.append(f"-gencode=arch=compute_{n},code=sm_{n}")
    if ptx:
        n = ordered[-1].replace(".", "")
        flags.append(f"-gencode=arch=compute_{n},code=compute_{n}")
    return flags


def default_build_arches() -> tuple[list[str], bool]:
    """Targets of an ahead-of-time build: the visible GPUs, else TORCH_CUDA_ARCH_LIST, else
    DEFAULT_ARCHES (+ PTX)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return device_arches(), False
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        items = [s for s in re.split(r"[;\s,]+", env) if s]
        return sorted({normalize_arch(s) for s in items}, key=_arch_order), any("+ptx" in s.lower() for s in items)
    return list(DEFAULT_ARCHES), True


# ------------------------------------------------------------------------------ finding builds


def library_name(key: str) -> str:
    return f"cartoon_stylegan_ops_{key[:12]}"


def read_build_info(build_dir: Path) -> dict | None:
    try:
        info = json.loads((build_dir / "build.json").read_text())
    except (OSError, ValueError):
        return None
    lib = build_dir / info.get("library", "")
    return info if lib.is_file() else None


def find_build(key: str, need: Sequence[str], root: Path | None = None) -> Path | None:
    """A finished build for ``key`` whose SASS covers every architecture in ``need``;
    the one with the fewest extra targets first."""
    root = root or cache_root()
    if not root.is_dir():
        return None
    found = []
    for d in root.glob(f"{key}-*"):
        if not d.is_dir() or d.name.startswith("tmp"):
            continue
        info = read_build_info(d)
        if info is None:
            continue
        if set(need) <= set(info.get("arches", [])):
            found.append((len(info["arches"]), d.name, d))
    return min(found)[2] if found else None


# ------------------------------------------------------------------------------ locking


def file_lock(path: Path, on_wait: Callable[[], None] | None = None, timeout: float | None = None):
    """The build lock (toolbox.file_lock): exclusive, waiting; where the file system has no locks
    (e.g. Lustre mounted without -o flock) it goes on unlocked -- the atomic rename still keeps
    builds whole, at worst two ranks build the same thing."""
    def unsupported(e):
        log.warning("cartoon_stylegan.ops: %s does not support file locks (%s); building without one", path, e)

    return _lock(path, wait=True, timeout=timeout, on_wait=on_wait, on_unsupported=unsupported, name="build lock",
                 holder=f"{os.getpid()} {platform.node()}\n")


def build_once(final_dir: Path, lock_path: Path, build: Callable[[Path], None],
               find: Callable[[], Path | None] | None = None,
               on_wait: Callable[[], None] | None = None, timeout: float | None = None) -> Path:
    """Return a finished build directory, building it at most once across processes.

    ``find`` looks for an existing finished build (default: ``final_dir`` if complete);
    ``build(tmp_dir)`` fills a fresh temporary directory, which is then renamed to
    ``final_dir`` atomically.
    """
    def existing() -> Path | None:
        if find is not None:
            return find()
        return final_dir if read_build_info(final_dir) is not None else None

    done = existing()
    if done is not None:
        return done
    with file_lock(lock_path, on_wait=on_wait, timeout=timeout):
        done = existing()  # another process finished while we waited
        if done is not None:
            return done
        tmp = final_dir.parent / f"tmp-{final_dir.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            try:
                os.rename(tmp, final_dir)
            except OSError:
                # Someone built without the lock (e.g. a filesystem without flock).
                if read_build_info(final_dir) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final_dir


# ------------------------------------------------------------------------------ toolchain


def _cpp_extension():
    # Its import logs "No CUDA runtime is found" where no GPU is visible: expected on a login node
    # building ahead of time, and noise in front of our own one-line reasons.
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        import torch.utils.cpp_extension as cpp_extension  # noqa: PLC0415 (heavy; only when building)
    finally:
        quiet.setLevel(level)
    return cpp_extension


def toolchain() -> dict:
    """Checks that a build can run; returns the toolkit paths. Raises OpsBuildError saying why not."""
    if torch.version.cuda is None:
        raise OpsBuildError(f"PyTorch {torch.__version__} is a CPU-only build",
                         "install a CUDA build of PyTorch to use the CUDA kernels")
    cpp_extension = _cpp_extension()
    if not cpp_extension.is_ninja_available():
        raise OpsBuildError("ninja is not installed", "pip install ninja")
    cuda_home = cpp_extension.CUDA_HOME
    if not cuda_home:
        raise OpsBuildError("no CUDA toolkit found (CUDA_HOME/CUDA_PATH unset and no nvcc on PATH)",
                         f"install the CUDA toolkit {torch.version.cuda} (nvcc) and set CUDA_HOME")
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        raise OpsBuildError(f"nvcc not found at {nvcc}", "set CUDA_HOME to the CUDA toolkit's directory")
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise OpsBuildError(f"running {nvcc} failed: {e}", "check the CUDA toolkit installation") from e
    m = re.search(r"release (\d+\.\d+)", version)
    release = m.group(1) if m else "unknown"
    # nvcc's own idea of its root: CUDA_HOME can be a wrapper's directory (/usr/local/bin/nvcc).
    top = re.search(r"^#\$ TOP=(.*)$", dry.stdout + dry.stderr, re.M)
    roots = [Path(top.group(1)).resolve()] if top else []
    roots.append(Path(cuda_home))
    include = [str(r / "include") for r in roots if (r / "include" / "cuda_runtime_api.h").is_file()]
    libdirs = [str(r / sub) for r in roots for sub in ("lib64", "lib")
               if (r / sub).is_dir() and any((r / sub).glob("libcudart*"))]
    if not include:
        raise OpsBuildError(f"the CUDA toolkit at {cuda_home} has no include/cuda_runtime_api.h",
                         "install the full CUDA toolkit (headers) and set CUDA_HOME")
    return {"cuda_home": cuda_home, "nvcc": nvcc, "release": release,
            "include": list(dict.fromkeys(include)), "libdirs": list(dict.fromkeys(libdirs))}


def supported_arches(nvcc: str) -> set[str] | None:
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = {normalize_arch(m) for m in re.findall(r"compute_(\d+)", out)}
    return found or None


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ------------------------------------------------------------------------------ build, load

_load_lock = threading.Lock()
_loaded: dict[str, Path] = {}


def _compile(tmp: Path, key: str, arches: list[str], ptx: bool, tc: dict, verbose: bool) -> None:
    """Copy the sources into ``tmp`` and build the library there (this also loads it)."""
    files = source_files()
    for p in files:
        shutil.copy2(p, tmp / p.name)
    cpp_extension = _cpp_extension()
    cuda_flags = list(CUDA_FLAGS) + gencode_flags(arches, ptx)
    ldflags = [f"-L{d}" for d in tc["libdirs"]]
    try:
        cpp_extension.load(
            name=library_name(key),
            sources=[str(tmp / p.name) for p in compiled_sources(files)],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=cuda_flags,
            extra_ldflags=ldflags,
            extra_include_paths=[str(tmp)] + tc["include"],
            build_directory=str(tmp),
            verbose=verbose,
            with_cuda=True,
            is_python_module=False,
        )
    except Exception as e:  # compiler errors arrive as RuntimeError with the build log
        raise OpsBuildError("compiling the CUDA kernels failed",
                         "see the compiler output below; `python -m pipeline build-ops` rebuilds verbosely",
                         _tail(str(e))) from e
    lib = tmp / f"{library_name(key)}.so"
    if not lib.is_file():
        raise OpsBuildError(f"the build finished without producing {lib.name}", "rerun with verbose=True")
    for junk in list(tmp.glob("*.o")) + list(tmp.glob("*.cuda.o")):
        junk.unlink(missing_ok=True)
    info = {
        "library": lib.name,
        "key": key,
        "arches": sorted(arches, key=_arch_order),
        "ptx": ptx,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc_release": tc["release"],
        "python": sys.version.split()[0],
        "built_by": f"{os.getpid()}@{platform.node()}",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    _loaded[str(lib)] = lib


def load_library(build_dir: Path) -> Path:
    """Load a finished build (registers the CUDA kernels of the cartoon_stylegan ops)."""
    from . import cuda_impl  # noqa: F401,PLC0415  (defines the operator schemas first)

    info = read_build_info(build_dir)
    if info is None:
        raise OpsBuildError(f"{build_dir} is not a finished build", "delete it and rebuild")
    lib = build_dir / info["library"]
    with _load_lock:
        if any(p.name == lib.name for p in _loaded.values()):
            return lib  # loaded already (possibly from its temporary build path)
        try:
            torch.ops.load_library(str(lib))
        except Exception as e:  # OSError (missing symbols, wrong arch) or a registration error
            raise OpsBuildError(f"loading {lib} failed: {e}",
                             f"delete {build_dir} to force a rebuild") from e
        _loaded[str(lib)] = lib
    return lib


def failure_marker(root: Path, key: str, arches: Sequence[str], ptx: bool) -> Path:
    """Where a failed build of these sources for these architectures leaves its reason."""
    return root / f"{key}-{arch_tag(arches, ptx)}.failed.json"


def _raise_recorded_failure(marker: Path) -> None:
    try:
        rec = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    raise OpsBuildError(f"an earlier build of these kernel sources failed ({rec.get('when', '?')}, pid "
                        f"{rec.get('pid', '?')}): {rec.get('reason', '?')}",
                        (rec.get("fix") + "; then " if rec.get("fix") else "")
                        + f"run `python -m pipeline build-ops` (it retries), or delete {marker}",
                        rec.get("detail", ""))


def ensure_built(arches: Sequence[str] | None = None, ptx: bool | None = None, verbose: bool = False,
                 root: Path | None = None, retry_failed: bool = False) -> Path:
    """Find or build (once, under the lock) a build covering ``arches``; return its directory.

    Runtime use passes the visible GPUs' architectures; the build then targets exactly
    those. Raises OpsBuildError with the reason when that is not possible. A build that
    fails leaves a marker next to the cache entry: every other process (the ranks waiting
    on the lock, later runs) fails at once with the same message instead of compiling again
    -- 8 ranks must not spend 8 x the build time before an NCCL timeout.
    ``retry_failed`` (``build_ops``) ignores the marker and builds again.
    """
    from . import cuda_impl  # noqa: F401,PLC0415  (a load during the build needs the schemas)

    root = root or cache_root()
    if arches is None:
        arches, default_ptx = default_build_arches()
        ptx = default_ptx if ptx is None else ptx
    arches = sorted({normalize_arch(a) for a in arches}, key=_arch_order)
    ptx = bool(ptx)
    if not arches:
        raise OpsBuildError("no GPU architecture to build for", "pass arches or set TORCH_CUDA_ARCH_LIST")
    key = build_key()
    found = find_build(key, arches, root)
    if found is not None:
        return found
    marker = failure_marker(root, key, arches, ptx)
    if marker.exists() and not retry_failed:
        _raise_recorded_failure(marker)

    tc = toolchain()
    ok = supported_arches(tc["nvcc"])
    if ok is not None and not set(arches) <= ok:
        raise OpsBuildError(f"nvcc {tc['release']} cannot compile for {sorted(set(arches) - ok)}",
                         "install a CUDA toolkit that supports this GPU")
    final = root / f"{key}-{arch_tag(arches, ptx)}"

    def announce_wait() -> None:
        log.warning("cartoon_stylegan.ops: another process is building the CUDA kernels (%s); waiting",
                    root / f"{key}.lock")

    def build(tmp: Path) -> None:
        if marker.exists() and not retry_failed:  # failed while this process waited on the lock
            _raise_recorded_failure(marker)
        t0 = time.time()
        targets = ", ".join("sm_" + a.replace(".", "") for a in arches)
        print(f"cartoon_stylegan.ops: building the CUDA kernels for {targets} into {final} "
              "(first use only; about a minute) ...", file=sys.stderr, flush=True)
        try:
            _compile(tmp, key, arches, ptx, tc, verbose)
        except OpsBuildError as e:
            _write_marker(marker, e)
            raise
        marker.unlink(missing_ok=True)
        print(f"cartoon_stylegan.ops: built in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    try:
        return build_once(final, root / f"{key}.lock", build,
                          find=lambda: find_build(key, arches, root), on_wait=announce_wait,
                          timeout=LOCK_TIMEOUT_S)
    except TimeoutError as e:
        raise OpsBuildError(f"another process has been building the kernels for over {LOCK_TIMEOUT_S // 60} min ({e})",
                         "check for a hung build (its pid is in the lock file)") from e
    except OSError as e:
        raise OpsBuildError(f"cannot write the kernel cache {root}: {e}",
                         "set CARTOON_STYLEGAN_CACHE to a writable directory") from e


def _write_marker(marker: Path, e: OpsBuildError) -> None:
    import datetime

    rec = {"reason": e.reason, "fix": e.fix, "detail": e.detail[-20000:], "pid": os.getpid(),
           "when": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        atomic_write_text(marker, json.dumps(rec))
    except OSError:  # a read-only cache: the others will retry, no worse than before
        pass


def build_ops(verbose: bool = True, arches: Sequence[str] | None = None, ptx: bool | None = None) -> Path:
    """Ahead-of-time build for ``python -m pipeline build-ops``; returns the build directory.

    Without ``arches``: the visible GPUs, else ``TORCH_CUDA_ARCH_LIST``, else
    sm_80/86/89/90 + PTX (so a login node without a GPU can build for the compute nodes).
    Loads the result as a check that it links. Raises :class:`OpsBuildError` (one-line
    message; the compiler's output in ``.detail``) when a CUDA PyTorch, ninja, nvcc or the
    toolkit's headers are missing, the architectures are not understood, or the build fails.
    """
    try:
        path = ensure_built(arches, ptx=ptx, verbose=verbose, retry_failed=True)
    except ValueError as e:  # an architecture like "9.0" / "sm_90" expected (arguments or TORCH_CUDA_ARCH_LIST)
        raise OpsBuildError(str(e), "pass architectures like 8.6 or sm_90 (TORCH_CUDA_ARCH_LIST)") from e
    load_library(path)
    return path
