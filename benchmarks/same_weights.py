"""Do two checkouts of this project train the same weights? (a refactor must not change a bit)

    python benchmarks/same_weights.py --old OLD_CHECKOUT [--new .] [--out DIR]

Runs the default config's shard -> pretrain -> finetune, shrunk (600 source / 300 target images,
pretrain 0.4 kimg, each of the four variants 0.1 kimg; one thread), once with each checkout's code and
this Python (the same torch build for both), and prints a table: the SHA-256 of each final network's
G, D and G_ema tensors, old vs new. A difference means the change is not behaviour-identical.
(``git worktree add OLD_CHECKOUT <commit>`` gives an old checkout without touching this one.)
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ARGS = ["tracking.enabled=false", "data.source.count=600", "data.target.count=300", "pretrain.kimg=0.4",
        "pretrain.tick_kimg=0.1", "pretrain.snapshot_kimg=0.2", "pretrain.sample_kimg=0.4", "finetune.kimg=0.1",
        "finetune.tick_kimg=0.05", "finetune.snapshot_kimg=0.1", "finetune.sample_kimg=0.1"]
NETWORKS = ["pretrain/checkpoints/network-final.pt",
            *(f"finetune/{v}/checkpoints/network-final.pt" for v in ("freezed", "freezeg", "freezesg",
                                                                      "freezesg_structure"))]


def train(checkout: Path, run_root: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-m", "pipeline", "run", "finetune", f"run_root={run_root}", *ARGS],
                   cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)


def digest(path: Path) -> str:
    import torch

    ck = torch.load(path, weights_only=True)
    h = hashlib.sha256()
    for net in ("g", "d", "g_ema"):
        for name, t in sorted(ck[net].items()):
            h.update(name.encode())
            h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path, help="checkout of the code before the change")
    ap.add_argument("--new", default=Path("."), type=Path, help="checkout of the code after it (default: .)")
    ap.add_argument("--out", default=None, type=Path, help="where the two runs go (default: a temp folder)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="same-weights-"))
    for label, checkout in (("old", args.old), ("new", args.new)):
        print(f"training with the {label} code ({checkout.resolve()}) ...", flush=True)
        train(checkout.resolve(), out / label)
    print("\n| network | old | new | |\n|---|---|---|---|")
    same = True
    for rel in NETWORKS:
        a, b = digest(out / "old" / "default" / rel), digest(out / "new" / "default" / rel)
        same &= a == b
        print(f"| {rel} | {a} | {b} | {'identical' if a == b else 'DIFFERENT'} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
