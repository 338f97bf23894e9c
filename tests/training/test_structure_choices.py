"""The structure loss's choices (reduce: mean | sum, source_w: target | own) through the Gmain phase,
against a plain float64 reimplementation written here; the defaults bit-identical to the loss as it
was before the choices existed; gradients by finite differences."""
import copy
import math

import pytest
import torch
from accelerate import Accelerator

from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.sampling import Sampler
from cartoon_stylegan.training import LoopOptions, StructureLoss
from cartoon_stylegan.training.losses import structure_loss
from cartoon_stylegan.training.phases import StyleGAN2Phases

SIZE, DIM, BATCH = 16, 8, 3
PREFIX_8PX = 4  # W+ entries 0..3 drive the 4 and 8 px blocks (FreezeSG up to 8 px)


def _source(seed=0):
    torch.manual_seed(seed)
    return Generator(SIZE, style_dim=DIM, n_mlp=1, channel_max=8).requires_grad_(False)


def _moved(G, *, mapping=0.0, synthesis=0.0, seed=1):
    """A copy of G with its mapping and/or synthesis parameters moved by seeded noise of that scale."""
    out = copy.deepcopy(G).requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            scale = mapping if name.startswith("style.") else synthesis
            if scale:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


def _gmain(src, tgt, loss: StructureLoss, *, prefix=0, mixing=1.0, seed=3):
    """Loss/structure of one Gmain phase, and the phase's draws (z1, z2, crossover, noise)."""
    torch.manual_seed(0)
    D = Discriminator(SIZE, channel_max=8)
    phases = StyleGAN2Phases(Accelerator(cpu=True), G=tgt, D=D, sampler=Sampler(tgt, source=src, prefix_len=prefix),
                             opts=LoopOptions(batch=BATCH, mixing_prob=mixing), G_source=src, structure=loss)
    phases.begin_step(seed, 0, 0)
    real = torch.zeros(BATCH, 3, SIZE, SIZE)
    figure = phases.accumulate_gradients("Gmain", real)["Loss/structure"]
    phases.begin_step(seed, 0, 0)  # the same draws again, in the phase's order
    z1, z2, cross = phases._latents(BATCH)
    noise = tgt.make_noise(BATCH, generator=phases.gen)
    return figure, (z1, z2, cross, noise)


# ------------------------------------------------------------------ the plain reimplementation
def _wplus64(G, z1, z2, cross):
    """W+ written out: entry i is w(z1) below the crossover, w(z2) from it on."""
    w1 = G.style(z1)
    w2 = None if z2 is None else G.style(z2)
    return torch.stack([w1 if (w2 is None or i < cross) else w2 for i in range(G.n_latent)], 1)


def _reference(src, tgt, draws, *, up_to, on, reduce, source_w, prefix=0):
    z1, z2, cross, noise = draws
    s64, t64 = copy.deepcopy(src).double(), copy.deepcopy(tgt).double()
    z1 = z1.double()
    z2 = None if z2 is None else z2.double()
    noise = [n.double() for n in noise]
    with torch.no_grad():
        own = _wplus64(s64, z1, z2, cross)
        w_t = _wplus64(t64, z1, z2, cross)
        w_t[:, :prefix] = own[:, :prefix]
        w_s = own if source_w == "own" else w_t
        key = "rgbs" if on == "rgb" else "features"
        flags = {"return_rgbs": on == "rgb", "return_features": on == "features"}
        out_t = t64.synthesis(w_t, noise=noise, **flags)[1][key]
        out_s = s64.synthesis(w_s, noise=noise, **flags)[1][key]
    n_blocks = int(math.log2(up_to)) - 2
    terms = []
    for k in range(1, n_blocks + 1):  # block 0 is the 4 px input block
        a, b = out_t[k].flatten().tolist(), out_s[k].flatten().tolist()
        terms.append(sum((x - y) ** 2 for x, y in zip(a, b)) / len(a))
    return sum(terms) / len(terms) if reduce == "mean" else sum(terms)


@pytest.mark.parametrize("on", ["rgb", "features"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("source_w", ["target", "own"])
def test_gmain_structure_loss_matches_float64_reimplementation(on, reduce, source_w):
    src = _source()
    tgt = _moved(src, mapping=0.3, synthesis=0.05)
    loss = StructureLoss(up_to=16, on=on, reduce=reduce, source_w=source_w)
    got, draws = _gmain(src, tgt, loss)
    assert draws[1] is not None  # mixing_prob=1: the crossover is part of what is compared
    want = _reference(src, tgt, draws, up_to=16, on=on, reduce=reduce, source_w=source_w)
    assert want > 0
    assert got.item() == pytest.approx(want, rel=2e-5)


def test_sum_is_n_blocks_times_mean():
    src = _source()
    tgt = _moved(src, mapping=0.3, synthesis=0.05)
    mean, _ = _gmain(src, tgt, StructureLoss(up_to=16, reduce="mean", source_w="own"))
    total, _ = _gmain(src, tgt, StructureLoss(up_to=16, reduce="sum", source_w="own"))
    assert total.item() == pytest.approx(2 * mean.item(), rel=1e-6)


def test_own_w_sees_a_drifted_mapping_and_target_w_does_not():
    src = _source()
    for source_w in ("target", "own"):  # nothing moved: zero either way
        got, _ = _gmain(src, _moved(src), StructureLoss(up_to=8, source_w=source_w))
        assert got.item() == 0.0
    drifted = _moved(src, mapping=0.3)  # only the target's mapping moved
    got_target, _ = _gmain(src, drifted, StructureLoss(up_to=8, source_w="target"))
    got_own, draws = _gmain(src, drifted, StructureLoss(up_to=8, source_w="own"))
    assert got_target.item() == 0.0  # the same synthesis on the same W+
    assert got_own.item() > 1e-6
    want = _reference(src, drifted, draws, up_to=8, on="rgb", reduce="mean", source_w="own")
    assert got_own.item() == pytest.approx(want, rel=1e-3)  # a small difference of float32 images


def test_freezesg_prefix_is_the_sources_own_w():
    """With the source's W injected up to 8 px, a drifted target mapping is invisible to the 8 px block
    (the frozen layers get the source's own W) and visible from 16 px on, under source_w: own only."""
    src = _source()
    drifted = _moved(src, mapping=0.3)
    for up_to, source_w, positive in ((8, "own", False), (16, "own", True), (16, "target", False)):
        got, draws = _gmain(src, drifted, StructureLoss(up_to=up_to, source_w=source_w), prefix=PREFIX_8PX)
        assert (got.item() > 1e-6) if positive else (got.item() == 0.0), (up_to, source_w)
        want = _reference(src, drifted, draws, up_to=up_to, on="rgb", reduce="mean", source_w=source_w,
                          prefix=PREFIX_8PX)
        assert got.item() == pytest.approx(want, rel=1e-3, abs=1e-12)  # small differences of float32 images


@pytest.mark.parametrize("mixing", [0.0, 1.0])
def test_defaults_are_the_loss_as_it_was(mixing):
    """StructureLoss(up_to) with its defaults: the source runs on the target's detached W+ (the code as
    it was before reduce and source_w), bit for bit."""
    src = _source()
    tgt = _moved(src, mapping=0.3, synthesis=0.05)
    got, (z1, z2, cross, noise) = _gmain(src, tgt, StructureLoss(up_to=16), mixing=mixing, prefix=PREFIX_8PX)
    with torch.no_grad():
        _, ex_t = Sampler(tgt, source=src, prefix_len=PREFIX_8PX)(z1, z2=z2, crossover=cross, noise=noise,
                                                                   return_latents=True, return_rgbs=True)
        _, ex_s = src.synthesis(ex_t["latents"], noise=noise, stop_res=16, return_rgbs=True)
    terms = [torch.nn.functional.mse_loss(t, s) for s, t in zip(ex_s["rgbs"][1:3], ex_t["rgbs"][1:3])]
    assert torch.equal(got, torch.stack(terms).mean())


def test_gradient_into_the_target_mapping_matches_finite_differences():
    """source_w: own: the loss reaches the target's mapping weights; d loss / d weight by gradcheck
    (the source's side, on its own W, is a constant)."""
    src = _source().double()
    tgt = _moved(src, mapping=0.3).double()
    loss = StructureLoss(up_to=8, reduce="sum", source_w="own")
    z = torch.randn(2, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    noise = src.make_noise(2, generator=torch.Generator().manual_seed(5))
    noise = [n.double() for n in noise]
    with torch.no_grad():
        _, ex_s = src.synthesis(src.make_wplus(src.mapping(z)), noise=noise, stop_res=8, return_rgbs=True)
    params = {n: p.detach() for n, p in tgt.named_parameters()}

    def of_weight(w):
        _, ex_t = torch.func.functional_call(tgt, {**params, "style.1.weight": w}, (z,),
                                             {"noise": noise, "return_rgbs": True})
        return loss(ex_s, ex_t)

    w0 = params["style.1.weight"].clone().requires_grad_(True)
    assert of_weight(w0).item() > 0
    assert torch.autograd.gradcheck(of_weight, (w0,), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_reduce_and_source_w_are_checked():
    a = [torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 8, 8)]
    b = [torch.ones(1, 3, 4, 4) * 3, torch.ones(1, 3, 8, 8)]
    assert structure_loss(a, b, reduce="sum").item() == pytest.approx(4 + 1)
    assert structure_loss(a, b).item() == pytest.approx((4 + 1) / 2)
    with pytest.raises(ValueError, match="reduce"):
        structure_loss(a, b, reduce="max")
    with pytest.raises(ValueError, match="reduce"):
        StructureLoss(up_to=8, reduce="max")
    with pytest.raises(ValueError, match="source_w"):
        StructureLoss(up_to=8, source_w="source")


def test_config_lineage_leaves_the_later_keys_out_at_their_old_behaviour():
    """A training dir trained before reduce and source_w existed keeps its lineage (and checkpoints)."""
    from pipeline.config import to_record
    from stages.finetune import StructureLossConfig

    assert to_record(StructureLossConfig(up_to=16)) == {"up_to": 16, "weight": 1.0, "on": "rgb"}
    assert to_record(StructureLossConfig(up_to=16, reduce="sum", source_w="own")) == {
        "up_to": 16, "weight": 1.0, "on": "rgb", "reduce": "sum", "source_w": "own"}
