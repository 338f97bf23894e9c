"""How a generator (or a fine-tuned variant) is sampled: the one home of FreezeSG's W+ prefix and
of the truncation centre.

A :class:`Sampler` turns latents z into W+ and images the way a variant was trained:

1. each network maps z (and the mixing latents z2) to w with its own mapping network;
2. truncation pulls each w towards *that network's own* centre (:func:`truncation_center`);
3. style mixing: W+ entries ``[0, crossover)`` from z, the rest from z2 (``Generator.make_wplus``);
4. FreezeSG: the first ``prefix_len`` W+ entries are replaced by those the frozen *source*
   generator's mapping gives for the same z, z2 and crossover (computed without a graph).

Training (the loop), evaluation (``metrics.GeneratorDataset``, ``metrics.structure_distance``)
and the swap grid all sample through this class, so a variant is drawn the same way
everywhere. A fine-tuning run records what its sampler needs in its final checkpoint's meta
(:meth:`Sampler.meta`); :meth:`Sampler.for_variant` reads it back.
"""
from __future__ import annotations

import hashlib
import weakref

import torch

__all__ = ["Sampler", "device_of", "truncation_center", "set_truncation_center", "pinned_truncation_center", "as_sampler",
           "CENTER_SEED", "PREFIX_META_KEY"]

CENTER_SEED = 7919  # seed of the z whose mean mapped w is the truncation centre
PREFIX_META_KEY = "wplus_prefix_len"  # the transfer checkpoint's meta key of the FreezeSG prefix length

_centers: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_pinned: "dict[str, torch.Tensor]" = {}  # mapping-weights digest -> centre (any module with those weights)
_MAX_PINNED = 64


def device_of(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _mapping_stamp(G) -> tuple:
    """Changes whenever the mapping network's weights change (in-place updates bump ``_version``)."""
    return tuple((p.data_ptr(), p._version, str(p.device), p.dtype) for p in G.style.parameters())


def _mapping_digest(G) -> str:
    h = hashlib.sha256()
    for name, p in G.style.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def set_truncation_center(G, center: torch.Tensor) -> None:
    """Pin the truncation centre of G's mapping network to ``center`` (1, style_dim) -- an imported
    network's tracked ``w_avg`` (NVlabs) or ``latent_avg`` (rosinality). The pin belongs to the mapping
    *weights* (a content digest), so copies, reloads and weight-swapped generators with the same mapping
    share it; once the weights change (training), :func:`truncation_center` computes the centre again."""
    c = center.detach().to("cpu", torch.float32).reshape(1, -1).clone()
    if c.shape[1] != G.style_dim:
        raise ValueError(f"set_truncation_center: centre has {c.shape[1]} entries, G's style_dim is {G.style_dim}")
    if len(_pinned) >= _MAX_PINNED:
        _pinned.pop(next(iter(_pinned)))
    _pinned[_mapping_digest(G)] = c
    _centers.pop(G, None)


def pinned_truncation_center(G) -> torch.Tensor | None:
    """The centre pinned for G's current mapping weights (on the CPU), or None."""
    return _pinned.get(_mapping_digest(G)) if _pinned else None


@torch.no_grad()
def truncation_center(G, n: int = 4096, seed: int = CENTER_SEED) -> torch.Tensor:
    """G's truncation centre (1, style_dim) on G's device: the pinned one (:func:`set_truncation_center`)
    while G's mapping is unchanged, else the mean of G's mapping over ``n`` z drawn on the CPU from ``seed``.

    Cached per generator until its mapping weights change.
    """
    stamp = _mapping_stamp(G)
    cached = _centers.get(G)
    if cached is None or cached[0] != stamp:
        pinned = pinned_truncation_center(G)
        cached = _centers[G] = (stamp, {}, pinned)
    if cached[2] is not None:
        p = next(G.style.parameters())
        return cached[2].to(device=p.device, dtype=p.dtype)
    key = (int(n), int(seed))
    if key not in cached[1]:
        z = torch.randn(int(n), G.style_dim, generator=torch.Generator().manual_seed(int(seed)))
        cached[1][key] = G.mapping(z.to(device_of(G))).mean(0, keepdim=True)
    return cached[1][key]


class Sampler:
    """How one generator, or a variant of a source generator, is sampled.

    Args:
        G: the generator (its device is where sampling runs).
        source: the frozen source generator that supplies the W+ prefix (needed when prefix_len > 0).
        prefix_len: number of leading W+ entries taken from ``source`` (FreezeSG; 0 = none).
        truncation: psi; w <- c + psi * (w - c) towards each network's own centre (1 = off).
        center_n: number of z averaged for the truncation centre.
    """

    def __init__(self, G, *, source=None, prefix_len: int = 0, truncation: float = 1.0, center_n: int = 4096):
        prefix_len = int(prefix_len)
        if not 0 <= prefix_len <= G.n_latent:
            raise ValueError(f"Sampler: prefix_len must be in [0, {G.n_latent}], got {prefix_len}")
        if prefix_len and source is None:
            raise ValueError("Sampler: prefix_len > 0 needs the source generator")
        if source is not None and (source.style_dim != G.style_dim or source.n_latent != G.n_latent):
            raise ValueError(f"Sampler: source {source.config} and G {G.config} differ in style_dim or W+ length")
        if center_n < 1:
            raise ValueError(f"Sampler: center_n must be >= 1, got {center_n}")
        self.G, self.source, self.prefix_len = G, source, prefix_len
        self.truncation, self.center_n = float(truncation), int(center_n)

    @classmethod
    def for_variant(cls, G, source, meta: dict | None, truncation: float = 1.0) -> "Sampler":
        """The sampler of a fine-tuned variant as it was trained: ``meta`` is its transfer checkpoint's
        meta (the prefix length under :data:`PREFIX_META_KEY`; absent = 0)."""
        return cls(G, source=source, prefix_len=int((meta or {}).get(PREFIX_META_KEY, 0) or 0),
                   truncation=truncation)

    def meta(self) -> dict:
        """What :meth:`for_variant` needs, for a checkpoint's meta."""
        return {PREFIX_META_KEY: self.prefix_len}

    def replace(self, **changes) -> "Sampler":
        """A copy with some constructor arguments changed (e.g. ``G=G_ema`` or ``truncation=0.7``)."""
        args = dict(G=self.G, source=self.source, prefix_len=self.prefix_len, truncation=self.truncation,
                    center_n=self.center_n)
        args.update(changes)
        return Sampler(**args)

    @property
    def style_dim(self) -> int:
        return int(self.G.style_dim)

    @property
    def device(self) -> torch.device:
        return device_of(self.G)

    def __repr__(self) -> str:
        return f"Sampler(prefix_len={self.prefix_len}, truncation={self.truncation}, G={self.G.config})"

    # ------------------------------------------------------------------ latents
    def _wplus_of(self, G, z, z2, crossover) -> torch.Tensor:
        """Mapping (with a graph if G's mapping requires grad), truncation to G's centre, mixing."""
        dev = device_of(G)
        ws = [G.mapping(v.to(dev)) if v is not None else None for v in (z, z2)]
        if self.truncation != 1:
            c = truncation_center(G, self.center_n)
            ws = [c + self.truncation * (w - c) if w is not None else None for w in ws]
        return G.make_wplus(ws[0], ws[1], crossover)

    def wplus(self, z: torch.Tensor, z2: torch.Tensor | None = None, crossover: int | None = None) -> torch.Tensor:
        """W+ (N, n_latent, style_dim) for z (N, style_dim), mixed with z2 from ``crossover`` on
        (``crossover=None`` with z2: one random index, see ``Generator.make_wplus``), with the source's
        first ``prefix_len`` entries. The result may be a broadcast view."""
        if z2 is not None and crossover is None:
            crossover = int(torch.randint(1, self.G.n_latent, ()).item())  # the same one for both networks
        wplus = self._wplus_of(self.G, z, z2, crossover)
        k = self.prefix_len
        if k:
            with torch.no_grad():
                prefix = self._wplus_of(self.source, z, z2, crossover)[:, :k]
            wplus = torch.cat([prefix.to(device=wplus.device, dtype=wplus.dtype), wplus[:, k:]], 1)
        return wplus

    # ------------------------------------------------------------------ images
    def __call__(self, z: torch.Tensor, *, noise_mode: str = "const", noise=None, z2: torch.Tensor | None = None,
                 crossover: int | None = None, net=None, **returns):
        """Images for z: ``net(W+, input_is="wplus", ...)``, as ``Generator.forward`` returns them
        (``return_latents`` / ``return_rgbs`` / ``return_features`` give ``(image, extras)``).

        net: the module that runs the synthesis, default ``G``; the training loop passes G as
            wrapped by Accelerate (DDP) so that gradients are synchronised.
        """
        return (net if net is not None else self.G)(self.wplus(z, z2, crossover), input_is="wplus",
                                                    noise_mode=noise_mode, noise=noise, **returns)


def seed_latents(seeds, style_dim: int, device=None) -> torch.Tensor:
    """z (len(seeds), style_dim): row i is ``torch.randn(style_dim)`` under ``manual_seed(seeds[i])`` on the CPU
    (the same image for a seed on any device): swap grids, generate, sefa, mix."""
    z = torch.stack([torch.randn(style_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    return z if device is None else z.to(device)


def as_sampler(x, *, truncation: float | None = None) -> Sampler:
    """A Sampler as given, or the plain sampler of a Generator; ``truncation`` overrides the sampler's."""
    s = x if isinstance(x, Sampler) else Sampler(x)
    return s if truncation is None or truncation == s.truncation else s.replace(truncation=truncation)
