"""cartoon_stylegan.photo: the one reader of a user's photo (cartoonize, the serve page). Special files are
refused without being opened, sizes before decoding, and every mode comes out as the training data's RGB."""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from photo_files import BLUE, RED, encoded, png16, png_claiming, rotated_jpeg, stripes, transparent_png

from cartoon_stylegan.photo import MAX_PIXELS, PhotoError, box_problem, center_crop_square, read_photo
from cartoon_stylegan.project import ProjectionCancelled, project


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


@pytest.mark.timeout(60)
def test_special_files_are_refused_without_opening_them(tmp_path, monkeypatch):
    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    for path, words in ((fifo, "named pipe (FIFO)"), (tmp_path, "folder"), (os.devnull, "device"),
                        (tmp_path / "missing.png", "no such file")):
        with pytest.raises(PhotoError) as e:
            read_photo(path)
        msg = _one_line(e)
        assert msg.startswith(f"{path}: ") and words in msg, msg
    assert opened == []


def test_sixteen_bit_and_other_modes_become_the_training_datas_rgb(tmp_path):
    def rgb(data: bytes):
        p = tmp_path / "in.img"
        p.write_bytes(data)
        im = read_photo(p)
        assert im.mode == "RGB"
        return np.asarray(im)[0, 0].tolist()

    assert rgb(png16(30000)) == [117, 117, 117]  # 30000 / 257, not clipped to white
    assert rgb(png16(65535)) == [255, 255, 255]
    assert rgb(encoded(Image.new("I", (8, 8), 1000), "TIFF")) == [4, 4, 4]  # 32-bit with 16-bit values: scaled the same
    assert rgb(transparent_png(RED)) == [255, 255, 255]  # alpha composited over white, not dropped
    assert rgb(encoded(Image.new("RGBA", (8, 8), (*BLUE, 255)))) == list(BLUE)
    assert rgb(encoded(Image.new("LA", (8, 8), (0, 0)))) == [255, 255, 255]
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    assert rgb(encoded(pal)) == [10, 20, 30]
    pal.info["transparency"] = 3
    assert rgb(encoded(pal, transparency=3)) == [255, 255, 255]
    assert rgb(encoded(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG")) == [255, 255, 255]
    assert rgb(encoded(Image.new("L", (8, 8), 77))) == [77, 77, 77]
    assert rgb(encoded(Image.new("1", (8, 8), 1))) == [255, 255, 255]


def test_exif_orientation_is_applied():
    im = read_photo(rotated_jpeg((60, 30)))
    assert im.size == (30, 60)  # stored landscape, shown portrait
    a = np.asarray(im).astype(int)
    assert np.abs(a[2, 15] - RED).max() < 40 and np.abs(a[-3, 15] - BLUE).max() < 40, (a[2, 15], a[-3, 15])
    assert read_photo(encoded(stripes((60, 30)))).size == (60, 30)  # no EXIF: as stored


def test_bombs_huge_and_damaged_files_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(PhotoError) as e:
        read_photo(png_claiming(20000, 20000), name="bomb.png")  # past PIL's own limit
    assert _one_line(e).startswith("bomb.png: too large to decode safely")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own warning (89 to 179 megapixels) is not printed on top of the line
        with pytest.raises(PhotoError) as e:
            read_photo(png_claiming(10000, 10000), name="warned.png")
    assert _one_line(e).startswith("warned.png: too large to decode safely")
    with pytest.raises(PhotoError) as e:
        read_photo(png_claiming(8000, 8000), name="big.png")  # under PIL's limit, over ours: refused undecoded
    assert _one_line(e) == (f"big.png: the image is 8000x8000: at most {MAX_PIXELS / 1e6:g} megapixels "
                            "(too large to decode safely)")
    jpg = encoded(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(jpg[:300])
    with pytest.raises(PhotoError) as e:
        read_photo(p)
    assert _one_line(e).startswith(f"{p}: not an image that can be read (")
    with pytest.raises(PhotoError) as e:
        read_photo(b"hello", name="notes.png")
    assert _one_line(e) == "notes.png: not an image that can be read (UnidentifiedImageError)"


def test_crop_box_outside_or_empty_is_refused_with_the_image_size():
    im = Image.new("RGB", (96, 64), RED)
    assert box_problem((0, 0, 96, 64), im.size) is None
    for box in ((200, 200, 10, 10), (0, 0, 100000, 100000), (-1, 0, 10, 10), (0, 0, 0, 10), (90, 0, 10, 10)):
        with pytest.raises(ValueError, match=r"is not inside the 96x64 image: expected x >= 0, y >= 0, w and h > 0, "
                                             r"x \+ w <= 96 and y \+ h <= 64"):
            center_crop_square(im, 16, box)
    crop = np.asarray(center_crop_square(im, 16, (10, 10, 20, 20)))
    assert crop.shape == (16, 16, 3) and (crop == RED).all()


def test_center_crop_converts_16_bit_and_alpha_like_the_reader():
    import io

    assert np.asarray(center_crop_square(Image.open(io.BytesIO(png16(30000))), 8))[0, 0].tolist() == [117] * 3
    assert np.asarray(center_crop_square(Image.open(io.BytesIO(transparent_png())), 8))[0, 0].tolist() == [255] * 3


def test_projection_stops_when_cancelled():
    from cartoon_stylegan.networks import Discriminator, Generator

    torch.manual_seed(0)
    G, D = Generator(8, style_dim=16, n_mlp=1, channel_max=8, use_noise=False), Discriminator(8, channel_max=8)
    cancel, seen = threading.Event(), []

    def progress(step, rec):
        seen.append(step)
        if step == 2:
            cancel.set()
    with pytest.raises(ProjectionCancelled, match="cancelled at step 3 of 50"):
        project(G, D, torch.zeros(1, 3, 8, 8), steps=50, progress=progress, cancel=cancel)
    assert seen == [0, 1, 2]
