"""Many writers logging to one MLflow store at once: what a grid of concurrent fine-tunes does.

    python benchmarks/tracking_concurrency.py [--writers 4 8] [--batches 200] [--dir DIR]

Each writer is its own process (as each SLURM array task or local parallel run is): it opens the
store, creates a run, and logs ``--batches`` batches of 8 metrics (one per training report), then
the parent counts what arrived. Two stores side by side: the default sqlite file every task opens
itself, and one ``mlflow server`` (sqlite behind it) the tasks reach over HTTP, as the README
recommends for clusters. Prints a table: writers, store, seconds, metrics expected / found, errors.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_KEYS = 8


def _writer(uri: str, experiment: str, index: int, batches: int, out) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    errors = 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name=f"writer-{index}")
    for step in range(batches):
        ts = int(time.time() * 1000)
        items = [Metric(f"loss/k{k}", float(step + k), ts, step) for k in range(N_KEYS)]
        try:
            client.log_batch(run.info.run_id, metrics=items)
        except Exception as e:  # noqa: BLE001 -- counted: what a training loop would see
            errors += 1
            if errors == 1:
                print(f"  writer {index}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
    client.set_terminated(run.info.run_id)
    out.put((index, run.info.run_id, errors))


def _count(uri: str, experiment: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    total = 0
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        for k in range(N_KEYS):
            total += len(client.get_metric_history(r.info.run_id, f"loss/k{k}"))
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(folder: Path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                             "--default-artifact-root", (folder / "art").as_uri(), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start in 120 s")


def trial(uri: str, writers: int, batches: int, experiment: str) -> dict:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).create_experiment(experiment)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, experiment, i, batches, q)) for i in range(writers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "expected": writers * batches * N_KEYS, "found": _count(uri, experiment),
            "errors": sum(r[2] for r in results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary folder); put it on "
                    "the shared file system to measure that one")
    args = ap.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="tracking-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"stores in {folder}; {args.batches} batches of {N_KEYS} metrics per writer; {os.cpu_count()} CPUs")
    rows = []
    server, http_uri = _server(folder)
    try:
        for n in args.writers:
            for store, uri in (("sqlite file", f"sqlite:///{folder / f'direct-{n}.db'}"), ("mlflow server", http_uri)):
                r = trial(uri, n, args.batches, f"bench-{n}")
                rows.append((n, store, r))
                print(f"  {n} writers, {store}: {r['seconds']:.1f} s, {r['found']}/{r['expected']} metrics, "
                      f"{r['errors']} errors", flush=True)
    finally:
        os.killpg(server.pid, 15)
    print("\n| writers | store | seconds | metrics found / expected | failed calls |\n|---|---|---|---|---|")
    for n, store, r in rows:
        print(f"| {n} | {store} | {r['seconds']:.1f} | {r['found']} / {r['expected']} | {r['errors']} |")
    if not args.dir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
