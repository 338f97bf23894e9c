"""Throughput of the FID feature extractor (the offline TF-Inception): TorchScript NCHW, channels_last, ONNX Runtime.

    python benchmarks/inception.py [--batch 50] [--reps 5] [--out PATH]

The eval stage spends most of its time here (every generated and real image goes through
Inception at 299x299). The rows run the same TorchScript graph on the same preprocessed
batch of 32 px images, interleaved, best of ``--reps``:

  NCHW            the network as loaded (what torch-fidelity's own extractor does)
  channels_last   the input made channels_last first (``InceptionTFOffline`` on a GPU, or with
                  CARTOON_STYLEGAN_INCEPTION=torch)
  onnxruntime     the same graph exported into an ONNX Runtime session (``InceptionTFOffline`` on
                  the CPU by default; CPU only)

and report img/s and the largest feature difference from the NCHW run. On the CPU a second table
times the rest of a score torch-fidelity's way and ours (the TF1 resize; one FID from 250 vs 400
feature vectors). The tables go to benchmarks/results/inception-<cpu|cuda>.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cartoon_stylegan.metrics.inception import _cpu_session, load_inception, preprocess  # noqa: E402
from shard import _cpu_name  # noqa: E402  (benchmarks/shard.py: /proc/cpuinfo's model name)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _score_parts(x, reps):
    """The rest of a score on the CPU, torch-fidelity's way vs ours, interleaved, best of ``reps``: the TF1 resize
    of the batch to 299 px (bit-identical outputs), and one FID from 250 vs 400 feature vectors (d = 2048)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from cartoon_stylegan.metrics.fidelity import frechet_distance

    g = torch.Generator().manual_seed(1)
    basis = torch.randn(2048, 64, generator=g)
    f1 = (torch.randn(250, 64, generator=g) @ basis.T * 0.1 + 0.3).relu()
    f2 = (torch.randn(400, 64, generator=g) @ basis.T * 0.1 + 0.35).relu()
    runs = {
        "resize, torch-fidelity's": lambda: (interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(299, 299), align_corners=False) - 128) / 128,
        "resize, ours (preprocess)": lambda: preprocess(x),
        "FID 250 vs 400, torch-fidelity's (2048^2 eigenvalues)": lambda: fid_statistics_to_metric(
            fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)["frechet_inception_distance"],
        "FID 250 vs 400, ours (exact low-rank)": lambda: frechet_distance(f1, f2),
    }
    out = {k: fn() for k, fn in runs.items()}
    best = {k: float("inf") for k in runs}
    for _ in range(reps):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    keys = list(runs)
    same = torch.equal(out[keys[0]], out[keys[1]])
    return ["", f"The rest of a score, interleaved, best of {reps} (batch of {len(x)} for the resize):", "",
            "| step | ms | result |", "|---|---:|---|",
            f"| {keys[0]} | {best[keys[0]] * 1e3:.0f} | |",
            f"| {keys[1]} | {best[keys[1]] * 1e3:.0f} | {'bit-identical' if same else 'DIFFERS'} |",
            f"| {keys[2]} | {best[keys[2]] * 1e3:.0f} | {out[keys[2]]:.6f} |",
            f"| {keys[3]} | {best[keys[3]] * 1e3:.0f} | {out[keys[3]]:.6f} |", "",
            f"resize {best[keys[0]] / best[keys[1]]:.1f}x faster; FID {best[keys[2]] / best[keys[3]]:.0f}x faster "
            f"(torch-fidelity's figure carries the rounding noise of ~1,800 zero eigenvalues: see "
            f"cartoon_stylegan.metrics.fidelity.frechet_distance)."]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/inception-<dev>.md)")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = load_inception(dev).net
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = {"NCHW": preprocess(x).to(dev)}
    inputs["channels_last"] = inputs["NCHW"].contiguous(memory_format=torch.channels_last)
    runs = {"NCHW": lambda: net(inputs["NCHW"]), "channels_last": lambda: net(inputs["channels_last"])}
    if dev.type == "cpu":
        sess = _cpu_session()   # None (said on stderr) where ONNX Runtime cannot run it
        if sess is not None:
            feed = {"x": inputs["NCHW"].numpy()}
            runs["onnxruntime"] = lambda: torch.from_numpy(sess.run(None, feed)[0])
    best = {k: float("inf") for k in runs}
    with torch.inference_mode():
        ref = net(inputs["NCHW"])
        diff = {k: (fn() - ref).abs().max().item() for k, fn in runs.items()}   # also the warm-up
        for _ in range(args.reps):
            for k, fn in runs.items():
                _sync(dev)
                t = time.perf_counter()
                fn()
                _sync(dev)
                best[k] = min(best[k], time.perf_counter() - t)

    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({_cpu_name()}), {torch.get_num_threads()} threads"
    lines = [f"# FID Inception throughput ({dev.type})", "",
             f"`python benchmarks/inception.py` on {where}, torch {torch.__version__}, "
             f"{datetime.date.today()}, batch {args.batch} of 32 px images (resized to 299), best of {args.reps}; "
             f"load average at start {os.getloadavg()[0]:.2f}.", "",
             "| runner | img/s | max abs feature diff vs NCHW |", "|---|---:|---:|"]
    for k in runs:
        lines.append(f"| {k} | {args.batch / best[k]:.1f} | {diff[k]:.1e} |")
    lines += ["", f"channels_last is {best['NCHW'] / best['channels_last']:.2f}x the img/s of NCHW"
              + (f"; onnxruntime {best['channels_last'] / best['onnxruntime']:.2f}x channels_last"
                 if "onnxruntime" in best else "")
              + f" (features max |value| {ref.abs().max().item():.2f})."]
    if dev.type == "cpu":
        lines += _score_parts(x, args.reps)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"inception-{dev.type}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
