"""Export: rosinality's layout (his naming rules, written out below from his model.py), the lossless round
trip through import_rosinality, one-network TorchScript/ONNX of a sampler, and the `export` command."""
import json
import os

import pytest
import torch

from cartoon_stylegan.checkpoint import import_rosinality
from cartoon_stylegan.checkpoint.export import ExportError, SamplingNetwork, export_onnx, export_torchscript, to_rosinality
from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.sampling import Sampler, pinned_truncation_center, truncation_center
from cartoon_stylegan.swap import weight_swap
from pipeline.__main__ import main
from rosinality_layout import his_discriminator_table, his_generator_table


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def his_sized():
    """G/D of an architecture his model expresses (channel_max 512, 64 px, channel_multiplier 1)."""
    torch.manual_seed(0)
    G = Generator(64, style_dim=32, n_mlp=2, channel_multiplier=1).eval()
    D = Discriminator(64, channel_multiplier=1)
    with torch.no_grad():
        for n, p in G.named_parameters():
            if n.endswith("noise.weight") or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return G, D


def test_rosinality_layout_matches_his_naming_rules(his_sized):
    G, D = his_sized
    ck = to_rosinality(G, g=G, d=D)
    assert set(ck) == {"g_ema", "g", "d", "latent_avg", "args"}
    assert shapes(ck["g_ema"]) == his_generator_table(64, 32, 2, 1)
    assert shapes(ck["d"]) == his_discriminator_table(64, 1)
    assert ck["args"] == {"size": 64, "latent": 32, "n_mlp": 2, "channel_multiplier": 1}
    assert ck["latent_avg"].shape == (32,)
    torch.testing.assert_close(ck["latent_avg"], truncation_center(G)[0])


def test_round_trip_is_lossless(his_sized, tmp_path):
    G, D = his_sized
    p = tmp_path / "his.pt"
    torch.save(to_rosinality(G, g=G, d=D), p)
    assert torch.load(p, weights_only=True)["args"]["size"] == 64  # his scripts' plain torch.load works
    back = import_rosinality(p)
    for a, b in ((back["g_ema"], G), (back["g"], G), (back["d"], D)):
        assert a.config == b.config
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    torch.testing.assert_close(pinned_truncation_center(back["g_ema"]), truncation_center(G))


def test_export_rescales_another_lr_mlp_and_zeroes_unused_noise(tmp_path):
    torch.manual_seed(1)
    G = Generator(64, style_dim=32, n_mlp=2, channel_multiplier=1, lr_mlp=0.05, use_noise=False).eval()
    with torch.no_grad():
        G.conv1.noise.weight.fill_(0.5)  # never used while use_noise is off
    p = tmp_path / "his.pt"
    torch.save(to_rosinality(G), p)
    back = import_rosinality(p)["g_ema"].eval()
    assert back.lr_mlp == 0.01 and back.use_noise and float(back.conv1.noise.weight.detach()) == 0
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(Sampler(back, truncation=0.5)(z), Sampler(G, truncation=0.5)(z), rtol=1e-4, atol=1e-4)


def test_rosinality_refuses_what_his_model_cannot_express():
    G = Generator(16, style_dim=16, n_mlp=2, channel_max=16)
    with pytest.raises(ExportError, match=r"other channel widths \(4 px: 16 vs 512.*channel_max=16.*torchscript or onnx"):
        to_rosinality(G)
    G = Generator(64, style_dim=16, n_mlp=2, channel_multiplier=4)  # his 64 px width is 1024, ours capped at 512
    with pytest.raises(ExportError, match="64 px: 512 vs 1024"):
        to_rosinality(G)
    G = Generator(64, style_dim=16, n_mlp=2, channel_multiplier=1, blur_kernel=(1, 2, 1))
    with pytest.raises(ExportError, match="blur kernel"):
        to_rosinality(G)


# ------------------------------------------------------------------------------ one network
@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(2)
    return (Generator(16, style_dim=16, n_mlp=2, channel_max=16).eval(),
            Generator(16, style_dim=16, n_mlp=2, channel_max=16).eval())


@pytest.mark.parametrize("kind", ["prefix", "swap"])
def test_sampling_network_draws_what_the_sampler_draws(pair, kind):
    """Its own W+ arithmetic (truncation per mapping, the source prefix) against the Sampler's."""
    src, tgt = pair
    sampler = (Sampler(tgt, source=src, prefix_len=3, truncation=0.6) if kind == "prefix"
               else Sampler(weight_swap(src, tgt, 8), truncation=0.6))
    net = SamplingNetwork(sampler)
    z = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(z), sampler(z, noise_mode="const"))


def test_torchscript_and_onnx_match_pytorch(pair, tmp_path):
    src, tgt = pair
    net = SamplingNetwork(Sampler(tgt, source=src, prefix_len=2, truncation=0.7))
    err = export_torchscript(net, str(tmp_path / "g.ts"))
    assert err <= 1e-4
    ts = torch.jit.load(str(tmp_path / "g.ts"))
    z = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ts(z), net(z), rtol=0, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    assert export_onnx(net, str(tmp_path / "g.onnx")) <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["z"] and [o.name for o in sess.get_outputs()] == ["image"]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(sess.run(None, {"z": z.numpy()})[0]), net(z), rtol=0, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


# ------------------------------------------------------------------------------ the command
def test_export_command(tiny_experiment, tmp_path, capsys, monkeypatch):
    args, src, tgt = tiny_experiment
    out = tmp_path / "out"
    assert main(["export", "--variant", "freezesg", "--format", "torchscript", "--truncation", "0.5",
                 "--out", str(out / "fsg.ts"), *args]) == 0, capsys.readouterr().err
    rec = json.loads((out / "fsg.ts.json").read_text())
    assert rec["prefix_len"] == 2 and rec["truncation"] == 0.5 and rec["max_abs_difference"] <= 1e-4
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out / "fsg.ts"))(z),
                                   Sampler(tgt, source=src, prefix_len=2, truncation=0.5)(z, noise_mode="const"),
                                   rtol=0, atol=1e-5)
    # rosinality: tiny widths refused in one line, FreezeSG's two mappings too
    assert main(["export", "--variant", "freezesg", "--format", "rosinality", "--out", str(out / "x.pt"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --variant freezesg: FreezeSG draws its first 2 W+ entries") and err.count("\n") == 1
    assert "--mapping own or --mapping source" in err
    assert main(["export", "--variant", "freezesg", "--format", "rosinality", "--mapping", "source",
                 "--out", str(out / "x.pt"), *args]) == 2  # the mapping is chosen; the tiny widths still refused
    assert "other channel widths" in capsys.readouterr().err
    assert main(["export", "--variant", "source", "--format", "rosinality", "--out", str(out / "x.pt"), *args]) == 2
    assert "other channel widths" in capsys.readouterr().err and not (out / "x.pt").exists()
    # a checkpoint file, its format found by trying each importer; a FreezeSG variant's file alone is refused
    runs = tmp_path / "runs"
    fsg_file = next(p for p in runs.rglob("network-final.pt") if "freezesg" in str(p))
    assert main(["export", "--checkpoint", str(fsg_file), "--format", "torchscript", "--out", str(out / "v.ts"),
                 *args]) == 2
    assert "a FreezeSG variant" in capsys.readouterr().err
    net_file = next(p for p in runs.rglob("network-final.pt") if "pretrain" in str(p))
    assert main(["export", "--checkpoint", str(net_file), "--format", "torchscript", "--input", "wplus",
                 "--out", str(out / "w.ts"), *args]) == 0, capsys.readouterr().err
    rec = json.loads((out / "w.ts.json").read_text())
    assert rec["from"].endswith("(native)") and rec["input_shape"] == ["N", 6, 32]
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pkl"), "--format", "onnx", "--out",
                 str(out / "n.onnx"), *args]) == 2
    assert "no such file" in capsys.readouterr().err


def test_export_refuses_careless_and_hostile_arguments_in_one_line(tiny_experiment, tmp_path, capsys):
    """An existing --out is not replaced without --overwrite; --out where nothing can be written, a folder or
    a FIFO as --checkpoint, and a checkpoint that would run code: one line each, naming what is wrong."""
    args, _, _ = tiny_experiment
    net_file = next(p for p in (tmp_path / "runs").rglob("network-final.pt") if "pretrain" in str(p))
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    base = ["export", "--checkpoint", str(net_file), "--format", "torchscript"]
    assert main([*base, "--out", str(mine), *args]) == 2
    assert "exists; give another name, or --overwrite" in capsys.readouterr().err and mine.read_text() == "my notes"
    assert main([*base, "--out", str(mine), "--overwrite", *args]) == 0, capsys.readouterr().err
    assert main([*base, "--out", "/proc/nowhere/g.ts", *args]) == 2
    assert "cannot make the folder /proc/nowhere" in capsys.readouterr().err
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for src, why in ((tmp_path, "is a folder"), (fifo, "not a regular file")):
        assert main(["export", "--checkpoint", str(src), "--format", "torchscript", "--out", str(tmp_path / "x.ts"),
                     *args]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    evil = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "x": Evil()}, evil)
    assert main(["export", "--checkpoint", str(evil), "--format", "torchscript", "--out", str(tmp_path / "e.ts"),
                 *args]) == 2
    err = capsys.readouterr().err
    assert "would import or run posix.system" in err and err.count("\n") == 1, err


def test_export_source_from_an_nvlabs_init(tiny_experiment, tmp_path, capsys, monkeypatch):
    """--variant source when the source is finetune.init (an NVlabs pickle): its G and D come through the
    importer, and the exported network draws what the imported one draws (w_avg as the centre)."""
    from . import nvlabs_fixture as fx

    monkeypatch.setenv(fx.SENTINEL_ENV, str(tmp_path / "ran"))
    args, _, _ = tiny_experiment
    pkl = tmp_path / "ffhq-tiny.pkl"
    G = fx.generator(res=16, w_dim=32, n_map=2, channel_max=16, use_noise=False)
    pkl.write_bytes(fx.snapshot_bytes(G=G, D=fx.discriminator(), G_ema=G))
    extra = [f"finetune.init.path={pkl}", "finetune.init.format=nvlabs", "model.use_noise=false"]
    out = tmp_path / "src.ts"
    assert main(["export", "--variant", "source", "--format", "torchscript", "--truncation", "0.5", "--out", str(out),
                 *args, *extra]) == 0, capsys.readouterr().err
    from cartoon_stylegan.checkpoint.nvlabs import import_nvlabs

    g = import_nvlabs(pkl)["g_ema"].eval()
    z = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(z), Sampler(g, truncation=0.5)(z, noise_mode="const"),
                                   rtol=0, atol=1e-5)
    assert not (tmp_path / "ran").exists()
