"""checkpoint: atomic writes, transfer vs resume files, strict loading, rosinality import."""
import argparse
import os
import pickle

import pytest
import torch

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.checkpoint import (CheckpointMismatch, atomic_save, check_compatible, import_rosinality,
                                         load_resume, load_transfer, save_resume, save_transfer)
from cartoon_stylegan.checkpoint import native
from cartoon_stylegan.networks import Discriminator, Generator

G_CFG = dict(size=16, style_dim=32, n_mlp=2, channel_max=16)
D_CFG = dict(size=16, channel_max=16)


def models(seed=0, g_cfg=G_CFG, d_cfg=D_CFG):
    torch.manual_seed(seed)
    return Generator(**g_cfg), Discriminator(**d_cfg), Generator(**g_cfg)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------ atomic_save
def test_atomic_save_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "x.pt"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(4)}, path)
    assert os.listdir(tmp_path / "sub") == ["x.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(4))


def test_crash_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(native.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["x.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))


# ------------------------------------------------------------------------------ transfer
def test_transfer_round_trip(tmp_path):
    g, d, g_ema = models()
    path = tmp_path / "t.pt"
    save_transfer(path, g=g, d=d, g_ema=g_ema, meta={"kimg": 12.5, "source": "synthetic:faces"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cartoon-stylegan/transfer-v1" and raw["g_config"] == g.config
    out = load_transfer(path, expect_g_config=G_CFG, expect_d_config=D_CFG)
    assert same_state(out["g"], g) and same_state(out["d"], d) and same_state(out["g_ema"], g_ema)
    assert out["meta"] == {"kimg": 12.5, "source": "synthetic:faces"}
    z = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(out["g_ema"].eval()(z, noise_mode="const"), g_ema.eval()(z, noise_mode="const"))
    # without d
    save_transfer(path, g=None, d=None, g_ema=g_ema, meta={})
    out = load_transfer(path)
    assert out["g"] is None and out["d"] is None and same_state(out["g_ema"], g_ema)


def test_transfer_of_the_wrong_resolution_is_refused(tmp_path):
    g, d, g_ema = models()
    path = tmp_path / "t.pt"
    save_transfer(path, g=g, d=d, g_ema=g_ema, meta={})
    with pytest.raises(CheckpointMismatch) as e:
        load_transfer(path, expect_g_config={**G_CFG, "size": 32})
    msg = str(e.value)
    assert "size" in msg and "convs.4.conv.weight" in msg and "to_rgbs.2.bias" in msg
    assert "convs.4.conv.weight" in e.value.missing
    with pytest.raises(CheckpointMismatch) as e:
        load_transfer(path, expect_d_config={**D_CFG, "channel_max": 8})
    msg = str(e.value)
    assert "convs.0.0.weight: checkpoint (16, 3, 1, 1) vs model (8, 3, 1, 1)" in msg


def test_check_compatible_names_keys_and_shapes():
    g = Generator(**G_CFG)
    sd = dict(g.state_dict())
    check_compatible(g, sd)
    sd["extra.weight"] = torch.zeros(1)
    del sd["style.1.bias"]
    sd["input.input"] = torch.zeros(1, 8, 4, 4)
    with pytest.raises(CheckpointMismatch) as e:
        check_compatible(g, sd)
    msg = str(e.value)
    assert "extra.weight" in msg and "style.1.bias" in msg
    assert "input.input: checkpoint (1, 8, 4, 4) vs model (1, 16, 4, 4)" in msg


def test_transfer_and_resume_files_are_not_interchangeable(tmp_path):
    g, d, g_ema = models()
    save_transfer(tmp_path / "t.pt", g=g, d=d, g_ema=g_ema, meta={})
    save_resume(tmp_path / "r.pt", {"step": 3})
    with pytest.raises(ValueError, match="not a resume checkpoint"):
        load_resume(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="use load_resume"):
        load_transfer(tmp_path / "r.pt")


# ------------------------------------------------------------------------------ resume
def test_resume_round_trip(tmp_path):
    g, _, _ = models()
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    g(torch.randn(2, 32)).mean().backward()
    opt.step()
    state = {"step": 7, "kimg": 1.25, "name": "run", "history": [1.0, 2.0], "g": g.state_dict(),
             "g_optim": opt.state_dict(), "rng": torch.get_rng_state(), "nested": {"a": None, "b": (1, 2)}}
    save_resume(tmp_path / "resume-000007.pt", state)
    back = load_resume(tmp_path / "resume-000007.pt")
    assert back["step"] == 7 and back["kimg"] == 1.25 and back["name"] == "run" and back["history"] == [1.0, 2.0]
    assert torch.equal(back["rng"], state["rng"]) and back["nested"] == {"a": None, "b": (1, 2)}
    opt2 = torch.optim.Adam(Generator(**G_CFG).parameters(), lr=1e-3)
    opt2.load_state_dict(back["g_optim"])
    assert torch.equal(back["g"]["input.input"], g.state_dict()["input.input"])


# ------------------------------------------------------------------------------ rosinality
def write_rosinality_file(path, g, d, g_ema, args):
    """What his train.py writes: torch.save of plain state dicts, optimizer states and args."""
    g_optim = torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_optim = torch.optim.Adam(d.parameters(), lr=0.002, betas=(0.0, 0.99))
    for m, opt in ((g, g_optim), (d, d_optim)):      # non-empty optimizer state
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
                "g_optim": g_optim.state_dict(), "d_optim": d_optim.state_dict(), "args": args}, path)


def test_import_rosinality_with_args(tmp_path):
    g, d, g_ema = models(g_cfg={**G_CFG, "channel_max": 64}, d_cfg={**D_CFG, "channel_max": 64})
    args = argparse.Namespace(path="/data/ffhq", iter=800000, batch=16, size=16, r1=10, latent=32, n_mlp=2,
                              channel_multiplier=2, augment=False, lr=0.002, ckpt=None, wandb=False)
    write_rosinality_file(tmp_path / "his.pt", g, d, g_ema, args)
    out = import_rosinality(tmp_path / "his.pt")
    assert same_state(out["g"], g) and same_state(out["d"], d) and same_state(out["g_ema"], g_ema)
    assert out["g_ema"].config == g_ema.config


def test_import_rosinality_without_args_infers_the_architecture(tmp_path):
    # his convert_weight.py output: g_ema and latent_avg only
    torch.manual_seed(0)
    g_ema = Generator(512, style_dim=16, n_mlp=3, channel_multiplier=1, channel_max=64)
    torch.save({"g_ema": g_ema.state_dict(), "latent_avg": torch.zeros(16)}, tmp_path / "conv.pt")
    out = import_rosinality(tmp_path / "conv.pt")
    assert out["g"] is None and out["d"] is None
    assert out["g_ema"].config == g_ema.config and same_state(out["g_ema"], g_ema)
    # the discriminator too, and capped widths (channel_multiplier not visible) load as well
    g, d, g_ema = models()
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict()}, tmp_path / "noargs.pt")
    out = import_rosinality(tmp_path / "noargs.pt")
    assert same_state(out["g"], g) and same_state(out["d"], d) and same_state(out["g_ema"], g_ema)
    d2 = Discriminator(512, channel_multiplier=1, channel_max=64)
    assert ckpt.infer_discriminator_config(d2.state_dict()) == d2.config


def test_import_rosinality_refuses_args_that_do_not_fit(tmp_path):
    g, d, g_ema = models()
    write_rosinality_file(tmp_path / "his.pt", g, d, g_ema, argparse.Namespace(size=32, latent=32, n_mlp=2,
                                                                              channel_multiplier=2))
    with pytest.raises(CheckpointMismatch, match="to_rgbs.2"):
        import_rosinality(tmp_path / "his.pt")


class NotAllowed:
    pass


def test_import_rosinality_allows_namespace_only(tmp_path):
    g, d, g_ema = models()
    torch.save({"g_ema": g_ema.state_dict(), "args": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        import_rosinality(tmp_path / "evil.pt")
    torch.save({"g_ema": g_ema.state_dict(), "args": argparse.Namespace(size=16)}, tmp_path / "ok.pt")
    with pytest.raises(pickle.UnpicklingError):          # Namespace stays refused outside import_rosinality
        torch.load(tmp_path / "ok.pt", weights_only=True)
    assert import_rosinality(tmp_path / "ok.pt")["g_ema"] is not None


def test_import_rosinality_strips_ddp_prefix(tmp_path):
    g, d, g_ema = models()
    torch.save({"g_ema": {f"module.{k}": v for k, v in g_ema.state_dict().items()}}, tmp_path / "ddp.pt")
    assert same_state(import_rosinality(tmp_path / "ddp.pt")["g_ema"], g_ema)


def test_load_transfer_points_rosinality_files_to_import_rosinality(tmp_path):
    g, d, g_ema = models()
    write_rosinality_file(tmp_path / "his.pt", g, d, g_ema, argparse.Namespace(size=16))
    with pytest.raises(pickle.UnpicklingError, match="import_rosinality"):
        load_transfer(tmp_path / "his.pt")
    torch.save({"g_ema": g_ema.state_dict()}, tmp_path / "his_noargs.pt")
    with pytest.raises(ValueError, match="import_rosinality"):
        load_transfer(tmp_path / "his_noargs.pt")


# ------------------------------------------------------------------------------ hostile files
def test_a_pickled_global_is_refused_naming_it(tmp_path):
    """torch's refusal is a paragraph whose point comes last; ours is one line naming what would have run."""
    import pickle as pk

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "x": Evil()}, path)
    with pytest.raises(pk.UnpicklingError) as e:
        ckpt.import_rosinality(path)
    msg = str(e.value)
    assert "would import or run posix.system" in msg and "\n" not in msg and str(path) in msg


def test_a_torch_zip_whose_pickle_would_crash_the_unpickler_is_refused(tmp_path):
    """A dict key of 100,000 nested tuples inside a torch zip's data.pkl: torch.load would die of SIGSEGV
    (CPython hashes tuples recursively in C); the walk before it refuses it in one line. In a subprocess,
    so that a crash fails this test instead of killing the test run."""
    import pickle as pk
    import subprocess
    import sys
    import zipfile

    bomb = pk.PROTO + b"\x04" + pk.EMPTY_DICT + pk.EMPTY_TUPLE + pk.TUPLE1 * 100_000 + pk.NONE + pk.SETITEM + pk.STOP
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", bomb)
        z.writestr("archive/version", "3\n")
    code = ("import sys, pickle\nfrom cartoon_stylegan.checkpoint import import_rosinality, load_transfer\n"
            "for f in (import_rosinality, load_transfer):\n"
            "    try:\n        f(sys.argv[1])\n    except pickle.UnpicklingError as e:\n        print('refused:', e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("refused:")]
    assert len(lines) == 2 and all("archive/data.pkl: objects nested more than 1000 deep" in ln for ln in lines), p.stdout
