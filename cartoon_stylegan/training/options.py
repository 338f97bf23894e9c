"""The training loop's settings, declared once (help, range, default), and what a run returns.

`LoopOptions` is the single declaration: the pipeline's config sections for pretrain and
fine-tune are derived from it (`toolbox.settings.derive`), and a fine-tuning
variant's overrides are its all-optional copy. Ranges are checked here, on construction,
and by the config loader from the same field metadata.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from toolbox.settings import SettingError, check_fields, setting

__all__ = ["LoopOptions", "FreezeOptions", "TrainResult", "NonFiniteLossError", "RUN_ONLY"]

# Settings that say how a run is carried out, not what it trains: a change to one of them
# keeps a run's checkpoints (the budget and the reporting intervals).
RUN_ONLY = ("kimg", "tick_kimg", "sample_kimg", "snapshot_kimg", "keep_checkpoints", "grid", "log_every", "compile")


@dataclass
class LoopOptions:
    """Every setting of the GAN loop."""

    kimg: float = setting(100.0, min=0.0, help="training budget in thousands of real images shown to D "
                          "(all processes together)")
    batch: int = setting(32, min=1, max=4096, help="images per step per process (global batch = batch x processes)")
    lr_g: float = setting(0.002, min=0.0, max=1.0, help="generator Adam learning rate (before the lazy-"
                          "regularisation correction)")
    lr_d: float = setting(0.002, min=0.0, max=1.0, help="discriminator Adam learning rate (before the lazy-"
                          "regularisation correction)")
    lr_mapping: float = setting(1.0, min=0.0, max=1000.0, later=1.0, help="the mapping network's Adam learning rate as a "
                                "multiple of lr_g (1: the same). Its layers already run at model.lr_mlp (0.01) of "
                                "their stored scale, so a fine-tune's mapping barely moves at 1; 10-100 lets it "
                                "adapt (Adam's step does not depend on the gradient's scale)")
    betas: list[float] = setting(factory=lambda: [0.0, 0.99], min=0.0, max=0.999999, length=2,
                                 help="Adam betas of both optimisers")
    r1_gamma: float = setting(10.0, min=0.0, help="R1 weight gamma (penalty x gamma / 2); 0 disables R1")
    r1_every: int = setting(16, min=1, help="lazy R1: regularise D every this many steps (loss scaled by it)")
    pl_weight: float = setting(2.0, min=0.0, help="path-length regularisation weight; 0 disables it")
    pl_every: int = setting(4, min=1, help="lazy path-length regularisation every this many steps")
    pl_batch_shrink: int = setting(2, min=1, help="the path-length batch is batch // pl_batch_shrink")
    pl_decay: float = setting(0.01, min=0.0, max=1.0, help="decay of the running mean path length")
    mixing_prob: float = setting(0.9, min=0.0, max=1.0, help="style-mixing probability (two latents, random "
                                 "crossover)")
    ema_kimg: float = setting(10.0, min=0.0, help="G_ema half-life in thousands of images")
    ema_rampup: float | None = setting(0.05, min=0.0, help="half-life at most ema_rampup x images seen "
                                       "(null = off)")
    ada: bool = setting(False, help="adaptive discriminator augmentation on reals and fakes")
    ada_target: float = setting(0.6, min=0.0, max=1.0, help="ADA target for E[sign(D(real))]")
    ada_kimg: float = setting(500.0, min=0.001, help="ADA speed: p can go 0 -> 1 in this many kimg")
    ada_interval: int = setting(4, min=1, help="adjust the ADA probability every this many steps")
    ada_p_init: float = setting(0.0, min=0.0, max=1.0, help="initial augmentation probability")
    ada_preset: str = setting("bgc", help="transforms ADA uses (training.ada.AUGMENT_PRESETS)")
    tick_kimg: float = setting(1.0, min=0.001, help="report figures every this many kimg")
    sample_kimg: float = setting(10.0, min=0.001, help="draw the sample grid every this many kimg")
    snapshot_kimg: float = setting(10.0, min=0.001, help="write a resume checkpoint every this many kimg")
    keep_checkpoints: int = setting(3, min=1, help="keep only the newest K resume checkpoints")
    seed: int = setting(0, min=0, help="seed of every random draw of the loop (and of the sample grid)")
    grid: list[int] = setting(factory=lambda: [8, 4], min=1, length=2, help="sample grid [columns, rows]")
    log_every: int = setting(10, min=1, help="refresh the progress bar figures every this many steps")
    compile: bool = setting(False, help="torch.compile G and D for the main phases (D main, G main); the lazy "
                            "regularisers keep the eager networks (their second-order gradients do not "
                            "compile). The first steps pay the compile (~2 min for the demo model on 2 CPU "
                            "cores, where the step is then 0.95-1.22x eager: off for the demo); for long runs; "
                            "not with the deepspeed backend")

    def __post_init__(self):
        self.betas = [float(b) for b in self.betas]
        self.grid = [int(g) for g in self.grid]
        from cartoon_stylegan.training.ada import AUGMENT_PRESETS

        if self.ada_preset not in AUGMENT_PRESETS:
            raise SettingError(f"ada_preset: {self.ada_preset!r} is not one of {sorted(AUGMENT_PRESETS)}")
        check_fields(self)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    status: str  # "done" (budget reached) or "stopped" (should_stop; checkpoint written)
    kimg: float  # images seen at the end, in thousands
    step: int  # steps completed at the end
    last_checkpoint: str | None  # newest resume file written or resumed from
    start_step: int = 0  # the step this call started at (> 0 when it resumed)
    resumed_from: str | None = None  # the resume file loaded, if any
    final_network: str | None = None  # network-final.pt (transfer format) when status == "done"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN/Inf; the run stops without writing a checkpoint.

    step: index of the failing step (0-based: the number of steps completed before it);
    names: the figures that were not finite, in phase order (D, R1, G, structure, PL);
    last_checkpoint: the newest resume file, untouched.
    """

    def __init__(self, step: int, names: list[str], last_checkpoint: str | None, kimg: float | None = None):
        self.step, self.names, self.last_checkpoint = step, names, last_checkpoint
        at = f" ({kimg:.3f} kimg done before it)" if kimg is not None else ""
        super().__init__(
            f"non-finite loss at step {step}{at}: {', '.join(names)} "
            f"(no checkpoint written; last good checkpoint: {last_checkpoint or 'none'})"
        )


@dataclass(frozen=True)
class FreezeOptions:
    """The freezing options of a fine-tune (FreezePlan, training/freeze.py, adds the queries): declared
    here once, with help and range, so that a variant's config section is derived from them
    (stages/finetune.py) without importing torch."""

    freeze_d_above: Optional[int] = setting(None, min=4, pow2=True, help="FreezeD: D blocks reading inputs "
                                            "above this resolution do not train (the head always trains)")
    freeze_g_up_to: Optional[int] = setting(None, min=4, pow2=True, help="G synthesis layers up to this resolution "
                                            "do not train (the const input, conv1 and to_rgb1 are 4x4); the "
                                            "mapping network is not frozen by this (see freeze_mapping)")
    freeze_style_up_to: Optional[int] = setting(None, min=4, pow2=True, help="FreezeSG: the W+ entries of layers "
                                                "up to this resolution come from the frozen source mapping network")
    freeze_mapping: bool = setting(False, help="the mapping network (style.*) does not train")

    def __post_init__(self):
        check_fields(self, "FreezePlan.")
