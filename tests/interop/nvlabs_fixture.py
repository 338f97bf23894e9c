"""Tiny pickles with the exact structure of NVlabs' stylegan2-ada-pytorch network snapshots.

Written here from a reading of their ``torch_utils/persistence.py`` (what a pickled persistent
object looks like), ``training/networks.py`` (the modules' attributes, parameters and buffers)
and ``training/training_loop.py`` (the snapshot dict); none of their code is in this file.

A persistent object pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``,
``meta = dict(type='class', version=6, module_src=<source>, class_name=<name>, state=<__dict__>)``.
Here ``module_src`` is a program that, if anything ever executed it, would write the file named
by :data:`SENTINEL_ENV` -- the tests check that it does not exist afterwards.
"""
from __future__ import annotations

import contextlib
import io
import math
import pickle
import sys
import types

import numpy as np
import torch

SENTINEL_ENV = "NVLABS_FIXTURE_SENTINEL"
MODULE_SRC = ("import os\n"
              f"open(os.environ['{SENTINEL_ENV}'], 'w').write('module_src was executed')\n")


def _reconstruct_persistent_obj(meta):  # pickled by reference under torch_utils.persistence
    raise AssertionError("the fixture's reconstruct hook must never be called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):  # pickled by reference as dnnlib.util.EasyDict
    pass


EasyDict.__module__ = "dnnlib.util"
EasyDict.__qualname__ = "EasyDict"


@contextlib.contextmanager
def _their_module_names():
    """Make pickle find the stand-ins under NVlabs' module names while dumping."""
    mods = {"torch_utils": types.ModuleType("torch_utils"),
            "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": types.ModuleType("dnnlib.util")}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class Persistent(torch.nn.Module):
    """Pickles as NVlabs' persistence decorator pickles a module."""

    class_name = "?"

    def __init__(self, *args, **kwargs):
        super().__init__()
        self._init_args, self._init_kwargs = args, kwargs

    def __reduce__(self):
        fields = list(super().__reduce__())
        fields += [None] * max(3 - len(fields), 0)
        meta = dict(type="class", version=6, module_src=MODULE_SRC, class_name=self.class_name, state=fields[2])
        return (_reconstruct_persistent_obj, (meta,), None)


def setup_filter(taps=(1, 3, 3, 1)):
    f = torch.tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def _named(name):
    return type(name, (Persistent,), {"class_name": name})


FullyConnectedLayer, MappingNetwork, SynthesisLayer, ToRGBLayer, SynthesisBlock, SynthesisNetwork, Generator = map(
    _named, ["FullyConnectedLayer", "MappingNetwork", "SynthesisLayer", "ToRGBLayer", "SynthesisBlock",
             "SynthesisNetwork", "Generator"])
Conv2dLayer, DiscriminatorBlock, MinibatchStdLayer, DiscriminatorEpilogue, Discriminator, AugmentPipe = map(
    _named, ["Conv2dLayer", "DiscriminatorBlock", "MinibatchStdLayer", "DiscriminatorEpilogue", "Discriminator",
             "AugmentPipe"])
SynthesisInput = _named("SynthesisInput")


def _rand(*shape, scale=1.0):
    return torch.randn(list(shape)) * scale


def fc(in_f, out_f, lr=1.0, bias_init=0.0, activation="linear"):
    m = FullyConnectedLayer(in_f, out_f, lr_multiplier=lr, bias_init=bias_init, activation=activation)
    m.activation = activation
    m.weight = torch.nn.Parameter(_rand(out_f, in_f) / lr)
    m.bias = torch.nn.Parameter(bias_init + _rand(out_f, scale=0.1))
    m.weight_gain = lr / np.sqrt(in_f)
    m.bias_gain = lr
    return m


def synthesis_layer(cin, cout, w_dim, res, up=1, use_noise=True, conv_clamp=None):
    m = SynthesisLayer(cin, cout, w_dim=w_dim, resolution=res, up=up)
    m.resolution, m.up, m.use_noise, m.activation, m.conv_clamp = res, up, use_noise, "lrelu", conv_clamp
    m.register_buffer("resample_filter", setup_filter())
    m.padding = 1
    m.act_gain = np.sqrt(2)  # numpy float64, as bias_act's activation table gives it
    m.affine = fc(w_dim, cin, bias_init=1)
    m.weight = torch.nn.Parameter(_rand(cout, cin, 3, 3))
    if use_noise:
        m.register_buffer("noise_const", torch.randn(res, res))
        m.noise_strength = torch.nn.Parameter(_rand(scale=0.2).reshape([]))
    m.bias = torch.nn.Parameter(_rand(cout, scale=0.1))
    return m


def torgb(cin, w_dim, conv_clamp=None):
    m = ToRGBLayer(cin, 3, w_dim=w_dim)
    m.conv_clamp = conv_clamp
    m.affine = fc(w_dim, cin, bias_init=1)
    m.weight = torch.nn.Parameter(_rand(3, cin, 1, 1))
    m.bias = torch.nn.Parameter(_rand(3, scale=0.1))
    m.weight_gain = 1 / np.sqrt(cin)
    return m


def generator(res=16, w_dim=16, n_map=2, channel_base=16384, channel_max=16, lr_mlp=0.01, use_noise=True,
              conv_clamp=None, architecture="skip", c_dim=0, seed=0):
    """A StyleGAN2 generator structured as stylegan2-ada-pytorch's, with random weights."""
    torch.manual_seed(seed)
    log2 = int(math.log2(res))
    blocks = [2 ** i for i in range(2, log2 + 1)]
    ch = {r: min(channel_base // r, channel_max) for r in blocks}
    kw = EasyDict(mapping_kwargs=EasyDict(num_layers=n_map),
                  synthesis_kwargs=EasyDict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0,
                                            conv_clamp=conv_clamp))
    G = Generator(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=res, img_channels=3, **kw)
    G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels = w_dim, c_dim, w_dim, res, 3
    S = SynthesisNetwork(w_dim=w_dim, img_resolution=res, img_channels=3)
    S.w_dim, S.img_resolution, S.img_resolution_log2, S.img_channels = w_dim, res, log2, 3
    S.block_resolutions, S.num_ws = blocks, 0
    for r in blocks:
        b = SynthesisBlock(ch.get(r // 2, 0) if r > 4 else 0, ch[r], w_dim=w_dim, resolution=r)
        b.in_channels, b.w_dim, b.resolution, b.img_channels = (ch[r // 2] if r > 4 else 0), w_dim, r, 3
        b.is_last, b.architecture, b.use_fp16, b.channels_last = r == res, architecture, False, False
        b.register_buffer("resample_filter", setup_filter())
        b.num_conv, b.num_torgb = 0, 0
        if r == 4:
            b.const = torch.nn.Parameter(torch.randn(ch[r], r, r))
        else:
            b.conv0 = synthesis_layer(ch[r // 2], ch[r], w_dim, r, up=2, use_noise=use_noise, conv_clamp=conv_clamp)
            b.num_conv += 1
        b.conv1 = synthesis_layer(ch[r], ch[r], w_dim, r, use_noise=use_noise, conv_clamp=conv_clamp)
        b.num_conv += 1
        b.torgb = torgb(ch[r], w_dim, conv_clamp=conv_clamp)
        b.num_torgb += 1
        if architecture == "resnet" and r > 4:
            b.skip = Conv2dLayer(ch[r // 2], ch[r], kernel_size=1)
        S.num_ws += b.num_conv
        setattr(S, f"b{r}", b)
    S.num_ws += 1
    G.synthesis, G.num_ws = S, S.num_ws
    M = MappingNetwork(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, num_ws=S.num_ws, num_layers=n_map)
    M.z_dim, M.c_dim, M.w_dim, M.num_ws, M.num_layers, M.w_avg_beta = w_dim, c_dim, w_dim, S.num_ws, n_map, 0.995
    if c_dim:
        M.embed = fc(c_dim, w_dim)
    for i in range(n_map):
        setattr(M, f"fc{i}", fc(w_dim * (2 if c_dim and i == 0 else 1), w_dim, lr=lr_mlp, activation="lrelu"))
    M.register_buffer("w_avg", _rand(w_dim, scale=0.3))
    G.mapping = M
    return G


def conv2d_layer(cin, cout, k, bias=True, activation="linear", down=1, conv_clamp=None):
    m = Conv2dLayer(cin, cout, kernel_size=k, bias=bias, activation=activation, down=down)
    m.activation, m.up, m.down, m.conv_clamp = activation, 1, down, conv_clamp
    m.register_buffer("resample_filter", setup_filter())
    m.padding = k // 2
    m.weight_gain = 1 / np.sqrt(cin * k * k)
    m.act_gain = np.sqrt(2) if activation == "lrelu" else 1.0
    m.weight = torch.nn.Parameter(_rand(cout, cin, k, k))
    m.bias = torch.nn.Parameter(_rand(cout, scale=0.1)) if bias else None
    return m


def discriminator(res=16, channel_base=16384, channel_max=16, mbstd_group=4, conv_clamp=None, seed=1):
    """A StyleGAN2 (resnet) discriminator structured as stylegan2-ada-pytorch's, with random weights."""
    torch.manual_seed(seed)
    log2 = int(math.log2(res))
    blocks = [2 ** i for i in range(log2, 2, -1)]
    ch = {r: min(channel_base // r, channel_max) for r in blocks + [4]}
    D = Discriminator(c_dim=0, img_resolution=res, img_channels=3)
    D.c_dim, D.img_resolution, D.img_resolution_log2, D.img_channels = 0, res, log2, 3
    D.block_resolutions = blocks
    for r in blocks:
        b = DiscriminatorBlock(0 if r == res else ch[r], ch[r], ch[r // 2], resolution=r)
        b.in_channels, b.resolution, b.img_channels, b.first_layer_idx = (0 if r == res else ch[r]), r, 3, 0
        b.architecture, b.use_fp16, b.channels_last = "resnet", False, False
        b.register_buffer("resample_filter", setup_filter())
        b.num_layers = 0
        if r == res:
            b.fromrgb = conv2d_layer(3, ch[r], 1, activation="lrelu", conv_clamp=conv_clamp)
        b.conv0 = conv2d_layer(ch[r], ch[r], 3, activation="lrelu", conv_clamp=conv_clamp)
        b.conv1 = conv2d_layer(ch[r], ch[r // 2], 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        b.skip = conv2d_layer(ch[r], ch[r // 2], 1, bias=False, down=2)
        setattr(D, f"b{r}", b)
    E = DiscriminatorEpilogue(ch[4], cmap_dim=0, resolution=4)
    E.in_channels, E.cmap_dim, E.resolution, E.img_channels, E.architecture = ch[4], 0, 4, 3, "resnet"
    E.mbstd = MinibatchStdLayer(group_size=mbstd_group, num_channels=1)
    E.mbstd.group_size, E.mbstd.num_channels = mbstd_group, 1
    E.conv = conv2d_layer(ch[4] + 1, ch[4], 3, activation="lrelu", conv_clamp=conv_clamp)
    E.fc = fc(ch[4] * 16, ch[4], activation="lrelu")
    E.out = fc(ch[4], 1)
    D.b4 = E
    return D


def augment_pipe():
    a = AugmentPipe(xflip=1)
    a.register_buffer("p", torch.tensor(0.2))
    a.xflip = 1.0
    return a


def snapshot_bytes(G=None, D=None, G_ema=None, extra=None) -> bytes:
    """The bytes of a ``network-snapshot-*.pkl``: ``pickle.dump`` of the snapshot dict, default protocol."""
    data = dict(training_set_kwargs=EasyDict(path="/data/ffhq256.zip", resolution=G.img_resolution if G else 16,
                                             xflip=False),
                G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe())
    data.update(extra or {})
    buf = io.BytesIO()
    with _their_module_names():
        pickle.dump(data, buf)
    return buf.getvalue()


def stylegan3_generator(w_dim=16, seed=0):
    """The outline of a StyleGAN3 generator record (mapping + SynthesisInput + L* layers)."""
    torch.manual_seed(seed)
    G = generator(res=16, w_dim=w_dim, seed=seed)
    S = SynthesisNetwork(w_dim=w_dim, img_resolution=16, img_channels=3)
    S.w_dim, S.img_resolution, S.img_channels = w_dim, 16, 3
    S.input = SynthesisInput(w_dim=w_dim, channels=16, size=36, sampling_rate=16, bandwidth=2)
    S.input.affine = fc(w_dim, 4)
    S.input.register_buffer("freqs", torch.randn(16, 2))
    for name in ("L0_36_16", "L1_36_16"):
        setattr(S, name, SynthesisLayer())
    G.synthesis = S
    return G
