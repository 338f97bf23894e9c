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
    "Factors", "SyntheticDomain", "SYNTHETIC_DOMAINS", "sample_factors", "shift_geometry", "GAP_SHIFT", "draw",
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


def _one_sample(seed: int, stream: int, index: int) -> tuple:
    rng = np.random.default_rng([seed, stream, index])
    u = rng.random(24)
    lerp = lambda k, a, b: a + (b - a) * u[k]  # noqa: E731
    return (
        lerp(0, -0.14, 0.14), lerp(1, -0.20, -0.02), lerp(2, 0.46, 0.58), lerp(3, -0.22, 0.22),
        u[4], int(u[5] * len(_HAIR)), lerp(6, -1, 1), u[7],
        lerp(8, -0.66, -0.38), lerp(9, -0.25, 0.25),
        lerp(10, 0.18, 0.24), lerp(11, 0.31, 0.39), lerp(12, -0.14, -0.02),
        int(u[13] * len(_IRIS)), lerp(14, -1, 1),
        lerp(15, 0.42, 0.56), lerp(16, 0.22, 0.38), lerp(17, -0.06, 0.16),
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


class _Coords:
    """Face-local coordinates of a pixel grid (full image or per-sample windows)."""

    def __init__(self, f: Factors, X, Y):
        self.cx, self.cy, self.s = _col(f.cx), _col(f.cy), _col(f.size)
        ct, st = _col(np.cos(f.tilt)), _col(np.sin(f.tilt))
        self.X, self.Y = X, Y
        self.dx, self.dy = X - self.cx, Y - self.cy
        self.lx = (ct * self.dx + st * self.dy) / self.s        # face units, rotated with the head
        self.ly = (-st * self.dx + ct * self.dy) / self.s


def _grid(res: int) -> np.ndarray:
    """Pixel-centre coordinates in [-1, 1]."""
    return (np.arange(res, dtype=np.float32) + 0.5) * (2.0 / res) - 1.0


def _body(c: _Coords):
    """Signed distance of the shoulders: an upright ellipse under the head (image units)."""
    return _sd_ellipse(c.dx, c.dy - 1.85 * c.s, 1.50 * c.s, 0.80 * c.s)


def _head(f: Factors, c: _Coords) -> dict:
    """Signed distances (image units) of the head parts: neck, hair (back, front), face."""
    s, lx, ly = c.s, c.lx, c.ly
    out = {
        "neck": _sd_box(lx, ly - 1.00, 0.30, 0.45, 0.10) * s,
        "face": _sd_ellipse(lx, ly, 0.78, 1.0) * s,
    }
    cap = _sd_ellipse(lx, ly + 0.10, 0.90, 1.04) * s
    bottom = 0.15 + 1.15 * _col(f.hair_len)
    back_box = _sd_box(lx, ly - (bottom - 0.10) / 2, 0.92, (bottom + 0.10) / 2, 0.22) * s
    out["hair_back"] = np.minimum(cap, back_box)
    fringe_line = _col(f.fringe) + _col(f.fringe_slope) * lx + 0.035 * np.cos(lx * 14.0)
    out["below_fringe"] = ly - fringe_line
    out["hair_front"] = np.maximum(cap, out["below_fringe"] * s)
    return out


def _features(f: Factors, c: _Coords, eye_scale: float, eye_round: float, iris_frac: float) -> dict:
    """Signed distances (image units) of eyes, irises, pupils, lids, glints, mouth, nose, cheeks."""
    assert eye_scale <= _MAX_EYE_SCALE
    s, lx, ly = c.s, c.lx, c.ly
    er = _col(f.eye_r) * eye_scale
    ey, edx = _col(f.eye_y), _col(f.eye_dx) * (1 + 0.15 * (eye_scale - 1))
    ex = np.abs(lx) - edx                   # both eyes at once through the mirror symmetry
    eyy = ly - ey
    out = {"eyes": _sd_ellipse(ex, eyy, er, er * eye_round) * s}
    ix = ex - _col(f.gaze) * 0.25 * er * np.sign(lx)   # both irises look the same way
    ir = er * iris_frac
    out["iris"] = np.maximum(_sd_ellipse(ix, eyy, ir, ir) * s, out["eyes"])
    out["pupil"] = np.maximum(_sd_ellipse(ix, eyy, er * 0.28, er * 0.28) * s, out["eyes"])
    out["lid"] = np.maximum(_sd_ellipse(ex, eyy, er * 1.05, er * eye_round * 1.05) * s,
                            (eyy + 0.45 * er * eye_round) * s)     # the top cap of the eye
    out["glint"] = _sd_ellipse(ix + 0.22 * er, eyy + 0.22 * er, er * 0.2, er * 0.2) * s

    mw, mc, my = _col(f.mouth_w), _col(f.mouth_curve), _col(f.mouth_y)
    mxn = np.clip(lx / mw, -1.0, 1.0)
    centre_line = my + mc * (1.0 - mxn * mxn)       # smile: the middle sags (y is down)
    slope = 1.0 + (2.0 * mc * mxn / mw) ** 2
    mouth_dist = np.abs(ly - centre_line) / np.sqrt(slope)
    out["mouth"] = np.maximum(mouth_dist - 0.065, np.abs(lx) - mw) * s
    out["nose"] = _sd_ellipse(lx - 0.02, ly - 0.22, 0.10, 0.16) * s
    out["cheeks"] = _sd_ellipse(np.abs(lx) - 0.48, ly - 0.30, 0.14, 0.09) * s
    return out


class _Window:
    """Per-sample pixel windows (one size for the batch) that hold a group of shapes.

    Painting a group inside its window instead of the whole image gives the same
    bytes (coordinates come from the same grid, and outside the window every shape
    of the group has coverage exactly 0: the bounds below are conservative, and a
    test compares against ``full=True``) at a fraction of the cost.

    ``local``: (x0, x1, y0, y1) box in face units, carried through each sample's
    tilt, size and position; ``image``: the same in image units relative to the
    face centre, scaled by the face size but not rotated.
    """

    def __init__(self, f: Factors, res: int, *, local=None, image=None, full=False, margin=2):
        n, t = len(f), _grid(res)
        if full:
            lo_x = lo_y = np.zeros(n, int)
            wx = wy = res
        else:
            x0, x1, y0, y1 = local if local is not None else image
            xs = np.array([x0, x1, x0, x1], np.float64)[None, :]
            ys = np.array([y0, y0, y1, y1], np.float64)[None, :]
            s = f.size.astype(np.float64)[:, None]
            if local is not None:
                ct, st = np.cos(f.tilt)[:, None], np.sin(f.tilt)[:, None]
                px, py = (ct * xs - st * ys) * s, (st * xs + ct * ys) * s
            else:
                px, py = xs * s, ys * s
            px = (px + f.cx[:, None] + 1) * (res / 2)          # pixel i covers [i, i + 1)
            py = (py + f.cy[:, None] + 1) * (res / 2)
            lo_x = np.floor(px.min(1)).astype(int) - margin
            lo_y = np.floor(py.min(1)).astype(int) - margin
            wx = min(res, int((np.ceil(px.max(1)).astype(int) + margin - lo_x).max()))
            wy = min(res, int((np.ceil(py.max(1)).astype(int) + margin - lo_y).max()))
            lo_x, lo_y = np.clip(lo_x, 0, res - wx), np.clip(lo_y, 0, res - wy)
        self.boxes = [(int(y), int(y) + wy, int(x), int(x) + wx) for y, x in zip(lo_y, lo_x)]
        self.shape = (n, wy, wx)
        ri = (lo_y[:, None] + np.arange(wy)[None, :])[:, :, None]
        ci = (lo_x[:, None] + np.arange(wx)[None, :])[:, None, :]
        self.coords = _Coords(f, t[ci], t[ri])

    def get(self, img):
        """Copy of each sample's window, (N, C, wy, wx); slice copies are far cheaper than fancy indexing."""
        n, wy, wx = self.shape
        out = np.empty((n, img.shape[1], wy, wx), img.dtype)
        for i, (y0, y1, x0, x1) in enumerate(self.boxes):
            out[i] = img[i, :, y0:y1, x0:x1]
        return out

    def put(self, img, win):
        for i, (y0, y1, x0, x1) in enumerate(self.boxes):
            img[i, :, y0:y1, x0:x1] = win[i]


# Conservative bounds of each group for every factor value (eye_scale <= _MAX_EYE_SCALE).
_MAX_EYE_SCALE = 1.32
_FEATURE_BOX = (-0.76, 0.76, -0.50, 0.82)       # eyes, lids, mouth, nose, cheeks (face units)
_HEAD_BOX = (-0.96, 0.96, -1.18, 1.50)         # hair, face, neck
_SHADOW_BOX = (-1.25, 1.25, -1.30, 1.60)       # + the soft drop shadow
_BODY_BOX = (-1.55, 1.55, 1.00, 2.70)          # upright ellipse under the head (image units / size)


def _alpha(d, pix, soft=1.0):
    """Coverage of a shape from its signed distance: a linear ramp `soft` pixels wide."""
    return np.clip(0.5 - d * (1.0 / (pix * soft)), 0.0, 1.0)[:, None]


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
    """Per-sample colours (N, 3) -> (N, 3, 1, 1)."""
    return np.asarray(rgb, np.float32)[:, :, None, None]


def _k(rgb):
    """One colour (3,) -> (3, 1, 1)."""
    return np.asarray(rgb, np.float32)[:, None, None]


def _blur121(img):
    """Separable [1, 2, 1] / 4 blur with edge padding, (N, C, H, W)."""
    p = np.concatenate([img[:, :, :1], img, img[:, :, -1:]], axis=2)
    img = (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) * 0.25
    p = np.concatenate([img[..., :1], img, img[..., -1:]], axis=3)
    return (p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]) * 0.25


def _to_uint8(img):
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8."""
    return np.ascontiguousarray(np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------- renderers

def draw_faces(f: Factors, res: int, *, _full_window: bool = False) -> np.ndarray:
    """'Photo' rendering: smooth shading, soft shadows, fine texture, slight blur."""
    n, pix, t = len(f), 2.0 / res, _grid(res)
    soft = 1.4 if res >= 64 else 1.0          # soft edges, sharp at 32 px and below
    full = _full_window

    la = _col(f.light)                        # light direction: image-plane angle + elevation
    lxd, lyd, lzd = 0.55 * np.cos(la), 0.55 * np.sin(la), np.float32(0.835)

    def sphere(x, y, a, b):
        nx, ny = x / a, y / b
        nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
        return np.clip(nx * lxd + ny * lyd + nz * lzd, 0.0, 1.0)

    bg = _hsv_to_rgb(f.bg_hue, 0.28, 0.82)
    grad = 1.06 - 0.06 * (t[None, :, None] + 1)                 # lighter at the top
    vign = 1.0 - 0.05 * (t[None, None, :] ** 2 + t[None, :, None] ** 2)
    img = _c(bg) * (grad * vign)[:, None]

    # back to front: drop shadow and neck, shoulders (over the neck's end), hair, face
    w = _Window(f, res, local=_SHADOW_BOX, full=full)
    win, c = w.get(img), w.coords
    h = _head(f, c)
    ox, oy = -0.10 * np.cos(la), -0.10 * np.sin(la)       # soft shadow away from the light
    shadow = _sd_ellipse(c.lx - ox, c.ly - oy, 0.92, 1.12)
    win *= 1.0 - 0.30 * np.clip(0.5 - shadow / 0.22, 0.0, 1.0)[:, None]
    skin = _c(_skin_colour(f.skin, quantise=False))
    neck_shade = 0.62 + 0.30 * np.clip((c.ly - 0.75) / 0.45, 0, 1)   # under the chin
    _paint(win, _alpha(h["neck"], pix, soft), skin * neck_shade[:, None])
    w.put(img, win)

    wb = _Window(f, res, image=_BODY_BOX, full=full)
    winb, cb = wb.get(img), wb.coords
    shade = 0.75 + 0.30 * sphere(cb.dx / cb.s, cb.dy / cb.s - 1.85, 1.6, 0.9)
    _paint(winb, _alpha(_body(cb), pix, soft), _c(_SHIRT[f.shirt]) * shade[:, None])
    wb.put(img, winb)

    win = w.get(img)
    hair = _c(_HAIR[f.hair] * (1 + 0.10 * f.hair_jitter[:, None]))
    hair_shaded = hair * (0.55 + 0.60 * sphere(c.lx, c.ly + 0.10, 1.0, 1.2))[:, None]
    _paint(win, _alpha(h["hair_back"], pix, soft), hair_shaded * 0.85)
    fshade = 0.50 + 0.62 * sphere(c.lx, c.ly, 0.80, 1.05)
    fshade = fshade * (1.0 - 0.35 * np.exp(-np.maximum(h["below_fringe"], 0) / 0.10))  # fringe shadow
    _paint(win, _alpha(h["face"], pix, soft), skin * fshade[:, None])
    w.put(img, win)

    w2 = _Window(f, res, local=_FEATURE_BOX, full=full)
    win2, fc = w2.get(img), w2.coords
    ft = _features(f, fc, eye_scale=1.0, eye_round=0.72, iris_frac=0.6)
    win2 *= 1.0 - 0.10 * _alpha(ft["nose"], 0.10 * fc.s)          # shadow beside the nose
    eye_light = 0.80 + 0.20 * sphere(fc.lx, fc.ly, 0.80, 1.05)[:, None]
    _paint(win2, _alpha(ft["eyes"], pix, soft), np.float32(0.95) * eye_light)
    _paint(win2, _alpha(ft["iris"], pix, soft), _c(_IRIS[f.iris] * 0.9))
    _paint(win2, _alpha(ft["pupil"], pix, soft), np.float32(0.04))
    _paint(win2, _alpha(ft["lid"], pix, soft), _c(_HAIR[f.hair] * 0.35 + 0.03))
    lips = np.array([0.55, 0.16, 0.18], np.float32) * (0.55 + 0.45 * _skin_colour(f.skin, False))
    _paint(win2, _alpha(ft["mouth"], pix, soft), _c(lips))
    w2.put(img, win2)

    win = w.get(img)
    _paint(win, _alpha(h["hair_front"], pix, soft), hair_shaded)
    w.put(img, win)

    # fine texture, fading out at low resolution (a small G would learn it as speckle)
    amp = 0.03 * min(1.0, res / 256)
    if amp > 0.004:
        noise = np.stack([np.random.default_rng(int(k)).standard_normal((res, res), np.float32)
                          for k in f.noise_seed])
        img += (amp * noise)[:, None]
    mix = float(np.clip((res - 32) / 96, 0, 1)) * 0.6    # slight blur, none at 32 px and below
    if mix > 0:
        img += mix * (_blur121(img) - img)
    return _to_uint8(img)


_OUTLINE = _k([0.10, 0.07, 0.07])
_BG_FLAT = _hsv_to_rgb(np.arange(_N_BG, dtype=np.float32) / _N_BG, 0.35, 0.97)


def draw_cartoons(f: Factors, res: int, *, _full_window: bool = False) -> np.ndarray:
    """Cartoon rendering: flat palette fills, dark outlines, larger round eyes."""
    n, pix = len(f), 2.0 / res
    ow = max(1.0, res / 56) * pix          # outline width, image units
    full = _full_window

    def fill(target, d, colour, width=ow):
        """Flat fill with a dark inner outline `width` wide."""
        colour = _OUTLINE + (colour - _OUTLINE) * _alpha(d + width, pix)
        _paint(target, _alpha(d, pix), colour)

    bg = _BG_FLAT[(np.asarray(f.bg_hue) * _N_BG).astype(int) % _N_BG]
    img = np.empty((n, 3, res, res), np.float32)
    img[:] = _c(bg)

    # back to front: neck, shoulders (over the neck's end), hair, face
    w = _Window(f, res, local=_HEAD_BOX, full=full)
    win = w.get(img)
    h = _head(f, w.coords)
    skin = _c(_skin_colour(f.skin, quantise=True))
    fill(win, h["neck"], skin * 0.85)
    w.put(img, win)

    wb = _Window(f, res, image=_BODY_BOX, full=full)
    winb = wb.get(img)
    fill(winb, _body(wb.coords), _c(_SHIRT[f.shirt]))
    wb.put(img, winb)

    win = w.get(img)
    hair = _c(_HAIR[f.hair])
    fill(win, h["hair_back"], hair)
    fill(win, h["face"], skin)
    w.put(img, win)

    w2 = _Window(f, res, local=_FEATURE_BOX, full=full)
    win2 = w2.get(img)
    ft = _features(f, w2.coords, eye_scale=_MAX_EYE_SCALE, eye_round=1.0, iris_frac=0.52)
    _paint(win2, _alpha(ft["cheeks"], pix) * 0.35, _k([0.95, 0.45, 0.45]))
    fill(win2, ft["eyes"], np.float32(1.0), width=0.6 * ow)   # thin: the white must show at 32 px
    _paint(win2, _alpha(ft["iris"], pix), _OUTLINE)
    _paint(win2, _alpha(np.maximum(ft["glint"], ft["iris"]), pix), np.float32(1.0))
    _paint(win2, _alpha(ft["mouth"], pix), _k([0.62, 0.10, 0.14]))
    w2.put(img, win2)

    win = w.get(img)
    fill(win, h["hair_front"], hair)
    w.put(img, win)
    return _to_uint8(img)


# --------------------------------------------------------------------------- domain gap

# How far a target's geometry moves from the shared distribution at gap 1 (gap g moves it g times
# as far). The paper's claim (FreezeSG keeps the source's structure where FreezeG cannot) is about
# targets whose faces have other proportions and pose than the photos; at gap 0 the two domains
# differ only in rendering.
GAP_SHIFT = {
    "size": ("scale", 0.30),     # larger heads
    "cy": ("add", 0.10),         # lower in the frame
    "tilt": ("add", 0.20),       # a head tilt of ~11 degrees on top of the shared spread
    "eye_r": ("scale", 0.45),    # larger eyes
    "eye_dx": ("scale", 0.25),   # set wider apart
    "eye_y": ("add", 0.08),      # lower in the face
    "mouth_y": ("add", -0.08),   # closer to the eyes: a shorter lower face and jaw
}
MAX_GAP = 1.5


def shift_geometry(f: Factors, gap: float) -> Factors:
    """``f`` with its geometry moved ``gap`` times :data:`GAP_SHIFT` away from the shared distribution
    (gap 0 returns ``f`` itself: the same bytes as before)."""
    if not gap:
        return f
    changed = {}
    for name, (how, amount) in GAP_SHIFT.items():
        v = getattr(f, name)
        changed[name] = (v * np.float32(1 + amount * gap) if how == "scale" else v + np.float32(amount * gap)
                         ).astype(np.float32)
    return Factors(**{fl.name: changed.get(fl.name, getattr(f, fl.name)) for fl in fields(Factors)})


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class SyntheticDomain:
    """A named rendering of the shared factors; ``stream`` separates the domains' seeds; ``gap`` moves
    the geometry away from the shared distribution (:func:`shift_geometry`)."""
    name: str
    stream: int
    draw: Callable[[Factors, int], np.ndarray]
    gap: float = 0.0

    def render_batch(self, seed: int, indices, resolution: int, chunk: int = 4) -> np.ndarray:
        check_resolution(resolution)
        indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        f = shift_geometry(sample_factors(seed, self.stream, indices), self.gap)
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
    """Domain by name: ``faces``, ``cartoons`` (or ``synthetic:faces`` ...), and ``cartoons@G``: the
    cartoons with the domain gap G (0 .. MAX_GAP, :func:`shift_geometry`); a clear error otherwise."""
    key = name[len("synthetic:"):] if name.startswith("synthetic:") else name
    key, at, gap_text = key.partition("@")
    try:
        domain = SYNTHETIC_DOMAINS[key]
    except KeyError:
        raise ValueError(f"unknown synthetic domain {key!r}; known: {sorted(SYNTHETIC_DOMAINS)} "
                         f"(cartoons@G for a domain gap G)") from None
    if not at:
        return domain
    try:
        gap = float(gap_text)
    except ValueError:
        gap = float("nan")
    if not 0.0 <= gap <= MAX_GAP:  # nan fails too
        raise ValueError(f"synthetic domain {name!r}: the gap after @ must be a number in 0..{MAX_GAP}")
    return SyntheticDomain(f"{key}@{gap:g}", domain.stream, domain.draw, gap)


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
