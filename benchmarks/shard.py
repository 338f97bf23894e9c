"""Throughput of the data path: shard writing (synthetic and a JPEG folder) and the loader.

    python benchmarks/shard.py [--count 4000] [--jpeg-count 1000] [--workers 1 2] [--out DIR]

Prints a markdown table: images/s of wall time, and images per CPU-second (this process
plus its worker processes), which stays meaningful on a machine shared with other jobs.
benchmarks/results/shard-cpu.md records one run.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from cartoon_stylegan.data import render_batch, write_shards  # noqa: E402


def _cpu_s():
    """CPU seconds of this process and its reaped children (pool and loader workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _timed_shards(spec, out, *, resolution, count, workers, fmt="png"):
    t, c = time.perf_counter(), _cpu_s()
    m = write_shards(spec, out, "bench", resolution=resolution, count=count, workers=workers,
                     fmt=fmt, progress=False)
    return m["count"] / (time.perf_counter() - t), m["count"] / (_cpu_s() - c)


def _make_jpeg_folder(folder: Path, n: int, size: int):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, n, 64):
        for j, a in enumerate(render_batch("faces", 123, range(i, min(n, i + 64)), size)):
            Image.fromarray(a).save(folder / f"{i + j:06d}.jpg", quality=92)


def _loader_rate(shard_dir, *, batch_size, num_workers, batches):
    from cartoon_stylegan.data import make_loader

    loader = make_loader(shard_dir, batch_size=batch_size, num_workers=num_workers,
                         multiprocessing_context="fork" if num_workers else None)
    t, c = time.perf_counter(), _cpu_s()
    next(loader)                         # start-up (workers, first shard) counted in CPU only
    t = time.perf_counter()
    for _ in range(batches):
        next(loader)
    rate = batches * batch_size / (time.perf_counter() - t)
    loader.close()                       # joins the workers, so their CPU time is counted
    return rate, (batches + 1) * batch_size / (_cpu_s() - c)


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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

    load0 = os.getloadavg()[0]
    scratch = Path(args.out or tempfile.mkdtemp(prefix="shard-bench-"))
    rows = []
    for domain in ("faces", "cartoons"):
        for res in (32, args.resolution):
            n = args.count // 2
            t, c = time.perf_counter(), _cpu_s()
            render_batch(domain, 0, range(n), res)
            rows.append((f"render: synthetic:{domain} at {res} px (no encoding)", "1 process", n,
                         n / (time.perf_counter() - t), n / (_cpu_s() - c)))
    try:
        for w in args.workers:
            rate, cpu = _timed_shards("synthetic:faces", scratch / f"syn{w}", resolution=args.resolution,
                                      count=args.count, workers=w)
            rows.append((f"write: synthetic:faces -> {args.resolution} px PNG", f"workers={w}",
                         args.count, rate, cpu))
        folder = scratch / "jpegs"
        t = time.perf_counter()
        _make_jpeg_folder(folder, args.jpeg_count, args.jpeg_size)
        print(f"(generated {args.jpeg_count} JPEGs at {args.jpeg_size} px in {time.perf_counter() - t:.1f} s)",
              file=sys.stderr)
        for w in args.workers:
            rate, cpu = _timed_shards(folder, scratch / f"jpg{w}", resolution=args.resolution,
                                      count=None, workers=w)
            rows.append((f"write: folder of {args.jpeg_size} px JPEGs -> {args.resolution} px PNG",
                         f"workers={w}", args.jpeg_count, rate, cpu))
        shard_dir = scratch / f"syn{args.workers[0]}"
        for nw in (0, 2):
            rate, cpu = _loader_rate(shard_dir, batch_size=args.batch_size, num_workers=nw,
                                     batches=args.loader_batches)
            rows.append((f"read: make_loader, {args.resolution} px PNG, batch {args.batch_size}",
                         f"num_workers={nw}", args.loader_batches * args.batch_size, rate, cpu))
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| step | setting | images | images/s (wall) | images per CPU-second |")
    print("|---|---|---:|---:|---:|")
    for step, setting, n, rate, cpu in rows:
        print(f"| {step} | {setting} | {n} | {rate:,.0f} | {cpu:,.0f} |")


if __name__ == "__main__":
    main()
