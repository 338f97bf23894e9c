"""Freezing plans: exactly the right parameters train, frozen ones stay bit-identical."""
import copy

import pytest
import torch
from accelerate import Accelerator

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.training import (
    FreezePlan,
    LoopOptions,
    build_optimizers,
    find_latest_resume,
    lazy_ratio,
    train,
)
from cartoon_stylegan.training.losses import d_logistic_loss, g_nonsaturating_loss

SIZE = 32


def _nets(seed=0):
    torch.manual_seed(seed)
    return Generator(SIZE, style_dim=32, n_mlp=2, channel_max=16), Discriminator(SIZE, channel_max=16)


# Expected frozen sets written out by hand from rosinality's layout at 32 px
# (G: 4 px = input, conv1, to_rgb1; 8 px = convs.0/1, to_rgbs.0; 16 = convs.2/3, to_rgbs.1;
#  D: convs.0 fromRGB and convs.1 read 32 px, convs.2 16 px, convs.3 8 px; final_* head).
def _g_prefixes(plan):
    frozen = []
    if plan.freeze_mapping:  # freezing blocks never freezes the mapping by itself (FreezeSG trains it)
        frozen.append("style.")
    up = plan.freeze_g_up_to or 0
    if up >= 4:
        frozen += ["input.", "conv1.", "to_rgb1."]
    if up >= 8:
        frozen += ["convs.0.", "convs.1.", "to_rgbs.0."]
    if up >= 16:
        frozen += ["convs.2.", "convs.3.", "to_rgbs.1."]
    return frozen


def _d_prefixes(plan):
    above = plan.freeze_d_above
    if above is None:
        return []
    return {8: ["convs.0.", "convs.1.", "convs.2."], 16: ["convs.0.", "convs.1."], 32: []}[above]


PLANS = [
    FreezePlan(),
    FreezePlan(freeze_d_above=16),
    FreezePlan(freeze_d_above=8),
    FreezePlan(freeze_g_up_to=4),
    FreezePlan(freeze_g_up_to=8, freeze_mapping=True),
    FreezePlan(freeze_g_up_to=8, freeze_style_up_to=8),
    FreezePlan(freeze_g_up_to=16, freeze_style_up_to=8, freeze_d_above=16, freeze_mapping=True),
    FreezePlan(freeze_mapping=True),
]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: str(p.to_dict()))
def test_exactly_the_planned_parameters_get_grads(plan):
    G, D = _nets()
    g_names, d_names = plan.apply(G, D)
    gf, df = _g_prefixes(plan), _d_prefixes(plan)
    want_g = {n for n, _ in G.named_parameters() if not any(n.startswith(p) for p in gf)}
    want_d = {n for n, _ in D.named_parameters() if not any(n.startswith(p) for p in df)}
    assert g_names == want_g and d_names == want_d

    z = torch.randn(4, 32)
    loss = g_nonsaturating_loss(D(G(z)))
    loss.backward()
    for n, p in G.named_parameters():
        assert (p.grad is not None) == (n in want_g), n
    D.zero_grad(set_to_none=True)
    real = torch.randn(4, 3, SIZE, SIZE)
    d_logistic_loss(D(real), D(G(z).detach())).backward()
    for n, p in D.named_parameters():
        assert (p.grad is not None) == (n in want_d), n


def test_layer_picking_is_not_by_substring():
    torch.manual_seed(0)
    G = Generator(256, style_dim=8, n_mlp=1, channel_max=4)
    names = FreezePlan(freeze_g_up_to=8).g_trainable(G)
    assert "convs.10.conv.weight" in names and "convs.1.conv.weight" not in names
    assert "to_rgbs.1.conv.weight" in names and "to_rgbs.0.conv.weight" not in names


def test_plan_validation_and_refusals():
    with pytest.raises(ValueError):
        FreezePlan(freeze_g_up_to=12)
    G, D = _nets()
    with pytest.raises(ValueError):  # nothing left to train in G
        FreezePlan(freeze_g_up_to=SIZE, freeze_mapping=True).apply(G, D)
    assert FreezePlan(freeze_style_up_to=8).n_wplus_prefix(G) == 4
    assert FreezePlan(freeze_style_up_to=4).n_wplus_prefix(G) == 2
    assert FreezePlan().n_wplus_prefix(G) == 0


def test_optimizers_cover_trainable_only_with_lazy_correction():
    G, D = _nets()
    g_names, d_names = FreezePlan(freeze_g_up_to=8, freeze_d_above=16).apply(G, D)
    opt_g, opt_d = build_optimizers(G, D, g_names, d_names, lr_g=0.002, lr_d=0.004, betas=(0.0, 0.99),
                                    g_reg_every=4, d_reg_every=16)
    assert sum(len(gr["params"]) for gr in opt_g.param_groups) == len(g_names)
    assert sum(len(gr["params"]) for gr in opt_d.param_groups) == len(d_names)
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.002 * 4 / 5)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.004 * 16 / 17)
    assert opt_d.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert lazy_ratio(16, active=False) == 1.0


def _data(batch, size):
    def stream(start_step):
        step = start_step
        while True:
            g = torch.Generator().manual_seed(1000 + step)
            yield torch.rand(batch, 3, size, size, generator=g) * 2 - 1
            step += 1
    return stream


def test_frozen_values_bit_identical_after_training_and_no_optimizer_state(tmp_path):
    G, D = _nets()
    G_ema = copy.deepcopy(G)
    G_src = copy.deepcopy(G)
    plan = FreezePlan(freeze_g_up_to=8, freeze_style_up_to=8, freeze_d_above=16, freeze_mapping=True)
    g0 = {k: v.clone() for k, v in G.state_dict().items()}
    d0 = {k: v.clone() for k, v in D.state_dict().items()}
    e0 = {k: v.clone() for k, v in G_ema.state_dict().items()}
    opts = LoopOptions(kimg=0.012, batch=4, r1_every=2, pl_every=2, tick_kimg=1, sample_kimg=1,
                       snapshot_kimg=1, ema_rampup=None, ema_kimg=0.01)
    res = train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data(4, SIZE), opts=opts, ckpt_dir=tmp_path,
                report=lambda m, s: None, G_source=G_src, freeze=plan)
    assert res.status == "done" and res.step == 3
    g_names, d_names = plan.g_trainable(G), plan.d_trainable(D)
    for name, before in g0.items():
        if name in dict(G.named_parameters()):
            same = torch.equal(G.state_dict()[name], before)
            assert same == (name not in g_names), name
            assert torch.equal(G_ema.state_dict()[name], e0[name]) == (name not in g_names), name
    for name, before in d0.items():
        assert torch.equal(D.state_dict()[name], before) == (name not in d_names), name
    state = ckpt.load_resume(find_latest_resume(tmp_path))
    assert len(state["opt_g"]["state"]) == len(g_names)
    assert len(state["opt_d"]["state"]) == len(d_names)


def test_use_noise_false_leaves_noise_strengths_out_of_training(tmp_path):
    torch.manual_seed(0)
    G = Generator(SIZE, style_dim=32, n_mlp=2, channel_max=16, use_noise=False)
    D = Discriminator(SIZE, channel_max=16)
    G_ema = copy.deepcopy(G)
    noise = {n for n, _ in G.named_parameters() if n.endswith("noise.weight")}
    with torch.no_grad():
        for n, p in G.named_parameters():
            if n in noise:
                p.fill_(0.5)  # any value: it must come out unchanged
    before = {n: p.detach().clone() for n, p in G.named_parameters()}
    g_names = FreezePlan().g_trainable(G)
    assert noise and not (noise & g_names) and g_names == set(before) - noise
    opts = LoopOptions(kimg=0.008, batch=4, r1_every=2, pl_every=1, tick_kimg=1, sample_kimg=1,
                       snapshot_kimg=1, ema_rampup=None, ema_kimg=0.01)
    res = train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data(4, SIZE), opts=opts, ckpt_dir=tmp_path,
                report=lambda m, s: None)
    assert res.status == "done"
    for n, p in G.named_parameters():
        assert torch.equal(p, before[n]) == (n in noise), n
    state = ckpt.load_resume(find_latest_resume(tmp_path))
    assert len(state["opt_g"]["state"]) == len(g_names)


def test_freezesg_structure_loss_starts_at_zero_and_the_prefix_departs_from_the_target_styles(tmp_path):
    """FreezeSG as the paper means it: G, G_ema and the source start as one generator, so the structure
    loss is exactly 0 at step 0; the mapping trains, so after training the injected (source) prefix
    differs from what the target's own mapping gives, while the frozen blocks stay the source's."""
    from cartoon_stylegan.sampling import Sampler
    from cartoon_stylegan.training import StructureLoss

    G, D = _nets()
    G_ema, G_src = copy.deepcopy(G), copy.deepcopy(G)
    plan = FreezePlan(freeze_g_up_to=8, freeze_style_up_to=8)
    figures = []
    opts = LoopOptions(kimg=0.016, batch=4, r1_every=2, pl_weight=0, tick_kimg=0.004, sample_kimg=1,
                       snapshot_kimg=1, ema_rampup=None, ema_kimg=0.01, lr_g=0.01)
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data(4, SIZE), opts=opts, ckpt_dir=tmp_path,
          report=lambda m, s: figures.append((s, m)), G_source=G_src, freeze=plan,
          structure=StructureLoss(up_to=16, weight=1.0))
    assert figures[0][0] == 1 and figures[0][1]["Loss/structure"] == 0.0  # step 0: the same generator
    assert figures[-1][1]["Loss/structure"] > 0.0                         # the 16-px block moved
    z = torch.randn(8, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        injected = Sampler(G, source=G_src, prefix_len=plan.n_wplus_prefix(G)).wplus(z)
        own = G.make_wplus(G.mapping(z))
        assert torch.equal(injected[:, :4], G_src.make_wplus(G_src.mapping(z))[:, :4])
        assert not torch.allclose(injected[:, :4], own[:, :4])  # the target mapping trained
    for n, p in G.named_parameters():
        if n.startswith(("input.", "conv1.", "to_rgb1.", "convs.0.", "convs.1.", "to_rgbs.0.")):
            assert torch.equal(p, dict(G_src.named_parameters())[n]) and torch.equal(p, dict(G_ema.named_parameters())[n])
