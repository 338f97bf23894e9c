"""Photos a careless user or a hostile uploader sends, made in memory (shared by the reader's, the CLI's
and the serve page's tests): a header that claims a huge size, a 16-bit PNG, a phone photo whose EXIF
says "rotate", a transparent PNG."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header claims width x height, with no pixels: a few dozen bytes that a reader
    which decodes before checking the size would try to inflate into width * height bytes."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def png16(value: int, size=(24, 24)) -> bytes:
    """A 16-bit grayscale PNG (mode I;16) of one value in 0..65535: 30000 is 8-bit 117, not white."""
    return encoded(Image.fromarray(np.full(size[::-1], value, np.uint16)))


def stripes(size=(60, 30)) -> Image.Image:
    """Red, green and blue vertical thirds, left to right."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    for i, c in enumerate((RED, GREEN, BLUE)):
        a[:, i * w // 3:(i + 1) * w // 3] = c
    return Image.fromarray(a)


def rotated_jpeg(size=(60, 30)) -> bytes:
    """A landscape JPEG of :func:`stripes` whose EXIF orientation (6) says "turn 90 degrees clockwise to
    show": shown upright it is portrait with red at the top and blue at the bottom."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stripes(size), "JPEG", quality=95, exif=exif)


def transparent_png(color=RED, size=(24, 24)) -> bytes:
    """RGBA: ``color`` everywhere, fully transparent (what shows is the background: white)."""
    return encoded(Image.new("RGBA", size, (*color, 0)))
