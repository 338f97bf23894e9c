"""Launched by tests/e2e/test_deepspeed.py under `accelerate launch` with 2 CPU processes (gloo):
the same tiny GAN, seed and data trained for a few steps under each backend in turn; rank 0 writes
each backend's per-step losses and results to argv[1] (JSON), and every rank the hashes of its
final G, D and G_ema. Last, a DDP and a ZeRO-2 run, each stopped after 3 steps and resumed from its checkpoint.

Every phase runs each step (r1_every = pl_every = 1 ... 2), with ADA, style mixing, and FreezeSG
with the structure loss, so every path of the GAN step goes through each backend.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.training import FreezePlan, LoopOptions, StructureLoss, train
from cartoon_stylegan.training.backends import make_backend

SIZE, BATCH, STEPS = 16, 4, 6


def nets():
    torch.manual_seed(0)
    G = Generator(SIZE, style_dim=32, n_mlp=2, channel_max=16)
    D = Discriminator(SIZE, channel_max=16)
    return G, D, copy.deepcopy(G), copy.deepcopy(G)


def data(rank):
    def stream(start_step):
        step = start_step
        while True:
            g = torch.Generator().manual_seed(1000 * rank + step)
            yield torch.rand(BATCH, 3, SIZE, SIZE, generator=g) * 2 - 1
            step += 1
    return stream


def main(out: Path) -> None:
    acc = Accelerator(cpu=True)
    world = acc.num_processes
    opts = LoopOptions(kimg=STEPS * BATCH * world / 1000, batch=BATCH, tick_kimg=BATCH * world / 1000,
                       sample_kimg=100, snapshot_kimg=100, grid=[2, 2], log_every=1, r1_every=2, pl_every=2,
                       pl_weight=2.0, ada=True, ada_p_init=0.3, ada_interval=1, ada_kimg=0.1, mixing_prob=0.9,
                       ema_kimg=0.01)
    results = {}

    def run(name, ds, ckpt_name, stop_after=None):
        G, D, G_ema, G_src = nets()
        losses, polls = [], [0]

        def should_stop():
            polls[0] += 1
            return stop_after is not None and polls[0] >= stop_after

        backend = make_backend(acc, "ddp" if ds is None else "deepspeed", deepspeed_config=ds or "zero2", batch=BATCH)
        res = train(acc, G=G, D=D, G_ema=G_ema, data=data(acc.process_index), opts=opts,
                    ckpt_dir=out.parent / ckpt_name, report=lambda m, step: losses.append({"step": step, **m}),
                    G_source=G_src, freeze=FreezePlan(freeze_d_above=8, freeze_g_up_to=4, freeze_style_up_to=4),
                    structure=StructureLoss(up_to=8, weight=1.0), should_stop=should_stop, backend=backend)
        acc.wait_for_everyone()
        results[name] = {"losses": losses, "world": world, "status": res.status, "start_step": res.start_step,
                         "step": res.step, "last_checkpoint": res.last_checkpoint,
                         "hash": {k: state_hash(m) for k, m in (("g", G), ("d", D), ("g_ema", G_ema))}}

    for name, ds in (("ddp", None), ("zero0", "zero0"), ("zero1", "zero1"), ("zero2", "zero2")):
        run(name, ds, f"ckpt-{name}")
    # stopped after 3 steps (checkpoint), then resumed in a fresh run to the end
    for name, ds in (("ddp", None), ("zero2", "zero2")):
        run(f"{name}-stopped", ds, f"ckpt-{name}-resume", stop_after=3)
        run(f"{name}-resumed", ds, f"ckpt-{name}-resume")
    if acc.is_main_process:
        out.write_text(json.dumps(results))
    (out.parent / f"rank{acc.process_index}.json").write_text(
        json.dumps({k: v["hash"] for k, v in results.items()}))


def state_hash(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
