"""Throughput of the data path: shard writing (synthetic and a JPEG folder) and the loader.

    python benchmarks/shard.py [--count 4000] [--jpeg-count 1000] [--workers 1 2] [--out DIR]

Prints a markdown table of images/s; benchmarks/results/shard-cpu.md records one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from cartoon_stylegan.data import render_batch, write_shards  # noqa: E402


def _timed_shards(spec, out, *, resolution, count, workers, fmt="png"):
    t = time.perf_counter()
    m = write_shards(spec, out, "bench", resolution=resolution, count=count, workers=workers,
                     fmt=fmt, progress=False)
    return m["count"] / (time.perf_counter() - t), m


def _make_jpeg_folder(folder: Path, n: int, size: int):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, n, 64):
        for j, a in enumerate(render_batch("faces", 123, range(i, min(n, i + 64)), size)):
            Image.fromarray(a).save(folder / f"{i + j:06d}.jpg", quality=92)


def _loader_rate(shard_dir, *, batch_size, num_workers, batches):
    from cartoon_stylegan.data import make_loader

    loader = make_loader(shard_dir, batch_size=batch_size, num_workers=num_workers,
                         multiprocessing_context="fork" if num_workers else None)
    next(loader)                         # start-up (workers, first shard) not counted
    t = time.perf_counter()
    for _ in range(batches):
        next(loader)
    rate = batches * batch_size / (time.perf_counter() - t)
    loader.close()
    return rate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=4000, help="synthetic images to shard")
    ap.add_argument("--jpeg-count", type=int, default=1000, help="JPEGs in the generated folder")
    ap.add_argument("--jpeg-size", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loader-batches", type=int, default=100)
    ap.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)

    scratch = Path(args.out or tempfile.mkdtemp(prefix="shard-bench-"))
    rows = []
    try:
        for w in args.workers:
            rate, _ = _timed_shards("synthetic:faces", scratch / f"syn{w}", resolution=args.resolution,
                                    count=args.count, workers=w)
            rows.append((f"write: synthetic:faces -> {args.resolution} px PNG", f"workers={w}",
                         args.count, rate))
        folder = scratch / "jpegs"
        t = time.perf_counter()
        _make_jpeg_folder(folder, args.jpeg_count, args.jpeg_size)
        print(f"(generated {args.jpeg_count} JPEGs at {args.jpeg_size} px in {time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
        for w in args.workers:
            rate, _ = _timed_shards(folder, scratch / f"jpg{w}", resolution=args.resolution,
                                    count=None, workers=w)
            rows.append((f"write: folder of {args.jpeg_size} px JPEGs -> {args.resolution} px PNG",
                         f"workers={w}", args.jpeg_count, rate))
        shard_dir = scratch / f"syn{args.workers[0]}"
        for nw in (0, 2):
            rate = _loader_rate(shard_dir, batch_size=args.batch_size, num_workers=nw,
                                batches=args.loader_batches)
            rows.append((f"read: make_loader, {args.resolution} px PNG, batch {args.batch_size}",
                         f"num_workers={nw}", args.loader_batches * args.batch_size, rate))
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| step | setting | images | images/s |")
    print("|---|---|---:|---:|")
    for step, setting, n, rate in rows:
        print(f"| {step} | {setting} | {n} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
