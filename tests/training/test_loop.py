"""The GAN loop on a tiny model on CPU: steps, exact resume, NaN guard, stop, fine-tune extras, compile."""
import copy
import math
import types

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from cartoon_stylegan import checkpoint as ckpt
from cartoon_stylegan.networks import Discriminator, Generator
from cartoon_stylegan.training import (
    FreezePlan,
    LoopOptions,
    NonFiniteLossError,
    RUN_ONLY,
    StructureLoss,
    find_latest_resume,
    read_resume_step,
    resume_path,
    TrainingLoop,
    train,
)

SIZE, BATCH = 16, 4


def _nets(seed=0):
    torch.manual_seed(seed)
    G = Generator(SIZE, style_dim=32, n_mlp=2, channel_max=16)
    D = Discriminator(SIZE, channel_max=16)
    return G, D, copy.deepcopy(G)


def _data(start_step):
    """Batch of step s depends on s only (what exact resume needs)."""
    step = start_step
    while True:
        g = torch.Generator().manual_seed(10_000 + step)
        yield torch.rand(BATCH, 3, SIZE, SIZE, generator=g) * 2 - 1
        step += 1


def _opts(steps, **kw):
    base = dict(kimg=steps * BATCH / 1000, batch=BATCH, tick_kimg=1, sample_kimg=1, snapshot_kimg=1,
                grid=[2, 2], log_every=1)
    base.update(kw)
    return LoopOptions(**base)


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_one_step_changes_both_models_and_ema(tmp_path):
    G, D, G_ema = _nets()
    g0, d0, e0 = _snapshot(G), _snapshot(D), _snapshot(G_ema)
    reports, images = [], []
    batches = iter([next(_data(0))])  # a plain iterable works too
    res = train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=batches, opts=_opts(1, tick_kimg=0.004),
                ckpt_dir=tmp_path, report=lambda m, s: reports.append((m, s)),
                report_image=lambda n, a, s: images.append((n, a, s)))
    assert res.status == "done" and res.step == 1 and res.kimg == pytest.approx(0.004)
    assert _changed(g0, G) and _changed(d0, D) and _changed(e0, G_ema)
    # Figures by name, once per tick, on the main process.
    (metrics, step), = reports
    assert step == 1
    for key in ("Loss/G", "Loss/D", "Loss/R1", "Loss/PL", "Scores/real", "Scores/fake", "ADA/p",
                "Timing/sec_per_kimg", "Timing/img_per_s", "Resources/peak_mem_mb", "Progress/kimg"):
        assert key in metrics and math.isfinite(metrics[key]), key
    # Sample grids (initial and final): uint8 HWC, 2 x 2 tiles.
    assert [s for _, _, s in images] == [0, 1]
    for name, arr, _ in images:
        assert name == "samples" and arr.dtype == np.uint8 and arr.shape == (2 * SIZE, 2 * SIZE, 3)
    # The resume file and the transfer file.
    assert res.last_checkpoint == str(resume_path(tmp_path, 4))
    net = ckpt.load_transfer(res.final_network)
    torch.testing.assert_close(net["g_ema"].state_dict(), G_ema.state_dict())


FINETUNE = dict(
    freeze=FreezePlan(freeze_g_up_to=4, freeze_style_up_to=4, freeze_d_above=8),
    structure=StructureLoss(up_to=8, weight=1.0, on="rgb"),
)


def _finetune_opts(steps, **kw):
    return _opts(steps, r1_every=2, pl_every=3, ada=True, ada_p_init=0.3, ada_interval=2, ada_kimg=0.1,
                 mixing_prob=0.5, ema_kimg=0.01, **kw)


def _run(tmp_path, steps, stop_after=None, seed=0, **kw):
    G, D, G_ema = _nets(seed)
    G_src = _nets(0)[0]  # the frozen source: the same in every run
    done = {"n": 0}

    def should_stop():
        done["n"] += 1
        return stop_after is not None and done["n"] >= stop_after

    res = train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=_finetune_opts(steps, **kw),
                ckpt_dir=tmp_path, report=lambda m, s: None, G_source=G_src, should_stop=should_stop, **FINETUNE)
    return res, (G, D, G_ema)


def _assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def test_interrupted_and_resumed_run_equals_uninterrupted_bitwise(tmp_path):
    steps = 7
    full, nets_full = _run(tmp_path / "full", steps)
    part, _ = _run(tmp_path / "part", steps, stop_after=3)
    assert part.status == "stopped" and part.step == 3
    assert read_resume_step(tmp_path / "part") == 3
    # A fresh process: other initial weights, everything must come from the checkpoint.
    rest, nets_rest = _run(tmp_path / "part", steps, seed=123)
    assert rest.status == "done" and rest.start_step == 3 and rest.resumed_from == part.last_checkpoint
    assert full.step == rest.step == steps

    for a, b in zip(nets_full, nets_rest):
        _assert_same(a.state_dict(), b.state_dict())
    sa = ckpt.load_resume(full.last_checkpoint)
    sb = ckpt.load_resume(rest.last_checkpoint)
    for key in ("g", "d", "g_ema", "opt_g", "opt_d", "ema", "ada", "pl_mean", "step", "nimg"):
        _assert_same(sa[key], sb[key], key)
    assert sa["ada"]["p"] != 0.3  # ADA really ran and moved p


def test_nan_guard_names_step_and_loss_and_keeps_last_checkpoint(tmp_path):
    G, D, G_ema = _nets()
    done = {"n": 0}

    def should_stop():
        done["n"] += 1
        return False

    D.register_forward_hook(lambda m, i, out: out * float("nan") if done["n"] >= 2 else None)
    opts = _opts(5, snapshot_kimg=BATCH / 1000)  # a checkpoint after every step
    with pytest.raises(NonFiniteLossError) as err:
        train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=opts, ckpt_dir=tmp_path,
              report=lambda m, s: None, should_stop=should_stop)
    assert err.value.step == 2 and err.value.names[0] == "Loss/D"
    assert "step 2" in str(err.value) and "Loss/D" in str(err.value)
    last = find_latest_resume(tmp_path)
    assert last == resume_path(tmp_path, 2 * BATCH) and str(last) == err.value.last_checkpoint
    state = ckpt.load_resume(last)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["g"].values())
    assert not (tmp_path / "network-final.pt").exists()


def test_should_stop_checkpoints_and_returns_stopped(tmp_path):
    G, D, G_ema = _nets()
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] == 2

    res = train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=_opts(10), ckpt_dir=tmp_path,
                report=lambda m, s: None, should_stop=should_stop)
    assert res.status == "stopped" and res.step == 2 and calls["n"] == 2
    assert res.last_checkpoint == str(resume_path(tmp_path, 2 * BATCH))
    assert ckpt.load_resume(res.last_checkpoint)["step"] == 2
    assert res.final_network is None and not (tmp_path / "network-final.pt").exists()


def test_keep_last_k_checkpoints(tmp_path):
    G, D, G_ema = _nets()
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data,
          opts=_opts(4, snapshot_kimg=BATCH / 1000, keep_checkpoints=2, pl_weight=0, r1_gamma=0),
          ckpt_dir=tmp_path, report=lambda m, s: None)
    assert sorted(p.name for p in tmp_path.glob("resume-*.pt")) == ["resume-000000012.pt", "resume-000000016.pt"]


def test_structure_loss_is_zero_when_target_equals_source(tmp_path):
    G, D, G_ema = _nets()
    reports = []
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=_opts(2, tick_kimg=BATCH / 1000),
          ckpt_dir=tmp_path, report=lambda m, s: reports.append(m), G_source=copy.deepcopy(G), **FINETUNE)
    assert reports[0]["Loss/structure"] == 0.0  # same z, W+, crossover and noise on both sides
    assert reports[1]["Loss/structure"] > 0.0  # G has moved away from the source


def test_source_styles_prefix_always_used(tmp_path):
    G, D, G_ema = _nets()
    G_src = _nets(7)[0]
    loop = TrainingLoop(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=_opts(1), ckpt_dir=tmp_path,
                        report=None, G_source=G_src, freeze=FreezePlan(freeze_style_up_to=8))
    assert loop.n_prefix == 4 and loop.sampler.prefix_len == 4 and loop.sampler.source is G_src
    assert loop.phases.sampler is loop.sampler  # the phases generate through the loop's one sampler
    z1, z2 = torch.randn(BATCH, 32), torch.randn(BATCH, 32)
    for mix in (None, 2, 5):  # without mixing, crossover inside and after the prefix
        z_2 = None if mix is None else z2
        _, ex = loop.sampler(z1, z2=z_2, crossover=mix, net=loop.G, return_latents=True)
        with torch.no_grad():
            src = G_src.make_wplus(G_src.mapping(z1), None if mix is None else G_src.mapping(z2), mix)
            tgt = G.make_wplus(G.mapping(z1), None if mix is None else G.mapping(z2), mix)
        torch.testing.assert_close(ex["latents"][:, :4], src[:, :4], rtol=0, atol=0)
        torch.testing.assert_close(ex["latents"][:, 4:], tgt[:, 4:], rtol=0, atol=0)


def test_phase_schedule_follows_the_lazy_intervals(tmp_path):
    G, D, G_ema = _nets()
    loop = TrainingLoop(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data,
                        opts=_opts(1, r1_every=4, pl_every=3), ckpt_dir=tmp_path, report=None)
    assert [loop.phases.schedule(s) for s in (0, 1, 3, 4)] == [
        ["Dmain", "Dreg", "Gmain", "Greg"], ["Dmain", "Gmain"], ["Dmain", "Gmain", "Greg"], ["Dmain", "Dreg", "Gmain"]]
    loop.opts.r1_gamma = loop.opts.pl_weight = 0
    assert loop.phases.schedule(0) == ["Dmain", "Gmain"]


def test_corrupt_newest_resume_file_falls_back_to_the_previous_one(tmp_path):
    G, D, G_ema = _nets()
    opts = _opts(3, snapshot_kimg=BATCH / 1000)  # a checkpoint after every step
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=opts, ckpt_dir=tmp_path,
          report=lambda m, s: None)
    newest = resume_path(tmp_path, 3 * BATCH)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated (e.g. a disk ran full)
    with pytest.warns(RuntimeWarning, match=str(newest.name)):
        assert find_latest_resume(tmp_path) == resume_path(tmp_path, 2 * BATCH)
    with pytest.warns(RuntimeWarning, match=str(newest.name)):
        assert read_resume_step(tmp_path) == 2
    G2, D2, E2 = _nets(5)
    with pytest.warns(RuntimeWarning, match=str(newest.name)):
        res = train(Accelerator(cpu=True), G=G2, D=D2, G_ema=E2, data=_data, opts=_opts(4), ckpt_dir=tmp_path,
                    report=lambda m, s: None)
    assert res.start_step == 2 and res.resumed_from == str(resume_path(tmp_path, 2 * BATCH)) and res.step == 4
    # A file that is not a resume file at all is skipped the same way.
    (tmp_path / "resume-999999999.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="resume-999999999.pt"):
        assert find_latest_resume(tmp_path) == resume_path(tmp_path, 4 * BATCH)


def test_refuses_mismatched_resume_and_missing_source(tmp_path):
    G, D, G_ema = _nets()
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=_opts(1), ckpt_dir=tmp_path,
          report=lambda m, s: None)
    G2, D2, E2 = _nets()
    with pytest.raises(ValueError, match="global batch"):
        train(Accelerator(cpu=True), G=G2, D=D2, G_ema=E2, data=_data, opts=_opts(2, batch=8),
              ckpt_dir=tmp_path, report=lambda m, s: None)
    with pytest.raises(ValueError, match="G_source"):
        train(Accelerator(cpu=True), G=G2, D=D2, G_ema=E2, data=_data, opts=_opts(2), ckpt_dir=tmp_path / "x",
              report=lambda m, s: None, freeze=FreezePlan(freeze_style_up_to=4))


# ----------------------------------------------------------------------------- compile: true
# The main phases run torch.compile'd networks, the regularisers the eager ones.

def _compile_run(tmp_path, steps, **kw):
    """A fine-tuning run (FreezeSG + structure loss + ADA) where every step has R1 or path length."""
    G, D, G_ema = _nets()
    opts = LoopOptions(kimg=steps * BATCH / 1000, batch=BATCH, tick_kimg=1, sample_kimg=1, snapshot_kimg=1,
                       grid=[2, 2], r1_every=2, pl_every=2, ada=True, ada_p_init=0.3, ada_interval=2,
                       ada_kimg=0.1, mixing_prob=0.5, ema_kimg=0.01, **kw)
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=opts, ckpt_dir=tmp_path,
          report=lambda m, s: None, G_source=_nets(0)[0],
          freeze=FreezePlan(freeze_g_up_to=4, freeze_style_up_to=4, freeze_d_above=8),
          structure=StructureLoss(up_to=8, weight=1.0, on="rgb"))
    return G, D, G_ema


class _Counting(torch.nn.Module):
    """A stand-in for torch.compile's wrapper: the same module, its calls counted."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, *args, **kwargs):
        self.calls[type(self.inner).__name__] += 1
        return self.inner(*args, **kwargs)


def test_main_phases_go_through_the_compiled_modules_and_regularisers_do_not(tmp_path, monkeypatch):
    calls = {"Generator": 0, "Discriminator": 0}
    monkeypatch.setattr(torch, "compile", lambda m: _Counting(m, calls))
    steps = 4
    compiled = _compile_run(tmp_path / "c", steps, compile=True)
    # One process: G and D are the bare modules, so one wrapper each. Per step: D main's fakes
    # (G) and its two D calls, G main's G and D calls. R1 (steps 0, 2) and path length (0, 2)
    # would add D and G calls if they went through the wrappers.
    assert calls == {"Generator": 2 * steps, "Discriminator": 3 * steps}
    eager = _compile_run(tmp_path / "e", steps, compile=False)
    for a, b in zip(compiled, eager):  # the wrappers change nothing else
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), k


class _Wrapper(torch.nn.Module):
    """Stands for DDP's wrapper: the phases must run D main / G main through it (gradient sync)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_with_wrapped_networks_each_call_site_compiles_the_right_module():
    """Several processes: G and D are wrapped; D main and G main must compile the wrappers (their
    backward reduces gradients), G's loss the bare D (no D gradients), D main's fakes the bare G."""
    import contextlib

    from cartoon_stylegan.sampling import Sampler
    from cartoon_stylegan.training.phases import StyleGAN2Phases

    G, D, _ = _nets()
    Gw, Dw = _Wrapper(G), _Wrapper(D)
    acc = types.SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext,
                                unwrap_model=lambda m: m.module if isinstance(m, _Wrapper) else m,
                                backward=lambda loss: loss.backward())
    phases = StyleGAN2Phases(acc, G=Gw, D=Dw, sampler=Sampler(G), opts=_opts(1, mixing_prob=0.5))
    calls = {}
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        name = {id(Gw): "G wrapped", id(G): "G bare", id(Dw): "D wrapped", id(D): "D bare"}[id(module)]
        calls[name] = 0

        def run(*args, **kwargs):
            calls[name] += 1
            return module(*args, **kwargs)
        return run

    phases.compile_main(compile_fn=fake_compile)
    assert sorted(map(id, compiled)) == sorted(map(id, (Gw, G, Dw, D)))
    real = next(_data(0))
    phases.begin_step(0, 0, 0)
    phases.accumulate_gradients("Dmain", real)
    assert calls == {"D wrapped": 2, "D bare": 0, "G wrapped": 0, "G bare": 1}
    phases.accumulate_gradients("Gmain", real)
    assert calls == {"D wrapped": 2, "D bare": 1, "G wrapped": 1, "G bare": 1}


def test_deepspeed_backend_refuses_compile_in_one_line(tmp_path):
    G, D, G_ema = _nets()
    backend = types.SimpleNamespace(name="deepspeed", held=())
    with pytest.raises(ValueError, match="compile: true is not supported with the deepspeed backend"):
        TrainingLoop(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, backend=backend,
                     opts=LoopOptions(kimg=0.004, batch=BATCH, compile=True), ckpt_dir=tmp_path, report=None)


def test_switching_compile_on_continues_the_run_from_its_checkpoint(tmp_path, monkeypatch):
    assert "compile" in RUN_ONLY  # not part of a training dir's lineage (stages/training.py)
    G, D, G_ema = _nets()
    train(Accelerator(cpu=True), G=G, D=D, G_ema=G_ema, data=_data, opts=_opts(2), ckpt_dir=tmp_path,
          report=lambda m, s: None)
    calls = {"Generator": 0, "Discriminator": 0}
    monkeypatch.setattr(torch, "compile", lambda m: _Counting(m, calls))
    G2, D2, E2 = _nets(5)
    res = train(Accelerator(cpu=True), G=G2, D=D2, G_ema=E2, data=_data, opts=_opts(4, compile=True),
                ckpt_dir=tmp_path, report=lambda m, s: None)
    assert res.start_step == 2 and res.step == 4 and calls["Discriminator"] == 3 * 2


def _compile_loop(tmp_path, compile):
    """An 8-px fine-tuning loop (FreezeSG + structure loss + ADA + mixing; R1 and path length every
    other step), 3 steps: small graphs, so the compile stays near a minute on 2 busy cores."""
    torch.manual_seed(0)
    G, D = Generator(8, style_dim=16, n_mlp=1, channel_max=8), Discriminator(8, channel_max=8)
    source = copy.deepcopy(G)
    opts = LoopOptions(kimg=3 * BATCH / 1000, batch=BATCH, tick_kimg=1, sample_kimg=1, snapshot_kimg=1, grid=[2, 2],
                       r1_every=2, pl_every=2, ada=True, ada_p_init=0.3, mixing_prob=0.5, compile=compile)
    small = lambda start: (torch.nn.functional.avg_pool2d(x, 2) for x in _data(start))  # noqa: E731
    return TrainingLoop(Accelerator(cpu=True), G=G, D=D, G_ema=copy.deepcopy(G), data=small, opts=opts,
                        ckpt_dir=tmp_path, report=lambda m, s: None, G_source=source,
                        freeze=FreezePlan(freeze_g_up_to=4, freeze_style_up_to=4),
                        structure=StructureLoss(up_to=8, weight=1.0, on="rgb"))


@pytest.mark.slow
def test_compiled_phases_give_the_eager_gradients_and_a_compiled_run_checkpoints(tmp_path):
    """Real inductor graphs against the eager phases, each phase from the same seeds: the same
    gradients up to float rounding (fused elementwise kernels round differently). This is the test
    that caught inductor's addmm rewrite dropping ``alpha`` (ops/bias_act.py). Then the compiled loop
    runs to its budget and its checkpoint holds the bare modules' keys (no ``_orig_mod.``)."""
    torch._dynamo.reset()
    loops = {c: _compile_loop(tmp_path / str(c), c) for c in (True, False)}
    real = torch.nn.functional.avg_pool2d(next(_data(0)), 2)
    for phase, net in (("Dmain", "D"), ("Gmain", "G"), ("Dreg", "D"), ("Greg", "G")):
        grads = {}
        for c, loop in loops.items():
            module = getattr(loop, f"{net}_raw")
            for p in module.parameters():
                p.grad = None
            loop.phases.begin_step(0, 0, 0)
            loop.phases.accumulate_gradients(phase, real)
            grads[c] = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        a, b = grads[True], grads[False]
        assert a.shape == b.shape and b.norm() > 0, phase
        if phase.endswith("reg"):  # the eager modules, so the same operations
            assert torch.equal(a, b), phase
        else:
            assert ((a - b).norm() / b.norm()).item() < 1e-5, phase

    loop = loops[True]
    res = loop.run()
    assert res.status == "done" and res.step == 3
    assert all(torch.isfinite(p).all() for p in loop.G_raw.parameters())
    state = ckpt.load_resume(res.last_checkpoint)
    assert state["g"].keys() == loop.G_raw.state_dict().keys() and state["d"].keys() == loop.D_raw.state_dict().keys()
