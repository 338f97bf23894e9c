"""Plan a fine-tune grid: GPU-hours and wall time per run and for the whole grid at 1, 8 and 32 GPUs.

    python benchmarks/grid_plan.py --config configs/finetune/webtoon.yaml finetune.seeds=[0,1,2]
    python benchmarks/grid_plan.py --config ... --sec-per-kimg 1:20.1,8:4.2 --source "H100, acceptance run"

The grid (how many runs, how many kimg each, the resolution) comes from the config; the speed from
``--sec-per-kimg`` (seconds per kimg of one run on 1, 2, 4, 8 GPUs). Without it, NVlabs' published
StyleGAN2-ADA figures for 256 px on V100s (their README's "Expected training time", the middle of
each range) stand in, and the table says so: they are an ESTIMATE for our fine-tune, which also runs
the frozen source generator (structure loss, FreezeSG) and has not been timed on a GPU here.

For each GPU count the table compares the grid run as today's single job would (the runs one after
another, each on up to 8 GPUs with DDP) with a job array (each run on g GPUs, as many at once as the
GPUs hold), and picks the g with the shortest wall time.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NVLABS_V100_256 = {1: 22.9, 2: 11.5, 4: 5.75, 8: 4.95}  # s/kimg, stylegan2-ada-pytorch README, 256x256 rows


def parse_speeds(text: str) -> dict[int, float]:
    out = {}
    for item in text.split(","):
        gpus, _, sec = item.partition(":")
        out[int(gpus)] = float(sec)
    if not out or any(g < 1 or s <= 0 for g, s in out.items()):
        raise SystemExit(f"--sec-per-kimg: {text!r} must be GPUS:SECONDS pairs, e.g. 1:22.9,8:4.95")
    return out


def hours(sec: float) -> str:
    h = sec / 3600
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d"


def plan(n_runs: int, kimg: float, speeds: dict[int, float], total_gpus: int) -> dict:
    """Wall time and GPU-hours of the grid on ``total_gpus``: one job (runs in turn) and the best array."""
    g_one = max(g for g in speeds if g <= min(total_gpus, 8))
    one = {"gpus_per_run": g_one, "wall": n_runs * kimg * speeds[g_one],
           "gpu_h": n_runs * kimg * speeds[g_one] * g_one / 3600}
    best = None
    for g, s in sorted(speeds.items()):
        if g > total_gpus:
            continue
        at_once = min(n_runs, total_gpus // g)
        waves = math.ceil(n_runs / at_once)
        cand = {"gpus_per_run": g, "at_once": at_once, "wall": waves * kimg * s,
                "gpu_h": n_runs * kimg * s * g / 3600}
        if best is None or (cand["wall"], cand["gpu_h"]) < (best["wall"], best["gpu_h"]):
            best = cand
    return {"one_job": one, "array": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/finetune/webtoon.yaml")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (e.g. finetune.seeds=[0,1,2])")
    ap.add_argument("--sec-per-kimg", default=None, help="GPUS:SECONDS,... for one run (default: NVlabs' V100 "
                    "figures at 256 px, an estimate)")
    ap.add_argument("--source", default=None, help="where --sec-per-kimg comes from (printed with the table)")
    ap.add_argument("--gpus", default="1,8,32", help="the GPU counts to plan for")
    args = ap.parse_args(argv)
    from stages import load_config

    from pipeline.config import ConfigError

    overrides = list(args.overrides)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:  # the generator file is not on this machine: plan without it
        if "finetune.init.path" not in str(e):
            raise SystemExit(f"error: {e}")
        res = next((o.split("=", 1)[1] for o in overrides if o.startswith("data.resolution=")), "256")
        print(f"note: {e}; planning for {res} px without it (data.resolution=N for another size)")
        cfg = load_config(args.config, [*overrides, "finetune.init.path=null", f"data.resolution={res}"])
    runs = cfg.finetune.runs(cfg.seed)
    kimg, res = cfg.finetune.kimg, cfg.data.resolution
    if args.sec_per_kimg:
        speeds, source = parse_speeds(args.sec_per_kimg), args.source or "given on the command line"
    else:
        speeds = NVLABS_V100_256
        source = ("ESTIMATE: NVlabs stylegan2-ada-pytorch README, 256x256 on V100 (middle of each range); "
                  "our fine-tune not timed on a GPU yet")
        if res != 256:
            source += f"; and this config is {res} px, not 256"
    print(f"grid: {len(runs)} runs x {kimg:g} kimg at {res} px ({args.config}{' ' + ' '.join(overrides) if overrides else ''})")
    print(f"speed: {', '.join(f'{g} GPU(s) {s:g} s/kimg' for g, s in sorted(speeds.items()))} -- {source}\n")
    print("| per run | GPUs | wall | GPU-hours |\n|---|---|---|---|")
    for g, s in sorted(speeds.items()):
        print(f"| one run | {g} | {hours(kimg * s)} | {kimg * s * g / 3600:.1f} |")
    print("\n| whole grid on | one job, runs in turn | job array (GPUs per run x at once) | GPU-hours (array) |\n|---|---|---|---|")
    for total in (int(x) for x in args.gpus.split(",")):
        p = plan(len(runs), kimg, speeds, total)
        o, a = p["one_job"], p["array"]
        print(f"| {total} GPU(s) | {hours(o['wall'])} ({o['gpus_per_run']} per run) | {hours(a['wall'])} "
              f"({a['gpus_per_run']} x {a['at_once']}) | {a['gpu_h']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
