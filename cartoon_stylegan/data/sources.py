"""Image sources: a folder, a ``.zip`` or ``synthetic:<domain>``, as a deterministic stream.

``iter_source(spec, count, seed)`` yields ``(key, path, loader)`` for every input it
finds, in sorted order: ``key`` is the input's position (``%08d``), ``path`` names it
for people (``None`` for synthetic samples) and ``loader(resolution)`` returns it as a
PIL image (files) or a uint8 HWC array (synthetic), or raises :class:`SkipImage` with
the reason it cannot be used. Loaders are small picklable objects, so a worker
process can run them. Inputs that are not images (a ``.txt`` in the folder, an unsafe
zip member) are yielded too, with a loader that raises: nothing found disappears
without a reason.

``prepare(image, resolution, min_size)`` turns a loaded image into the training
form: RGB (grayscale, CMYK, palette, 16-bit and alpha images are converted, alpha
composited over white, and the conversion is reported), centre-cropped to a square
and resized with Lanczos.
"""
from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .synthetic import check_resolution, get_domain

__all__ = [
    "IMAGE_EXTENSIONS", "CROPS", "SkipImage", "to_rgb_noted", "not_regular", "iter_source", "check_spec", "prepare", "load_prepared",
    "encode", "FileLoader", "ZipMemberLoader", "SyntheticLoader", "Rejected",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})  # GIF: its first frame
SYNTHETIC_PREFIX = "synthetic:"
# A zip member larger than this is not read: the largest image PIL decodes (its 89.5-Mpixel
# bomb limit) at 4 bytes a pixel, uncompressed. zipfile never inflates past the declared size.
MAX_MEMBER_BYTES = 89_478_485 * 4


class SkipImage(Exception):
    """An input that cannot be used; ``reason`` goes to the manifest's ``skipped`` list."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- loaders

def _open_image(data_or_path, resolution: Optional[int], what: str):
    """Open and fully decode an image; JPEGs are decoded at a reduced scale when that
    still leaves at least twice the target resolution (the DCT does the first 2-8x)."""
    from PIL import Image, ImageOps

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
    try:
        im = Image.open(src)
        original = im.size
        if resolution and im.format == "JPEG":
            scale = 2 * resolution / max(1, min(im.size))
            if scale < 1:
                im.draft(None, (max(1, int(im.size[0] * scale)), max(1, int(im.size[1] * scale))))
        im.load()
        im = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - every decoder failure is a reason, not a crash
        raise SkipImage(f"cannot decode {what}: {type(exc).__name__}: {exc}") from None
    im.info["original_size"] = original
    return im


def not_regular(path) -> Optional[str]:
    """Why ``path`` must not be opened (a FIFO would block forever, a device never ends), or None."""
    try:
        st = os.stat(path)  # follows symlinks: a link to a FIFO is a FIFO
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "vanished"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = ("named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
            else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "folder" if stat.S_ISDIR(st.st_mode) else "special file")
    return f"not a regular file: {kind}"


@dataclass(frozen=True)
class FileLoader:
    path: str

    def __call__(self, resolution: Optional[int] = None):
        reason = not_regular(self.path)  # checked again here: it may have changed since the listing
        if reason:
            raise SkipImage(reason)
        return _open_image(self.path, resolution, "image")


_ZIPS: dict = {}   # (pid, path) -> ZipFile: one handle per process (never shared across a fork)


def _zip(path: str) -> zipfile.ZipFile:
    key = (os.getpid(), path)
    zf = _ZIPS.get(key)
    if zf is None:
        zf = _ZIPS[key] = zipfile.ZipFile(path)
    return zf


@dataclass(frozen=True)
class ZipMemberLoader:
    zip_path: str
    index: int          # position in the archive's infolist (names may repeat)

    def __call__(self, resolution: Optional[int] = None):
        zf = _zip(self.zip_path)
        info = zf.infolist()[self.index]
        try:
            data = zf.read(info)
        except Exception as exc:  # noqa: BLE001 - bad CRC, encrypted, unsupported compression
            raise SkipImage(f"cannot read zip member: {type(exc).__name__}: {exc}") from None
        return _open_image(data, resolution, "image")


@dataclass(frozen=True)
class SyntheticLoader:
    domain: str
    seed: int
    index: int

    def __call__(self, resolution: Optional[int] = None) -> np.ndarray:
        if resolution is None:
            raise ValueError("synthetic samples need a resolution")
        return get_domain(self.domain)(self.seed, self.index, resolution)


@dataclass(frozen=True)
class Rejected:
    """Loader of an input found but not usable: raises its reason."""
    reason: str

    def __call__(self, resolution: Optional[int] = None):
        raise SkipImage(self.reason)


# --------------------------------------------------------------------------- enumeration

def _kind(spec) -> str:
    s = str(spec)
    if s.startswith(SYNTHETIC_PREFIX):
        return "synthetic"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.is_file() and p.suffix.lower() == ".zip":
        return "zip"
    if not p.exists():
        raise ValueError(f"input {s!r} does not exist (expected a folder, a .zip or synthetic:<domain>)")
    raise ValueError(f"input {s!r} is not a folder, a .zip or synthetic:<domain>")


def check_spec(spec, count: Optional[int] = None) -> str:
    """Validate an input spec without reading images; returns its kind (folder|zip|synthetic)."""
    kind = _kind(spec)
    if kind == "synthetic":
        get_domain(str(spec))
        if count is None or int(count) <= 0:
            raise ValueError(f"{spec}: a synthetic source needs a positive count, got {count!r}")
    elif count is not None and int(count) <= 0:
        raise ValueError(f"count must be positive or None, got {count!r}")
    return kind


def _unsafe_member(name: str) -> Optional[str]:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "unsafe zip member path (absolute)"
    if ".." in re.split(r"[/\\]", name):
        return "unsafe zip member path (contains ..)"
    return None


def _has_image_ext(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_items(root: Path):
    """Every file below ``root``, sorted; symlinked folders are followed once (a link back to a
    folder already walked is listed as skipped, so a loop ends), and only regular files are
    opened (FIFOs, sockets, devices and links to them are listed as skipped with the reason)."""
    entries = []  # (relative path, reason or None)
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        seen.add((st.st_dev, st.st_ino))
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            try:
                dst = os.stat(full)
            except OSError:
                entries.append((Path(full).relative_to(root).as_posix(), "broken symlink"))
                continue
            if (dst.st_dev, dst.st_ino) in seen or _is_ancestor(dst, dirpath):
                entries.append((Path(full).relative_to(root).as_posix(),
                                "symlinked folder already walked (a loop or a second path to it)"))
                continue
            seen.add((dst.st_dev, dst.st_ino))
            keep.append(d)
        dirnames[:] = keep
        for fn in filenames:
            rel = Path(dirpath, fn).relative_to(root).as_posix()
            entries.append((rel, not_regular(os.path.join(dirpath, fn))))
    for rel, reason in sorted(entries):
        path = str(root / rel)
        if reason is None and not _has_image_ext(rel):
            reason = "not an image extension"
        yield path, (Rejected(reason) if reason else FileLoader(path))


def _is_ancestor(st, dirpath: str) -> bool:
    """True when the folder ``st`` is ``dirpath`` or one of its parents (a link back up)."""
    p = Path(dirpath).resolve()
    for q in (p, *p.parents):
        try:
            qs = os.stat(q)
        except OSError:
            continue
        if (qs.st_dev, qs.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def _zip_items(zip_path: Path):
    try:
        infos = zipfile.ZipFile(zip_path).infolist()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{zip_path}: not a readable zip archive ({type(exc).__name__}: {exc})") from None
    order = sorted((info.filename, i) for i, info in enumerate(infos) if not info.is_dir())
    for name, i in order:
        path = f"{zip_path}::{name}"
        reason = _unsafe_member(name)
        if reason is None and not _has_image_ext(name):
            reason = "not an image extension"
        if reason is None and infos[i].file_size > MAX_MEMBER_BYTES:
            reason = f"zip member too large ({infos[i].file_size} bytes)"
        yield path, (Rejected(reason) if reason else ZipMemberLoader(str(zip_path), i))


def iter_source(spec, count: Optional[int] = None, seed: int = 0) -> Iterator[tuple]:
    """``(key, path_or_None, loader)`` for the first ``count`` inputs of ``spec`` (all when None).

    Folders are walked recursively and zips listed, both sorted by path, so the order
    (and the keys) do not depend on the file system. ``seed`` picks the synthetic
    sample stream; folders and zips ignore it.
    """
    kind = check_spec(spec, count)
    if kind == "synthetic":
        domain = get_domain(str(spec)).name
        for i in range(int(count)):
            yield f"{i:08d}", None, SyntheticLoader(domain, int(seed), i)
        return
    items = _folder_items(Path(spec)) if kind == "folder" else _zip_items(Path(spec))
    for i, (path, loader) in enumerate(items):
        if count is not None and i >= count:
            return
        yield f"{i:08d}", path, loader


# --------------------------------------------------------------------------- preparation

def to_rgb_noted(im):
    """PIL image of any mode -> (RGB image, conversion note or None)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = a / 257.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return im.convert("RGB"), f"converted from {mode} (16/32-bit grayscale)"
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return im.convert("RGB"), "converted from F (float grayscale)"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"alpha composited over white (from {mode})"
    names = {"L": "grayscale", "1": "1-bit", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr"}
    try:
        out = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise SkipImage(f"unsupported image mode {mode}: {exc}") from None
    return out, f"converted from {mode} ({names.get(mode, mode)})"


CROPS = ("center", "face")
"""How a photo becomes the training square: the largest centred square, or its most confident face
aligned as FFHQ's were (cartoon_stylegan.faces)."""
FACE_DECODE = 512
"""With crop=face, JPEGs are decoded at a reduced scale of at least this short side (faces must stay
large enough for the detector, ~40 px)."""


def prepare(image, resolution: int, min_size: int = 0, crop: str = "center") -> tuple[np.ndarray, Optional[str]]:
    """Loaded image (PIL, or uint8 HWC array) -> (uint8 (res, res, 3), conversion note or None).

    Raises :class:`SkipImage` for an image smaller than ``min_size`` on its short side, and with
    ``crop="face"`` for a photo in which no face is found.
    """
    from PIL import Image

    resolution = check_resolution(resolution)
    if isinstance(image, np.ndarray):
        if image.shape != (resolution, resolution, 3) or image.dtype != np.uint8:
            image = Image.fromarray(np.asarray(image, np.uint8))
        else:
            return image, None
    w, h = image.info.get("original_size", image.size)
    if min(w, h) < min_size:
        raise SkipImage(f"too small: {w}x{h} < min_size {min_size}")
    image, note = to_rgb_noted(image)
    if crop == "face":
        return _face_square(image, resolution, note)
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    if (w, h) != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.LANCZOS, box=box, reducing_gap=3.0)
    out = np.asarray(image, dtype=np.uint8)
    assert out.shape == (resolution, resolution, 3), out.shape
    return out, note


def _face_square(image, resolution: int, note: Optional[str]) -> tuple[np.ndarray, Optional[str]]:
    from cartoon_stylegan.faces import FaceAlignError, align_face, detect_faces

    rgb = np.asarray(image, dtype=np.uint8)
    try:
        found = detect_faces(rgb)
    except FaceAlignError:
        raise  # the packages are missing: a configuration error, not this image's fault
    if not found:
        raise SkipImage("no face found (shard.crop=face)")
    f = found[0]
    more = f"; {len(found)} faces, the most confident (score {f.score:.2f}) taken" if len(found) > 1 else ""
    out = align_face(rgb, f, resolution)
    return out, (note + more if note else (more[2:] or None))


def load_prepared(loader, resolution: int, min_size: int = 0, crop: str = "center") -> tuple[np.ndarray, Optional[str]]:
    """``prepare(loader(resolution), ...)``; any failure becomes :class:`SkipImage`."""
    image = loader(resolution if crop == "center" else max(resolution, FACE_DECODE))
    from cartoon_stylegan.faces import FaceAlignError

    try:
        return prepare(image, resolution, min_size, crop)
    except (SkipImage, FaceAlignError):  # the face packages missing: a configuration error, not this image's
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a truncated image that fails only on resize
        raise SkipImage(f"cannot process image: {type(exc).__name__}: {exc}") from None


def encode(array: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """uint8 HWC RGB -> PNG (lossless) or JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(array, "RGB")
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=1)   # 2x faster than 6, ~6% larger
    elif fmt in ("jpg", "jpeg"):
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    else:
        raise ValueError(f"image format must be 'png' or 'jpg', got {fmt!r}")
    return buf.getvalue()
