"""StyleGAN2 config-f generator with rosinality's parameter names.

Layout (``L = n_latent = 2 * log2(size) - 2`` W+ entries, ``num_layers`` noise inputs):

=========================  ==========  ===============  ===========
module                     resolution  W+ entry used    noise
=========================  ==========  ===============  ===========
style.1 .. style.n_mlp     mapping     --               --
input, conv1               4           0                noise_0
to_rgb1                    4           1                --
convs.{2j}  (upsampling)   2**(j+3)    2j+1             noise_{2j+1}
convs.{2j+1}               2**(j+3)    2j+2             noise_{2j+2}
to_rgbs.{j}                2**(j+3)    2j+3             --
=========================  ==========  ===============  ===========

So the layers at resolutions <= 4 use W+ entries [0, 2) and those <= 2**k use
[0, 2k-2) (:meth:`Generator.n_wplus_up_to`); entry 2k-3 is shared by the last ToRGB
at 2**k and the first conv at 2**(k+1), exactly as in rosinality's model.

The RGB "skip" is the running image: ``skip_4 = to_rgb1(x_4)`` and
``skip_r = to_rgbs.j(x_r) + upsample(skip_{r/2})``; the final image is ``skip_size``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .layers import (ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB, check_shape,
                     stylegan2_channels)

NOISE_MODES = ("random", "const", "none")
INPUT_KINDS = ("z", "w", "wplus")


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


class Generator(nn.Module):
    """StyleGAN2 generator: mapping network ``style`` + synthesis network.

    Args:
        size: output resolution, a power of two >= 4.
        style_dim: dimension of z and w (rosinality's ``latent``).
        n_mlp: number of mapping layers.
        channel_multiplier: 2 for config-f (rosinality's default).
        blur_kernel: 1-D FIR taps for up-sampling.
        lr_mlp: learning-rate multiplier of the mapping network.
        channel_max: cap on every feature-map width (512 reproduces rosinality).
        use_noise: False drops the per-layer noise inputs (NVlabs' ``use_noise``): every
            ``noise_mode`` then acts as ``"none"``. The ``*.noise.weight`` parameters and
            ``noises.*`` buffers stay, so state dicts keep rosinality's layout; they are
            not trained (:meth:`unused_parameter_names`).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01, channel_max: int = 512,
                 use_noise: bool = True):
        super().__init__()
        if not _is_pow2(size) or size < 4:
            raise ValueError(f"Generator size must be a power of two >= 4, got {size!r}")
        if style_dim < 1 or n_mlp < 1 or channel_multiplier < 1 or channel_max < 1:
            raise ValueError(f"Generator: style_dim ({style_dim}), n_mlp ({n_mlp}), channel_multiplier "
                             f"({channel_multiplier}) and channel_max ({channel_max}) must be >= 1")
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier, self.channel_max = channel_multiplier, channel_max
        self.blur_kernel, self.lr_mlp = tuple(float(t) for t in blur_kernel), float(lr_mlp)
        self.use_noise = bool(use_noise)
        self.log_size = int(math.log2(size))
        self.channels = {2 ** r: stylegan2_channels(2 ** r, channel_multiplier, channel_max)
                         for r in range(2, self.log_size + 1)}
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2

        # Creation order follows rosinality's, so the same seed gives the same initial weights.
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="lrelu") for _ in range(n_mlp)])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False, blur_kernel=blur_kernel)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = self.noise_resolution(i)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = c4
        for k in range(3, self.log_size + 1):
            out_ch = self.channels[2 ** k]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able); ``Generator.from_config(g.config)`` rebuilds g."""
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "blur_kernel": list(self.blur_kernel),
                "lr_mlp": self.lr_mlp, "channel_max": self.channel_max, "use_noise": self.use_noise}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Generator":
        unknown = set(cfg) - set(cls.config_keys())
        if unknown:
            raise ValueError(f"Generator config has unknown keys {sorted(unknown)}; known: {cls.config_keys()}")
        return cls(**cfg)

    @staticmethod
    def config_keys() -> tuple[str, ...]:
        return ("size", "style_dim", "n_mlp", "channel_multiplier", "blur_kernel", "lr_mlp", "channel_max",
                "use_noise")

    def with_lr_mlp(self, lr_mlp: float) -> "Generator":
        """A copy whose mapping trains with ``lr_mlp`` and computes the same function: the stored mapping
        weights and biases are rescaled by old/new (equalised learning rate keeps ``lr_mlp`` out of the
        stored values' meaning only up to that factor). A pinned truncation centre stays pinned."""
        from cartoon_stylegan.sampling import pinned_truncation_center, set_truncation_center

        lr_mlp = float(lr_mlp)
        if lr_mlp <= 0:
            raise ValueError(f"with_lr_mlp: lr_mlp must be > 0, got {lr_mlp}")
        p = next(self.parameters())
        new = type(self).from_config({**self.config, "lr_mlp": lr_mlp}).to(device=p.device, dtype=p.dtype)
        ratio = self.lr_mlp / lr_mlp
        state = {k: (v * ratio if k.startswith("style.") else v) for k, v in self.state_dict().items()}
        new.load_state_dict(state, strict=True)
        new.train(self.training)
        pinned = pinned_truncation_center(self)
        if pinned is not None:
            set_truncation_center(new, pinned)
        return new

    def unused_parameter_names(self) -> set[str]:
        """Parameters the forward pass never reads (the noise strengths when ``use_noise`` is off)."""
        if self.use_noise:
            return set()
        return {n for n, _ in self.named_parameters() if n.endswith(".noise.weight")}

    # ------------------------------------------------------------------ layout helpers
    @staticmethod
    def noise_resolution(i: int) -> int:
        """Resolution of noise input ``noises.noise_{i}``."""
        return 2 ** ((i + 5) // 2)

    def n_wplus_up_to(self, res: int) -> int:
        """Number of leading W+ entries used by the layers at resolutions <= ``res``."""
        if not _is_pow2(res) or not 4 <= res <= self.size:
            raise ValueError(f"n_wplus_up_to: res must be a power of two in [4, {self.size}], got {res!r}")
        return 2 * int(math.log2(res)) - 2

    @staticmethod
    def layer_resolution(name: str) -> int | str:
        """Resolution a parameter/buffer belongs to: an int, or ``"mapping"`` for ``style.*``.

        Parsed by dotted components, so ``convs.1`` never matches ``convs.10``.
        """
        parts = name.split(".")
        head = parts[0]
        if head == "style":
            return "mapping"
        if head in ("input", "conv1", "to_rgb1"):
            return 4
        if head in ("convs", "to_rgbs") and len(parts) > 1 and parts[1].isdigit():
            j = int(parts[1]) // 2 if head == "convs" else int(parts[1])
            return 2 ** (j + 3)
        if head == "noises" and len(parts) == 2 and parts[1].startswith("noise_") and parts[1][6:].isdigit():
            return Generator.noise_resolution(int(parts[1][6:]))
        raise ValueError(f"Generator.layer_resolution: {name!r} is not a generator parameter or buffer name")

    # ------------------------------------------------------------------ latents
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, style_dim) -> w (N, style_dim)."""
        check_shape(z, (None, self.style_dim), "Generator.mapping z")
        return self.style(z)

    def make_wplus(self, w: torch.Tensor, w2: torch.Tensor | None = None,
                   crossover: int | None = None) -> torch.Tensor:
        """Broadcast w (N, D) or take W+ (N, L, D) -> (N, L, D); style mixing with ``w2``.

        With ``w2`` (same forms), entries ``[0, crossover)`` come from ``w`` and
        ``[crossover, L)`` from ``w2``; ``crossover=None`` draws one index uniformly from
        [1, L-1] with torch's global RNG (one index for the whole batch, as rosinality).
        The result may be a broadcast view; call ``.contiguous()`` before in-place edits.
        """
        wp = self._as_wplus(w, "make_wplus w")
        if w2 is None:
            if crossover is not None:
                raise ValueError("make_wplus: crossover given without w2")
            return wp
        wp2 = self._as_wplus(w2, "make_wplus w2")
        if wp2.shape[0] != wp.shape[0]:
            raise ValueError(f"make_wplus: w has batch {wp.shape[0]} but w2 has {wp2.shape[0]}")
        if crossover is None:
            crossover = int(torch.randint(1, self.n_latent, ()).item())
        crossover = int(crossover)
        if not 0 <= crossover <= self.n_latent:
            raise ValueError(f"make_wplus: crossover must be in [0, {self.n_latent}], got {crossover}")
        return torch.cat([wp[:, :crossover], wp2[:, crossover:]], 1)

    def _as_wplus(self, w: torch.Tensor, what: str) -> torch.Tensor:
        if w.ndim == 2:
            check_shape(w, (None, self.style_dim), what)
            return w[:, None, :].expand(-1, self.n_latent, -1)
        check_shape(w, (None, self.n_latent, self.style_dim), what)
        return w

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh noise inputs, one (batch, 1, r, r) tensor per layer (to share between generators)."""
        dev = self.input.input.device
        return [torch.randn(batch, 1, r, r, device=dev, generator=generator)
                for r in map(self.noise_resolution, range(self.num_layers))]

    # ------------------------------------------------------------------ synthesis
    def _layer_noise(self, i: int, noise, noise_mode: str, x: torch.Tensor) -> torch.Tensor | None:
        r = self.noise_resolution(i)
        given = noise[i] if noise is not None else None
        if given is not None:
            if given.ndim != 4 or given.shape[1:] != (1, r, r) or given.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"synthesis: noise[{i}] must be (1 or {x.shape[0]}, 1, {r}, {r}), "
                                 f"got {tuple(given.shape)}")
        if not self.use_noise:
            return None
        if given is not None:
            return given
        if noise_mode == "random":
            return torch.randn(x.shape[0], 1, r, r, device=x.device, dtype=x.dtype)
        if noise_mode == "const":
            return getattr(self.noises, f"noise_{i}")
        return None

    def synthesis(self, wplus: torch.Tensor, noise_mode: str = "random", noise: Sequence | None = None,
                  return_rgbs: bool = False, return_features: bool = False,
                  start: tuple[int, torch.Tensor, torch.Tensor] | None = None, stop_res: int | None = None):
        """W+ (N, n_latent, style_dim) -> image (N, 3, size, size) in about [-1, 1].

        noise_mode: ``"random"`` fresh N(0,1) noise per call, ``"const"`` the stored
            ``noises.noise_i`` buffers (rosinality's ``randomize_noise=False``),
            ``"none"`` no noise. ``noise``: optional list of ``num_layers`` entries, each a
            (1 or N, 1, r, r) tensor that overrides the mode for that layer, or None.
        return_rgbs: extras["rgbs"] = the RGB skip after each ToRGB (the running image,
            see module docstring), lowest resolution first; the last one is the image.
        return_features: extras["features"] = the feature map after each resolution's
            last StyledConv (``conv1`` at 4 px, ``convs.{2j+1}`` at 2**(j+3)).
        stop_res: run up to and including the block at ``stop_res`` and return
            ``(skip_at_stop_res, extras)`` with extras["state"] = ``(stop_res, x, skip)``.
        start: such a state (from this or another generator with the same channels at
            that resolution): skip everything up to its resolution and continue from it.
            ``wplus`` and ``noise`` keep their full layout; entries for the skipped layers
            are ignored. rgbs/features then only cover the resolutions run here.

        Returns the image, or ``(image, extras)`` when any of return_rgbs,
        return_features or stop_res is given.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"synthesis: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        check_shape(wplus, (None, self.n_latent, self.style_dim), "Generator.synthesis wplus")
        if noise is not None and len(noise) != self.num_layers:
            raise ValueError(f"synthesis: noise must list {self.num_layers} entries, got {len(noise)}")
        n = wplus.shape[0]
        rgbs: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []

        if start is None:
            res = 4
            x = self.input(n)
            x = self.conv1(x, wplus[:, 0], self._layer_noise(0, noise, noise_mode, x))
            skip = self.to_rgb1(x, wplus[:, 1])
            rgbs.append(skip)
            feats.append(x)
        else:
            res, x, skip = start
            if not _is_pow2(res) or not 4 <= res <= self.size:
                raise ValueError(f"synthesis: start resolution must be a power of two in [4, {self.size}], got {res!r}")
            check_shape(x, (n, self.channels[res], res, res), "Generator.synthesis start features")
            check_shape(skip, (n, 3, res, res), "Generator.synthesis start skip")

        stop = self.size if stop_res is None else stop_res
        if not _is_pow2(stop) or not res <= stop <= self.size:
            raise ValueError(f"synthesis: stop_res must be a power of two in [{res}, {self.size}], got {stop_res!r}")

        while res < stop:
            res *= 2
            j = int(math.log2(res)) - 3
            x = self.convs[2 * j](x, wplus[:, 2 * j + 1], self._layer_noise(2 * j + 1, noise, noise_mode, x))
            x = self.convs[2 * j + 1](x, wplus[:, 2 * j + 2], self._layer_noise(2 * j + 2, noise, noise_mode, x))
            skip = self.to_rgbs[j](x, wplus[:, 2 * j + 3], skip)
            rgbs.append(skip)
            feats.append(x)

        if not (return_rgbs or return_features or stop_res is not None):
            return skip
        extras: dict[str, Any] = {}
        if return_rgbs:
            extras["rgbs"] = rgbs
        if return_features:
            extras["features"] = feats
        if stop_res is not None:
            extras["state"] = (res, x, skip)
        return skip, extras

    # ------------------------------------------------------------------ forward
    def _to_w(self, latents: torch.Tensor, input_is: str, what: str) -> torch.Tensor:
        if input_is == "z":
            check_shape(latents, (None, self.style_dim), f"Generator {what} (z)")
            return self.style(latents)
        if input_is == "w":
            check_shape(latents, (None, self.style_dim), f"Generator {what} (w)")
            return latents
        check_shape(latents, (None, self.n_latent, self.style_dim), f"Generator {what} (wplus)")
        return latents

    def forward(self, latents: torch.Tensor, *, input_is: str = "z", noise_mode: str = "random",
                noise: Sequence | None = None, return_latents: bool = False, return_rgbs: bool = False,
                return_features: bool = False):
        """Images from latents: z (N, D) if ``input_is="z"``, w (N, D) if ``"w"``, W+ (N, L, D) if ``"wplus"``.

        Truncation, style mixing and FreezeSG's source-mapping prefix are part of how a
        generator is *sampled*, not of the network: :class:`cartoon_stylegan.sampling.Sampler`
        makes the W+ and calls this with ``input_is="wplus"``.
        Returns the image (N, 3, size, size), or ``(image, extras)`` with any return_*
        flag: extras["latents"] = the W+ used, "rgbs" / "features" as in :meth:`synthesis`.
        """
        if input_is not in INPUT_KINDS:
            raise ValueError(f"Generator.forward: input_is must be one of {INPUT_KINDS}, got {input_is!r}")
        wplus = self.make_wplus(self._to_w(latents, input_is, "latents"))
        want_extras = return_latents or return_rgbs or return_features
        out = self.synthesis(wplus, noise_mode=noise_mode, noise=noise,
                             return_rgbs=return_rgbs, return_features=return_features)
        if not want_extras:
            return out
        img, extras = out if isinstance(out, tuple) else (out, {})
        if return_latents:
            extras["latents"] = wplus
        return img, extras
