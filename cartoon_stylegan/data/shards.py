"""Shard writer: any source -> WebDataset tars ``<name>-%06d.tar`` + ``manifest.json``.

Worker processes load, convert and encode chunks of consecutive inputs; the parent
receives the chunks in input order (``imap``) and writes the tars, so the output is
byte-identical for any number of workers. Tar headers carry fixed times and owners,
so the same inputs give the same sha256 on every run.

Each sample is ``<key>.png`` (or ``.jpg``) plus ``<key>.json`` (``{"source", "index",
"converted"}``). Each tar is written to ``<file>.tmp`` and renamed when complete; the
manifest is written last, the same way, after any previous manifest and shards of
this name were removed; so a directory with a manifest always holds exactly the
shards it lists, and a crash leaves no manifest rather than a wrong one.

Accounting: every input the source yields is either written or listed in
``skipped`` with its reason, so ``count + len(skipped) == found`` always.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import tarfile
import time
from pathlib import Path
from typing import Callable, Optional

from toolbox import atomic_write_text, sha256_file

from .sources import CROPS, SkipImage, SyntheticLoader, check_spec, encode, iter_source, load_prepared
from .synthetic import check_resolution, get_domain

__all__ = ["write_shards", "ShardingStopped", "file_sha256", "read_manifest", "MANIFEST", "SHARD_PATTERN"]

MANIFEST = "manifest.json"
SHARD_PATTERN = "{name}-{index:06d}.tar"
_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}


# --------------------------------------------------------------------------- worker side

def _process_chunk(args):
    """Load, convert and encode one chunk: list of ("ok", key, path, bytes, note) | ("skip", key, path, reason)."""
    items, resolution, fmt, quality, min_size, crop = args
    out = []
    # consecutive synthetic samples of one domain render as a batch (same bytes as one by one)
    syn = [it for it in items if isinstance(it[2], SyntheticLoader)]
    rendered = {}
    if syn:
        by_domain = {}
        for key, _, ld in syn:
            by_domain.setdefault((ld.domain, ld.seed), []).append((key, ld.index))
        for (domain, seed), pairs in by_domain.items():
            imgs = get_domain(domain).render_batch(seed, [i for _, i in pairs], resolution)
            rendered.update({key: im for (key, _), im in zip(pairs, imgs)})
    for key, path, loader in items:
        try:
            if key in rendered:
                array, note = rendered[key], None
            else:
                array, note = load_prepared(loader, resolution, min_size, crop)
            out.append(("ok", key, path, encode(array, fmt, quality), note))
        except SkipImage as exc:
            out.append(("skip", key, path, exc.reason))
    return out


def _chunks(items, size):
    chunk = []
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- parent side

class _ShardSink:
    """Writes samples into consecutive tars, each atomically (``.tmp`` then rename).

    The tars use the WebDataset layout (``<key>.<ext>`` members, a sample's members
    adjacent) in plain ``tarfile`` with fixed headers (mtime 0, mode 0444, no owner),
    like ``webdataset.TarWriter(mtime=0)``, without importing torch in the writer.
    """

    def __init__(self, out_dir: Path, name: str, fmt: str, max_per_shard: int):
        self.out_dir, self.name, self.fmt, self.max = out_dir, name, fmt, max_per_shard
        self.shards: list[dict] = []
        self._tar = self._file = self._tmp = None
        self._count = 0

    def _open(self):
        path = self.out_dir / SHARD_PATTERN.format(name=self.name, index=len(self.shards))
        self._tmp = path.with_name(path.name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._final, self._count = path, 0

    def _add(self, member: str, data: bytes):
        info = tarfile.TarInfo(member)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, data: bytes, meta: dict):
        if self._tar is None:
            self._open()
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        self._add(f"{key}.{self.fmt}", data)
        self._count += 1
        if self._count >= self.max:
            self.close_shard()

    def close_shard(self):
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        sha = file_sha256(self._tmp)
        os.replace(self._tmp, self._final)
        self.shards.append({"file": self._final.name, "count": self._count, "sha256": sha})
        self._tar = self._file = None

    def abort(self):
        if self._tar is not None:
            try:
                self._file.close()
            finally:
                self._tmp.unlink(missing_ok=True)
            self._tar = self._file = None


file_sha256 = sha256_file  # SHA-256 (hex) of a file's bytes (toolbox: one home)


def _atomic_json(obj, path: Path):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n", durable=True)


def _clear_previous(out_dir: Path, name: str):
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for p in out_dir.glob(f"{name}-*.tar"):
        p.unlink()
    for p in out_dir.glob(f"{name}-*.tar.tmp"):
        p.unlink()


def read_manifest(path) -> dict:
    """The manifest of a shard directory (or the manifest file itself)."""
    p = Path(path)
    p = p / MANIFEST if p.is_dir() else p
    with open(p) as f:
        return json.load(f)


class ShardingStopped(Exception):
    """write_shards stopped on request (``should_stop``); nothing of the unfinished set is kept."""


def write_shards(spec, out_dir, name: str, *, resolution: int, count: Optional[int] = None,
                 seed: int = 0, fmt: str = "png", quality: int = 95, max_per_shard: int = 1000,
                 workers: int = 2, min_size: int = 0, crop: str = "center", progress: bool = True,
                 report: Optional[Callable[[dict], None]] = None, chunk_size: Optional[int] = None,
                 should_stop: Optional[Callable[[], bool]] = None) -> dict:
    """Shard the first ``count`` inputs of ``spec`` (all when None) into ``out_dir``.

    ``should_stop`` is polled after every chunk of images; when it returns True the partial
    shard is removed and :class:`ShardingStopped` is raised (a rerun shards from the start).

    ``crop``: how a photo becomes the square (sources.CROPS): ``center`` (the largest centred square) or
    ``face`` (the most confident face, FFHQ-aligned; a photo without one is skipped, with the reason).

    Returns the manifest (also written to ``out_dir/manifest.json``). ``report``, when
    given, is called after each shard and at the end with ``{"written", "skipped",
    "converted", "found", "shards", "images_per_s"}``. Raises ValueError naming the
    input when not a single image could be used.
    """
    resolution = check_resolution(resolution)
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {sorted(_FORMATS)}, got {fmt!r}")
    fmt = _FORMATS[fmt]
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality!r}")
    if int(max_per_shard) < 1:
        raise ValueError(f"max_per_shard must be >= 1, got {max_per_shard!r}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad shard name {name!r}")
    kind = check_spec(spec, count)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir, name)

    if chunk_size is None:
        chunk_size = 64 if kind == "synthetic" else 16
    items = iter_source(spec, count, seed)
    total = count
    if kind != "synthetic":          # folders and zips are listed up front anyway: know the total
        items = list(items)
        total = len(items)
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    tasks = ((chunk, resolution, fmt, int(quality), int(min_size), crop) for chunk in _chunks(items, chunk_size))

    sink = _ShardSink(out_dir, name, fmt, int(max_per_shard))
    found = written = 0
    skipped, converted = [], []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="img", desc=f"shard {name}", dynamic_ncols=True)

    def emit():
        if report is not None:
            dt = max(time.perf_counter() - t0, 1e-9)
            report({"written": written, "skipped": len(skipped), "converted": len(converted),
                    "found": found, "shards": len(sink.shards), "images_per_s": written / dt})

    pool = None
    try:
        if workers and workers > 1:
            pool = mp.get_context("spawn").Pool(int(workers))
            results = pool.imap(_process_chunk, tasks)
        else:
            results = map(_process_chunk, tasks)
        for chunk in results:
            for res in chunk:
                found += 1
                if res[0] == "ok":
                    _, key, path, data, note = res
                    meta = {"index": int(key), "source": path if path is not None else str(spec),
                            "converted": note}
                    n_before = len(sink.shards)
                    sink.write(key, data, meta)
                    written += 1
                    if note:
                        converted.append({"path": path, "reason": note})
                    if len(sink.shards) != n_before:
                        emit()
                else:
                    _, key, path, reason = res
                    skipped.append({"path": path, "reason": reason})
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(shards=len(sink.shards), skipped=len(skipped), refresh=False)
            if should_stop is not None and should_stop():
                raise ShardingStopped(f"stopped on request after {found} of {total if total is not None else '?'} "
                                      f"inputs of {name}")
        sink.close_shard()
    except BaseException:
        sink.abort()
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()

    if written == 0:
        raise ValueError(f"no usable images in {spec!s} ({found} inputs found, {len(skipped)} skipped"
                         + (f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else "") + ")")
    assert written + len(skipped) == found
    manifest = {
        "name": name,
        "count": written,
        "resolution": resolution,
        "format": fmt,
        "quality": int(quality) if fmt == "jpg" else None,
        "shards": sink.shards,
        "found": found,
        "skipped": skipped,
        "converted": converted,
        "n_converted": len(converted),
        "source": str(spec),
        "seed": int(seed),
        "requested_count": count,
        "min_size": int(min_size),
        "crop": crop,
        "max_per_shard": int(max_per_shard),
    }
    _atomic_json(manifest, out_dir / MANIFEST)
    emit()
    return manifest
