"""Reading a user's photo (``cartoonize``, the ``serve`` page): one function, and one line when it cannot.

:func:`read_photo` takes a path or the bytes of an upload and returns an RGB PIL image the way the
training data sees its images:

- a path must be a regular file: a FIFO, a device, a socket or a folder is refused from ``stat``
  alone, before anything opens it (opening a FIFO for reading blocks until a writer comes; a device
  may never end). The open itself is non-blocking and checked again, in case the path was swapped
  between the two;
- the pixel count is read from the header and capped (``max_pixels``) before anything is decoded;
  PIL's own decompression-bomb refusal becomes the same kind of line;
- the whole image is decoded (a truncated file fails here, not later in a resize);
- the EXIF orientation is applied (a phone's portrait photo is upright, as in the training data);
- every mode becomes RGB by the training data's rule (``data.sources``): 16- and 32-bit grayscale
  scaled to 8 bits (not clipped: a 16-bit PNG is not white), palette, CMYK, 1-bit and grayscale
  converted, and an alpha channel (RGBA, LA, a palette's transparency) composited over **white**.

Everything that goes wrong is a :class:`PhotoError` whose message is one line starting with the
file's name; the caller adds its own context (an option's name, an HTTP status). No paths policy:
where photos come from and where results go is the caller's business.
"""
from __future__ import annotations

import io
import os
import stat
import warnings

__all__ = ["MAX_PIXELS", "PhotoError", "read_photo", "to_rgb", "box_problem", "center_crop_square", "CROPS",
           "photo_squares"]

MAX_PIXELS = 40_000_000  # a 40-megapixel photo decodes to 120 MB of RGB: more is not a face photo


class PhotoError(ValueError):
    """A photo that cannot be used; the message is one line naming it."""


def to_rgb(image):
    """A PIL image of any mode -> RGB, by the training data's rule (16-bit scaled, alpha over white)."""
    from cartoon_stylegan.data.sources import SkipImage, to_rgb_noted

    try:
        return to_rgb_noted(image)[0]
    except SkipImage as e:
        raise ValueError(e.reason) from None


def _regular_file(path, name: str):
    """``path`` opened for reading in binary, after making sure it is a regular file."""
    from cartoon_stylegan.data.sources import not_regular

    if not os.path.lexists(path):
        raise PhotoError(f"{name}: no such file")
    reason = not_regular(path)  # stat only: nothing is opened
    if reason:
        raise PhotoError(f"{name}: {reason}: give an image file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise PhotoError(f"{name}: cannot open it: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the stat
        os.close(fd)
        raise PhotoError(f"{name}: not a regular file any more: give an image file")
    return os.fdopen(fd, "rb")


def read_photo(source, *, name: str | None = None, max_pixels: int = MAX_PIXELS):
    """An RGB PIL image, fully decoded and upright, from a path or an upload's bytes.

    name: how the messages call the photo (default: the path, or "the upload").
    max_pixels: the largest width x height accepted, checked from the header before decoding.
    Raises :class:`PhotoError` (one line) for a missing, special, unreadable, damaged or too large file.
    """
    from PIL import Image, ImageOps

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "the upload"
        fh = io.BytesIO(source)
    else:
        name = name or str(source)
        fh = _regular_file(source, name)
    cap = f"at most {max_pixels / 1e6:g} megapixels"
    with fh:
        try:
            with warnings.catch_warnings():  # PIL warns from 89 to 179 megapixels: over our cap, refused here too
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fh)  # not closed by a `with`: closing would free the decoded pixels returned
            w, h = im.size
            if w * h > max_pixels:
                raise PhotoError(f"{name}: the image is {w}x{h}: {cap} (too large to decode safely)")
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
        except PhotoError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PhotoError(f"{name}: too large to decode safely (PIL's decompression-bomb limit): {cap}") from None
        except Exception as e:  # noqa: BLE001 -- any decoder failure (OSError, SyntaxError, struct.error...): a line
            raise PhotoError(f"{name}: not an image that can be read ({type(e).__name__})") from None


def box_problem(box, size) -> str | None:
    """Why the crop box (x, y, w, h) does not fit an image of ``size`` (width, height), or None."""
    x, y, w, h = box
    W, H = size
    if w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H:
        return None
    return (f"{x},{y},{w},{h} is not inside the {W}x{H} image: expected x >= 0, y >= 0, w and h > 0, "
            f"x + w <= {W} and y + h <= {H}")


def center_crop_square(image, size: int, box: tuple[int, int, int, int] | None = None):
    """A PIL image -> (size, size) RGB: the box (x, y, w, h) if given, else the largest centred square.

    The image is converted to RGB as :func:`cartoon_stylegan.photo.to_rgb` does (16-bit scaled, alpha over
    white); a box that is not inside the image raises ValueError (a crop outside it would be black, and
    a huge one would allocate the whole box)."""
    from PIL import Image

    img = to_rgb(image)
    if box is not None:
        problem = box_problem(box, img.size)
        if problem:
            raise ValueError(problem)
        x, y, w, h = box
        img = img.crop((x, y, x + w, y + h))
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.LANCZOS)


CROPS = ("face", "center")
"""How a photo becomes the generator's square: ``face`` -- every face found, aligned as FFHQ's were
(cartoon_stylegan.faces); ``center`` -- the largest centred square. A box given by hand wins over both."""


def photo_squares(image, size: int, *, crop: str = "face", box=None, name: str = "photo") -> list[tuple]:
    """The squares of a photo the generator can be fitted to: [(RGB uint8 (size, size, 3), how), ...].

    ``how`` (JSON-able) says where the square came from: ``{"box": [x, y, w, h]}`` for a hand-given box,
    ``{"center": True}``, or a face's record (detector box, score, FFHQ quad and its bounding box).
    ``crop="face"``: one square per face, the most confident first; none found is a PhotoError saying
    what to do instead. The one recipe of ``cartoonize`` and the ``serve`` page.
    """
    import numpy as np

    if box is not None or crop == "center":
        try:
            sq = center_crop_square(image, size, box)
        except ValueError as e:  # the box is not inside this photo
            raise PhotoError(f"--box: {name}: {e}") from None
        return [(np.asarray(sq, dtype=np.uint8), {"box": list(box)} if box is not None else {"center": True})]
    if crop != "face":
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    from cartoon_stylegan.faces import FaceAlignError, align_face, detect_faces

    rgb = np.asarray(to_rgb(image), dtype=np.uint8)
    try:
        found = detect_faces(rgb)
    except FaceAlignError as e:
        raise PhotoError(f"{name}: {e}") from None
    if not found:
        raise PhotoError(f"{name}: no face found; give its box by hand (--box x,y,w,h) or use the centre "
                         "square (--crop center)")
    return [(align_face(rgb, f, size), f.record()) for f in found]

