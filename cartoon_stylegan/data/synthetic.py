"""Procedurally rendered face domains for the embedded default: ``faces`` and ``cartoons``.

Both domains draw the same *geometry factors* per sample (face position, size and
tilt; skin tone; hair colour, length and fringe; eye size, spacing and height; mouth
width, height and curve; background and shirt colour) from the same distributions,
and differ only in how a sample is *rendered*:

- ``faces`` ("photos"): smooth sphere shading, soft shadows (fringe on forehead,
  chin on neck, head on background), a fine noise texture and a slight blur;
- ``cartoons``: flat fills from a small palette, dark outlines, larger round eyes
  with a highlight.

Every sample is deterministic in ``(seed, index)``. The two domains use different
derived seed streams, so ``render("faces", s, i)`` and ``render("cartoons", s, i)``
are *unpaired* samples from the same factor distribution (``draw(domain, factors)``
renders one factor set both ways when a paired picture is wanted).

Rendering is numpy-vectorised over a batch of samples: every shape is an
approximate signed distance (in normalised image units) on a coordinate grid, and
antialiasing is the clipped distance measured in pixels (no supersampling). All
operations are element-wise per sample, so a sample renders to the same bytes
alone or inside any batch.

Features are sized in face units, which are a fixed fraction of the image, so the
eyes (dark iris inside a light eye) and the mouth stay several pixels large at
32 px; the noise texture and the blur fade out at low resolution, where a small
generator would otherwise spend its capacity on speckle.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np

__all__ = [
    "Factors", "SyntheticDomain", "SYNTHETIC_DOMAINS", "sample_factors", "draw",
    "render", "render_batch", "preview_grid", "check_resolution", "get_domain",
]

MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024

# --------------------------------------------------------------------------- factors

# Skin tones, light to dark; a factor in [0, 1] interpolates along these stops.
_SKIN = np.array([
    [0.98, 0.86, 0.76], [0.93, 0.74, 0.60], [0.80, 0.58, 0.42],
    [0.60, 0.40, 0.27], [0.40, 0.25, 0.16],
], np.float32)
_HAIR = np.array([
    [0.09, 0.07, 0.07],   # black
    [0.30, 0.18, 0.10],   # dark brown
    [0.55, 0.35, 0.18],   # brown
    [0.80, 0.36, 0.12],   # ginger
    [0.93, 0.80, 0.42],   # blonde
    [0.72, 0.72, 0.74],   # grey
], np.float32)
_IRIS = np.array([[0.30, 0.17, 0.08], [0.18, 0.38, 0.62], [0.25, 0.45, 0.25], [0.10, 0.08, 0.07]], np.float32)
_SHIRT = np.array([
    [0.85, 0.30, 0.30], [0.25, 0.45, 0.85], [0.30, 0.65, 0.35], [0.95, 0.65, 0.20],
    [0.60, 0.35, 0.75], [0.93, 0.93, 0.93], [0.20, 0.20, 0.25], [0.20, 0.65, 0.70],
], np.float32)
_N_BG = 8  # background hues: continuous for faces, this many flat ones for cartoons


@dataclass(frozen=True)
class Factors:
    """Per-sample geometry and colour factors, each a float32 (or int) array of shape (N,).

    Positions are in normalised image units (the image spans [-1, 1] on each axis,
    y down); face features are in face units (face half-height = 1).
    """
    cx: np.ndarray          # face centre x
    cy: np.ndarray          # face centre y
    size: np.ndarray        # face half-height, image units
    tilt: np.ndarray        # radians, positive = clockwise
    skin: np.ndarray        # [0, 1], light -> dark
    hair: np.ndarray        # int index into the hair colours
    hair_jitter: np.ndarray # [-1, 1] brightness jitter of the hair colour
    hair_len: np.ndarray    # [0, 1], chin-short -> shoulder-long
    fringe: np.ndarray      # fringe line height, face units (negative = above centre)
    fringe_slope: np.ndarray
    eye_r: np.ndarray       # eye half-width, face units
    eye_dx: np.ndarray      # half distance between the eyes, face units
    eye_y: np.ndarray       # eye height, face units
    iris: np.ndarray        # int index into the iris colours
    gaze: np.ndarray        # [-1, 1] horizontal iris offset
    mouth_y: np.ndarray
    mouth_w: np.ndarray     # mouth half-width, face units
    mouth_curve: np.ndarray # > 0 smile, < 0 frown (face units of sag at the centre)
    bg_hue: np.ndarray      # [0, 1)
    shirt: np.ndarray       # int index into the shirt colours
    light: np.ndarray       # light direction angle (rendering of "photos" only)
    noise_seed: np.ndarray  # uint32, seeds the per-pixel texture

    def __len__(self):
        return len(self.cx)

    def __getitem__(self, i) -> "Factors":
        i = np.atleast_1d(np.arange(len(self))[i])
        return Factors(**{f.name: getattr(self, f.name)[i] for f in fields(self)})

    @staticmethod
    def concat(parts) -> "Factors":
        return Factors(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Factors)})


def _one_sample(seed: int, stream: int, index: int) -> tuple:
    rng = np.random.default_rng([seed, stream, index])
    u = rng.random(24)
    lerp = lambda k, a, b: a + (b - a) * u[k]  # noqa: E731
    return (
        lerp(0, -0.14, 0.14), lerp(1, -0.20, -0.02), lerp(2, 0.46, 0.58), lerp(3, -0.22, 0.22),
        u[4], int(u[5] * len(_HAIR)), lerp(6, -1, 1), u[7],
        lerp(8, -0.62, -0.30), lerp(9, -0.30, 0.30),
        lerp(10, 0.17, 0.23), lerp(11, 0.31, 0.39), lerp(12, -0.14, -0.02),
        int(u[13] * len(_IRIS)), lerp(14, -1, 1),
        lerp(15, 0.42, 0.56), lerp(16, 0.22, 0.38), lerp(17, -0.10, 0.16),
        u[18], int(u[19] * len(_SHIRT)), lerp(20, -2.4, -0.7),
        int(rng.integers(0, 2**32, dtype=np.uint64)),
    )


def sample_factors(seed: int, stream: int, indices) -> Factors:
    """Factors of samples ``indices`` of seed stream ``(seed, stream)`` (deterministic)."""
    indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
    if seed < 0 or stream < 0 or (indices < 0).any():
        raise ValueError(f"seed, stream and indices must be >= 0 (got seed={seed}, stream={stream})")
    rows = [_one_sample(int(seed), int(stream), int(i)) for i in indices]
    cols = list(zip(*rows)) if rows else [[] for _ in fields(Factors)]
    out = {}
    for f, col in zip(fields(Factors), cols):
        dtype = np.uint32 if f.name == "noise_seed" else (
            np.int64 if f.name in ("hair", "iris", "shirt") else np.float32)
        out[f.name] = np.asarray(col, dtype=dtype)
    return Factors(**out)


# --------------------------------------------------------------------------- geometry

def _col(a):
    """(N,) -> (N, 1, 1) for broadcasting against (N, H, W)."""
    return np.asarray(a, np.float32)[:, None, None]


def _sd_ellipse(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse (exact for circles).

    First-order: (k - 1) * k / |grad k|, with the distance scale clipped to [min, max]
    of the half-axes so the centre is well defined.
    """
    xa, yb = x / a, y / b
    kk = xa * xa + yb * yb
    g2 = (xa / a) ** 2 + (yb / b) ** 2
    scale = np.sqrt(kk / (g2 + 1e-20))
    scale = np.clip(scale, np.minimum(a, b), np.maximum(a, b))
    return (np.sqrt(kk) - 1.0) * scale


def _sd_box(x, y, hw, hh, r):
    """Signed distance to a box of half-size (hw, hh) with corner radius r."""
    qx = np.abs(x) - (hw - r)
    qy = np.abs(y) - (hh - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


@dataclass
class _Scene:
    """Signed distances (image units) of every part, shape (N, H, W), plus helpers."""
    res: int
    lx: np.ndarray
    ly: np.ndarray
    s: np.ndarray
    body: np.ndarray
    neck: np.ndarray
    hair_back: np.ndarray
    face: np.ndarray
    hair_front: np.ndarray
    below_fringe: np.ndarray   # face units below the fringe line (negative = above)
    eyes: np.ndarray
    iris: np.ndarray
    pupil: np.ndarray
    lid: np.ndarray            # upper-lid stroke
    glint: np.ndarray
    mouth: np.ndarray
    nose: np.ndarray
    cheeks: np.ndarray


def _scene(f: Factors, res: int, eye_scale: float, eye_round: float) -> _Scene:
    n = len(f)
    t = (np.arange(res, dtype=np.float32) + 0.5) * (2.0 / res) - 1.0
    X, Y = t[None, None, :], t[None, :, None]
    cx, cy, s = _col(f.cx), _col(f.cy), _col(f.size)
    ct, st = _col(np.cos(f.tilt)), _col(np.sin(f.tilt))
    dx, dy = X - cx, Y - cy
    lx = (ct * dx + st * dy) / s          # face-local coordinates, face units
    ly = (-st * dx + ct * dy) / s

    # body: an upright ellipse under the head, in image units
    body = _sd_ellipse(dx, dy - 1.85 * s, 1.50 * s, 0.80 * s)
    neck = _sd_box(lx, ly - 1.00, 0.30, 0.45, 0.10) * s
    face = _sd_ellipse(lx, ly, 0.78, 1.0) * s

    cap = _sd_ellipse(lx, ly + 0.10, 0.90, 1.04) * s
    bottom = 0.15 + 1.15 * _col(f.hair_len)
    back_box = _sd_box(lx, ly - (bottom - 0.10) / 2, 0.92, (bottom + 0.10) / 2, 0.22) * s
    hair_back = np.minimum(cap, back_box)
    fringe_line = _col(f.fringe) + _col(f.fringe_slope) * lx + 0.035 * np.cos(lx * 14.0)
    below_fringe = ly - fringe_line
    hair_front = np.maximum(cap, below_fringe * s)

    er = _col(f.eye_r) * eye_scale
    ey, edx = _col(f.eye_y), _col(f.eye_dx) * (1 + 0.15 * (eye_scale - 1))
    ex = np.abs(lx) - edx                   # both eyes through the mirror symmetry
    eyy = ly - ey
    eyes = _sd_ellipse(ex, eyy, er, er * eye_round) * s
    ix = ex - _col(f.gaze) * 0.25 * er * np.sign(lx)   # both irises look the same way
    iris = _sd_ellipse(ix, eyy, er * 0.62, er * 0.62 * max(eye_round, 0.95)) * s
    iris = np.maximum(iris, eyes)
    pupil = _sd_ellipse(ix, eyy, er * 0.28, er * 0.28) * s
    lid = np.maximum(_sd_ellipse(ex, eyy, er * 1.05, er * eye_round * 1.05) * s,
                     (eyy + 0.35 * er * eye_round) * s)          # top cap of the eye
    glint = _sd_ellipse(ix + 0.22 * er, eyy + 0.22 * er, er * 0.2, er * 0.2) * s

    mw, mc = _col(f.mouth_w), _col(f.mouth_curve)
    my = _col(f.mouth_y)
    mxn = np.clip(lx / mw, -1.0, 1.0)
    centre_line = my + mc * (1.0 - mxn * mxn)       # smile: the middle sags (y is down)
    slope = 1.0 + (2.0 * mc * mxn / mw) ** 2
    mouth_dist = np.abs(ly - centre_line) / np.sqrt(slope)
    mouth = np.maximum(mouth_dist - 0.065, np.abs(lx) - mw) * s

    nose = _sd_ellipse(lx - 0.02, ly - 0.22, 0.10, 0.16) * s
    cheeks = _sd_ellipse(np.abs(lx) - 0.48, ly - 0.30, 0.14, 0.09) * s
    return _Scene(res, lx, ly, s, body, neck, hair_back, face, hair_front, below_fringe,
                  eyes, iris, pupil, lid, glint, mouth, nose, cheeks)


def _alpha(d, pix, soft=1.0):
    """Coverage of a shape from its signed distance: linear ramp one `soft` pixel wide."""
    return np.clip(0.5 - d / (pix * soft), 0.0, 1.0)[..., None]


def _paint(img, alpha, colour):
    img += (colour - img) * alpha


def _hsv_to_rgb(h, s, v):
    h = np.asarray(h, np.float32)
    k = (np.array([5.0, 3.0, 1.0], np.float32) + h[:, None] * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _skin_colour(t, quantise: bool):
    t = np.asarray(t, np.float32) * (len(_SKIN) - 1)
    if quantise:
        return _SKIN[np.rint(t).astype(int)]
    i = np.minimum(t.astype(int), len(_SKIN) - 2)
    w = (t - i)[:, None]
    return _SKIN[i] * (1 - w) + _SKIN[i + 1] * w


def _c(rgb):
    """(N, 3) -> (N, 1, 1, 3)."""
    return np.asarray(rgb, np.float32)[:, None, None, :]


def _blur121(img):
    """Separable [1, 2, 1] / 4 blur with edge padding, (N, H, W, C)."""
    p = np.concatenate([img[:, :1], img, img[:, -1:]], axis=1)
    img = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * 0.25
    p = np.concatenate([img[:, :, :1], img, img[:, :, -1:]], axis=2)
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) * 0.25


def _to_uint8(img):
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- renderers

def draw_faces(f: Factors, res: int) -> np.ndarray:
    """'Photo' rendering: smooth shading, soft shadows, fine texture, slight blur."""
    n, pix = len(f), 2.0 / res
    sc = _scene(f, res, eye_scale=1.0, eye_round=0.72)
    soft = 1.4 if res >= 64 else 1.0
    t = (np.arange(res, dtype=np.float32) + 0.5) * (2.0 / res) - 1.0

    # light direction (image plane angle + elevation) for the sphere shading
    la = _col(f.light)
    lxd, lyd, lzd = 0.55 * np.cos(la), 0.55 * np.sin(la), np.float32(0.835)

    bg = _hsv_to_rgb(f.bg_hue, 0.28, 0.82)
    grad = (1.06 - 0.12 * (t[None, :, None] + 1) / 2)          # lighter at the top
    vign = 1.0 - 0.10 * (t[None, None, :] ** 2 + t[None, :, None] ** 2) / 2
    img = _c(bg) * (grad * vign)[..., None]
    img = np.broadcast_to(img, (n, res, res, 3)).astype(np.float32)

    # soft drop shadow of head + hair on the background, away from the light
    off_x, off_y = -0.10 * np.cos(la) * sc.s, -0.10 * np.sin(la) * sc.s
    head = np.minimum(sc.face, sc.hair_back)
    shift = _shift(head, off_x, off_y, pix)
    shadow = np.clip(0.5 - shift / (0.22 * sc.s), 0, 1) * 0.30
    img *= (1.0 - shadow)[..., None]

    def sphere(lx, ly, a, b):
        nx, ny = lx / a, ly / b
        nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
        return np.clip(nx * lxd + ny * lyd + nz * lzd, 0.0, 1.0)

    shirt = _c(_SHIRT[f.shirt])
    bshade = (0.75 + 0.30 * sphere((t[None, None, :] - _col(f.cx)) / sc.s,
                                   (t[None, :, None] - _col(f.cy)) / sc.s - 1.85, 1.6, 0.9))
    _paint(img, _alpha(sc.body, pix, soft), shirt * bshade[..., None])

    skin = _c(_skin_colour(f.skin, quantise=False))
    neck_shade = 0.62 + 0.30 * np.clip((sc.ly - 0.75) / 0.45, 0, 1)
    _paint(img, _alpha(sc.neck, pix, soft), skin * neck_shade[..., None])

    hair = _c(_HAIR[f.hair] * (1 + 0.10 * f.hair_jitter[:, None]))
    hshade = 0.55 + 0.60 * sphere(sc.lx, sc.ly + 0.10, 1.0, 1.2)
    hair_shaded = hair * hshade[..., None]
    _paint(img, _alpha(sc.hair_back, pix, soft), hair_shaded * 0.85)

    fshade = 0.50 + 0.62 * sphere(sc.lx, sc.ly, 0.80, 1.05)
    # soft shadows: the fringe on the forehead, the nose beside it
    fshade = fshade * (1.0 - 0.35 * np.exp(-np.maximum(sc.below_fringe, 0) / 0.10))
    fshade = fshade * (1.0 - 0.10 * np.clip(0.5 - sc.nose / (0.10 * sc.s), 0, 1))
    _paint(img, _alpha(sc.face, pix, soft), skin * fshade[..., None])

    # eyes: light eye, coloured iris, dark pupil, dark upper lid
    _paint(img, _alpha(sc.eyes, pix, soft), np.float32(0.92) * (0.85 + 0.15 * fshade[..., None]))
    _paint(img, _alpha(sc.iris, pix, soft), _c(_IRIS[f.iris] * 0.9))
    _paint(img, _alpha(np.maximum(sc.pupil, sc.eyes), pix, soft), np.float32(0.04))
    _paint(img, _alpha(sc.lid, pix, soft), _c(_HAIR[f.hair] * 0.35 + 0.03))

    lips = _c(np.array([0.55, 0.16, 0.18], np.float32) * (0.55 + 0.45 * _skin_colour(f.skin, False)))
    _paint(img, _alpha(sc.mouth, pix, soft), lips)

    _paint(img, _alpha(sc.hair_front, pix, soft), hair_shaded)

    # fine texture, fading out at low resolution (speckle a small G would copy)
    amp = 0.03 * min(1.0, res / 256)
    if amp > 0.004:
        noise = np.stack([np.random.default_rng(int(k)).standard_normal((res, res), np.float32)
                          for k in f.noise_seed])
        img += (amp * noise)[..., None]
    # slight blur, none at 32 px and below
    mix = float(np.clip((res - 32) / 96, 0, 1)) * 0.6
    if mix > 0:
        img = img + mix * (_blur121(img) - img)
    return _to_uint8(img)


def _shift(d, ox, oy, pix):
    """Distance field translated by (ox, oy) image units, (N,) each; whole pixels, edge-clamped."""
    out = np.empty_like(d)
    res = d.shape[-1]
    for i in range(d.shape[0]):
        sx = int(np.rint(float(np.ravel(ox)[i]) / pix))
        sy = int(np.rint(float(np.ravel(oy)[i]) / pix))
        xi = np.clip(np.arange(res) - sx, 0, res - 1)
        yi = np.clip(np.arange(res) - sy, 0, res - 1)
        out[i] = d[i][yi][:, xi]
    return out


_OUTLINE = np.float32([0.10, 0.07, 0.07])
_BG_FLAT = _hsv_to_rgb(np.arange(_N_BG, dtype=np.float32) / _N_BG, 0.35, 0.97)


def draw_cartoons(f: Factors, res: int) -> np.ndarray:
    """Cartoon rendering: flat palette fills, dark outlines, larger round eyes."""
    n, pix = len(f), 2.0 / res
    sc = _scene(f, res, eye_scale=1.32, eye_round=1.0)
    ow = max(1.0, res / 56) * pix          # outline width, image units

    bg = _BG_FLAT[(np.asarray(f.bg_hue) * _N_BG).astype(int) % _N_BG]
    img = np.broadcast_to(_c(bg), (n, res, res, 3)).astype(np.float32)

    def fill(d, colour, outline=True):
        a = _alpha(d, pix)
        if outline:
            inner = _alpha(d + ow, pix)
            colour = _OUTLINE + (colour - _OUTLINE) * inner
        _paint(img, a, colour)

    fill(sc.body, _c(_SHIRT[f.shirt]))
    skin = _c(_skin_colour(f.skin, quantise=True))
    fill(sc.neck, skin * 0.85)
    hair = _c(_HAIR[f.hair])
    fill(sc.hair_back, hair)
    fill(sc.face, skin)
    _paint(img, _alpha(sc.cheeks, pix) * 0.35, _c(np.array([[0.95, 0.45, 0.45]], np.float32)))
    fill(sc.eyes, np.float32(1.0))
    _paint(img, _alpha(sc.iris, pix), _OUTLINE)
    _paint(img, _alpha(np.maximum(sc.glint, sc.iris), pix), np.float32(1.0))
    _paint(img, _alpha(sc.mouth, pix), np.float32([0.62, 0.10, 0.14]))
    fill(sc.hair_front, hair)
    return _to_uint8(img)


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class SyntheticDomain:
    """A named rendering of the shared factors; ``stream`` separates the domains' seeds."""
    name: str
    stream: int
    draw: Callable[[Factors, int], np.ndarray]

    def render_batch(self, seed: int, indices, resolution: int, chunk: int = 64) -> np.ndarray:
        check_resolution(resolution)
        indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        f = sample_factors(seed, self.stream, indices)
        out = np.empty((len(indices), resolution, resolution, 3), np.uint8)
        step = max(1, chunk * 4096 // resolution ** 2)   # ~chunk * 64^2 pixels per draw call
        for i in range(0, len(indices), step):
            out[i:i + step] = self.draw(f[i:i + step], resolution)
        return out

    def __call__(self, seed: int, index: int, resolution: int) -> np.ndarray:
        return self.render_batch(seed, [index], resolution)[0]


SYNTHETIC_DOMAINS: dict[str, SyntheticDomain] = {
    "faces": SyntheticDomain("faces", 1, draw_faces),
    "cartoons": SyntheticDomain("cartoons", 2, draw_cartoons),
}


def get_domain(name: str) -> SyntheticDomain:
    """Domain by name (``faces`` or ``synthetic:faces``); a clear error for unknown names."""
    key = name[len("synthetic:"):] if name.startswith("synthetic:") else name
    try:
        return SYNTHETIC_DOMAINS[key]
    except KeyError:
        raise ValueError(f"unknown synthetic domain {name!r}; known: {sorted(SYNTHETIC_DOMAINS)}") from None


def check_resolution(resolution) -> int:
    if (not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool)
            or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or resolution & (resolution - 1)):
        raise ValueError(f"resolution must be a power of two in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], "
                         f"got {resolution!r}")
    return int(resolution)


def render(domain: str, seed: int, index: int, resolution: int) -> np.ndarray:
    """One sample: uint8 (H, W, 3), deterministic in (domain, seed, index, resolution)."""
    return get_domain(domain)(seed, index, resolution)


def render_batch(domain: str, seed: int, indices, resolution: int) -> np.ndarray:
    """Samples ``indices``: uint8 (N, H, W, 3), each identical to ``render`` of that index."""
    return get_domain(domain).render_batch(seed, indices, resolution)


def draw(domain: str, factors: Factors, resolution: int) -> np.ndarray:
    """Render given factors in a domain (e.g. the same factors both ways, for a paired picture)."""
    return get_domain(domain).draw(factors, check_resolution(resolution))


def preview_grid(domain: str, seed: int, n: int, resolution: int, pad: int = 2) -> np.ndarray:
    """The first ``n`` samples of a domain tiled in a near-square grid: uint8 (H, W, 3), white gaps."""
    imgs = render_batch(domain, seed, np.arange(n), resolution)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    step = resolution + pad
    out = np.full((rows * step - pad, cols * step - pad, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        out[r * step:r * step + resolution, c * step:c * step + resolution] = im
    return out
