"""Test-suite defaults: one intra-op thread (tiny tensors: threads cost more than they give)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402

TINY_EXPERIMENT = ["data.resolution=16", "model.channel_max=16", "model.style_dim=32", "model.n_mlp=2",
                   "finetune.run_variants=[freezesg,freezeg]", "tracking.enabled=false"]


@pytest.fixture
def tiny_experiment(tmp_path):
    """(config args, G_source, G_variant): a run root with a tiny random source network (with its D) and a
    trained 'freezesg' variant ('freezeg' selected but never trained), for the model commands' tests."""
    from cartoon_stylegan import checkpoint
    from cartoon_stylegan.networks import Discriminator, Generator
    from stages.paths import StagePaths
    from stages import load_config

    args = [f"run_root={tmp_path / 'runs'}", *TINY_EXPERIMENT]
    cfg = load_config(None, args)
    torch.manual_seed(0)
    src, tgt = (Generator(16, style_dim=32, n_mlp=2, channel_max=16, use_noise=False) for _ in range(2))
    D = Discriminator(16, channel_max=16)
    paths = StagePaths(cfg, "finetune")
    for f, g, meta in ((paths.of("pretrain").final_network(), src, None),
                       (paths.final_network("freezesg"), tgt, {"wplus_prefix_len": 2})):
        f.parent.mkdir(parents=True)
        checkpoint.save_transfer(f, g=g, d=D, g_ema=g, meta=meta)
    return args, src, tgt
