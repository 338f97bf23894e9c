"""The workflow people come with, end to end through the real CLI: a pretrained face generator FILE
(rosinality's format; NVlabs' pickle in the dry-run) and a folder of cartoon faces as people have them
(odd sizes, RGBA, palette, 16-bit, CMYK, EXIF-rotated), no photo set anywhere on disk.

The commands are the README's "Fine-tune your own" block, extracted from the README and run with
tiny-size overrides appended, in a working directory laid out as the README says (the pretrained
file and data/webtoon beside configs/)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2e_helpers import PYTHON, REPO, env

pytestmark = pytest.mark.slow

# the README's commands at 64 px, a few steps each: 4 variants x 8 steps of batch 4, tiny eval
TINY = ["finetune.kimg=0.032", "finetune.tick_kimg=0.016", "finetune.sample_kimg=0.032", "finetune.snapshot_kimg=0.032",
        "launch.mixed_precision=no", "data.num_workers=0", "data.shuffle_buffer=16", "shard.workers=1",
        "shard.max_per_shard=16", "swap.seeds=2", "eval.n_samples=24", "eval.n_real=24", "eval.kid_subset_size=12",
        "eval.structure_n=8", "eval.identity_n=4", "eval.batch=12", "eval.metrics=[fid,kid]"]


def readme_block(title: str) -> list[str]:
    """The shell commands of the README's fenced block right after the marker ``<!-- test: TITLE -->``
    (comments and continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- test: {re.escape(title)} -->\s*```(?:bash|sh)\n(.*?)```", text, re.S)
    assert m, f"README.md has no block marked <!-- test: {title} -->"
    joined = m.group(1).replace("\\\n", " ")
    return [ln.split(" #")[0].strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _rosinality_file(path: Path, size=64):
    """What rosinality's train.py writes (plain state dicts, rosinality's names): a tiny 'FFHQ' generator."""
    from cartoon_stylegan.networks import Discriminator, Generator

    torch.manual_seed(0)
    g = Generator(size, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    d = Discriminator(size, channel_multiplier=1, channel_max=16)
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(),
                "latent_avg": torch.zeros(32)}, path)


def _cartoon_folder(folder: Path, n=24) -> int:
    """Cartoon faces as a download folder has them: sizes, aspect ratios and modes of all kinds."""
    from cartoon_stylegan.data.synthetic import render

    folder.mkdir(parents=True)
    sizes = [(80, 80), (120, 90), (70, 110), (64, 64), (200, 150), (96, 128)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        rgb = Image.fromarray(render("cartoons", 7, i, 128)).resize((w, h))
        kind = i % 6
        if kind == 0:
            rgb.save(folder / f"{i:03d}.png")
        elif kind == 1:
            rgba = rgb.convert("RGBA")
            rgba.putalpha(200)
            rgba.save(folder / f"{i:03d}.png")
        elif kind == 2:
            rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"{i:03d}.gif")
        elif kind == 3:
            a = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
            Image.fromarray(a).save(folder / f"{i:03d}.png")  # 16-bit grayscale
        elif kind == 4:
            rgb.convert("CMYK").save(folder / f"{i:03d}.jpg", quality=95)
        else:
            exif = Image.Exif()
            exif[0x0112] = 6  # stored rotated: a viewer (and our reader) turns it upright
            rgb.rotate(90, expand=True).save(folder / f"{i:03d}.jpg", exif=exif, quality=95)
    return n


def _run(cmd: str, cwd: Path, extra=(), expect=0) -> str:
    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "pipeline"], cmd
    proc = subprocess.run([PYTHON, *words[1:], *extra], cwd=cwd, env=env(), text=True, timeout=900,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == expect, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-5000:]}"
    return proc.stdout


@pytest.fixture
def workdir(tmp_path):
    """Where a user stands: the repository's configs/, their pretrained file, their cartoon folder."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    _rosinality_file(tmp_path / "550000.pt")
    _cartoon_folder(tmp_path / "data" / "webtoon")
    return tmp_path


def test_fine_tune_your_own_from_a_rosinality_file_and_a_folder(workdir):
    cmds = readme_block("fine-tune your own")
    dry = [c for c in cmds if "--dry-run" in c]
    runs = [c for c in cmds if c.startswith("python -m pipeline run") and "--dry-run" not in c]
    assert dry and runs, cmds
    out = _run(dry[0], workdir, TINY)
    plan = [ln.split()[0] for ln in out.splitlines() if re.match(r"^  \w+ +(never run|done|stale)", ln)]
    assert plan == ["shard", "finetune", "swap", "eval"], out
    assert out.count("left out: the source generator is a file") == 1, out
    assert "data/ffhq.zip" not in out.replace("data.source", "")

    out = _run(runs[0], workdir, TINY)
    exp = workdir / "runs" / "webtoon256"
    assert not (exp / "pretrain").exists() and not (exp / "shard" / "source").exists()
    manifest = json.loads((exp / "shard" / "target" / "manifest.json").read_text())
    assert manifest["count"] == 24 and manifest["skipped"] == [], manifest  # every odd image made it in
    for v in ("freezed", "freezeg", "freezesg", "freezesg_structure"):
        assert (exp / "finetune" / v / "checkpoints" / "network-final.pt").is_file(), out
        assert (exp / "swap" / f"{v}-weight.png").is_file() and (exp / "swap" / f"{v}-activation.png").is_file()
    metrics = json.loads((exp / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"freezed", "freezeg", "freezesg", "freezesg_structure"}, metrics
    assert all(np.isfinite(m["fid"]) for m in metrics.values())
    # the structure at every resolution, up to the full 64 px image, and the style drift of the frozen layers
    assert all({"structure_ratio_at_4", "structure_ratio_at_64", "structure_rank_at_64", "style_drift_frozen"}
               <= set(m) for m in metrics.values()), metrics
    # FreezeG's mapping is frozen: exactly 0; FreezeSG injects the source's styles up to 8 px of the 16 px it
    # freezes (base.yaml), and the mapping barely moves in these few steps at lr_mapping 1
    assert metrics["freezeg"]["style_drift_frozen"] == 0 and metrics["freezesg"]["style_drift_frozen"] < 1e-4
    assert "rows left out: source, real_floor, untrained" in out
    # the architecture came from the file: 64 px, style 32, 2 mapping layers (the config names none)
    shown = _run("python -m pipeline show --config configs/finetune/webtoon.yaml finetune.init.path=550000.pt "
                 "finetune.init.format=rosinality", workdir)
    assert "resolution: 64" in shown and "style_dim: 32" in shown and "n_mlp: 2" in shown
    # a key that contradicts the file: one line naming it, both values
    out = _run(runs[0] + " data.resolution=256", workdir, TINY, expect=2)
    assert "data.resolution: the config says 256, but the source generator 550000.pt" in out and "has 64" in out
    assert "Traceback" not in out


def test_an_nvlabs_pickle_plans_the_same_and_submit_agrees(workdir):
    """The same plan from an NVlabs pickle; `submit all --dry-run` (what a cluster gets) lists the same
    stages; `run finetune` (what slurm/finetune.sh runs) plans shard(target) -> finetune."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "interop"))
    import nvlabs_fixture as fx

    pkl = workdir / "ffhq-tiny.pkl"
    pkl.write_bytes(fx.snapshot_bytes(G=fx.generator(seed=0), D=fx.discriminator(), G_ema=fx.generator(seed=2)))
    base = ("python -m pipeline {} --config configs/finetune/webtoon.yaml finetune.init.path=ffhq-tiny.pkl "
            "finetune.init.format=nvlabs")
    small = [*TINY, "finetune.freeze_d_above=16", "swap.export_at=16"] + [
        f"finetune.variants.{v}.structure_loss.up_to=16" for v in ("freezesg_structure",)]
    out = _run(base.format("run all --dry-run"), workdir, small)
    assert [ln.split()[0] for ln in out.splitlines() if re.match(r"^  \w+ +never run", ln)] == \
        ["shard", "finetune", "swap", "eval"], out
    out = _run(base.format("run finetune --dry-run"), workdir, small)
    assert [ln.split()[0] for ln in out.splitlines() if re.match(r"^  \w+ +never run", ln)] == ["shard", "finetune"]
    out = _run(base.format("submit all --dry-run --no-check"), workdir, small)
    assert out.count("left out: the source generator is a file") == 1, out
    scripts = re.findall(r"slurm/(\w+)\.sh", "\n".join(ln for ln in out.splitlines() if ln.startswith("[dry-run]")))
    assert scripts == ["shard", "finetune", "swap", "eval"], out
