"""Face detection and FFHQ-style alignment (cartoon_stylegan/faces.py): the square's geometry against
a hand computation, its rotation equivariance, and the real photos that packages ship."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from cartoon_stylegan import faces


def _landmarks(eye_l, eye_r, mouth_l, mouth_r):
    """68 points whose eye contours average to the eye centres and whose 48/54 are the mouth corners."""
    lm = np.zeros((68, 2))
    ring = np.array([(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)])
    lm[36:42] = np.asarray(eye_l) + 3 * ring
    lm[42:48] = np.asarray(eye_r) + 3 * ring
    lm[48], lm[54] = mouth_l, mouth_r
    return lm


def test_ffhq_square_by_hand():
    # level eyes 20 px apart, mouth 25 px below: half-width max(2 x 20, 1.8 x 25) = 45, centre 2.5 px below the eyes
    quad = faces.ffhq_quad(_landmarks((40, 50), (60, 50), (42, 75), (58, 75)))
    np.testing.assert_allclose(quad, [[5, 7.5], [5, 97.5], [95, 97.5], [95, 7.5]], atol=1e-9)


def test_ffhq_square_turns_with_the_face():
    pts = [(40, 50), (60, 50), (42, 75), (58, 75)]
    a = math.radians(30)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([50.0, 60.0])
    turned = [tuple(rot @ (np.array(p) - centre) + centre) for p in pts]
    q0, q1 = faces.ffhq_quad(_landmarks(*pts)), faces.ffhq_quad(_landmarks(*turned))
    np.testing.assert_allclose((rot @ (q0 - centre).T).T + centre, q1, atol=1e-9)


def test_align_of_a_turned_photo_equals_the_upright_one():
    """Turning the photo and its square together gives the same crop (the square's orientation is used)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:200]
    img = np.stack([(xx * 1.2) % 256, (yy * 1.2) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    img[80:120, 60:140] = rng.integers(0, 255, (40, 80, 3))
    quad = faces.ffhq_quad(_landmarks((80, 90), (120, 90), (84, 140), (116, 140)))
    up = faces.align_face(img, quad, 64)
    turned = np.asarray(Image.fromarray(img).rotate(-90, expand=True))  # 90 deg clockwise: (x, y) -> (199 - y, x)
    tq = np.stack([199 - quad[:, 1], quad[:, 0]], -1)
    # the same corner order relative to the face: the square turned with it
    got = faces.align_face(turned, tq, 64)
    assert np.abs(got.astype(int) - up.astype(int)).mean() < 3.0


def test_square_outside_the_photo_is_mirrored_not_black():
    img = np.full((60, 60, 3), 200, np.uint8)
    img[:, :30] = 40
    quad = np.array([[-50.0, -50], [-50, 110], [110, 110], [110, -50]])  # far larger than the photo
    out = faces.align_face(img, quad, 32)
    assert out.shape == (32, 32, 3) and out.min() >= 30  # no black fill anywhere


def _photo(name):
    pytest.importorskip("dlib")
    if name == "astronaut":
        skdata = pytest.importorskip("skimage.data")
        return skdata.astronaut()
    import matplotlib
    from PIL import Image

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("name, face_box", [("astronaut", (175, 76, 91, 91)), ("grace_hopper", (180, 139, 187, 187))])
def test_real_photos_one_face_found_and_aligned(name, face_box):
    """The photos that scikit-image and matplotlib ship: one face each (the astronaut's badge, a weaker
    candidate, is not taken), and the aligned crop shows a level face at FFHQ's place: found again there."""
    img = _photo(name)
    found = faces.detect_faces(img)
    assert len(found) == 1, [f.record() for f in found]
    f = found[0]
    x, y, w, h = face_box
    assert abs(f.box[0] - x) <= 8 and abs(f.box[1] - y) <= 8 and abs(f.box[2] - w) <= 12
    cx, cy = f.quad.mean(0)
    assert x < cx < x + w and y < cy < y + h  # the square is centred on the face
    crop = faces.align_face(img, f, 256)
    again = faces.detect_faces(crop)
    assert len(again) == 1
    lm = again[0].landmarks
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    tilt = math.degrees(math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0]))
    assert abs(tilt) < 4, tilt
    eyes = (eye_l + eye_r) / 2 / 256
    assert abs(eyes[0] - 0.5) < 0.04 and 0.36 < eyes[1] < 0.5, eyes  # FFHQ puts the eyes just above the centre


def test_no_face_in_a_photo_without_one():
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("dlib")
    assert faces.detect_faces(skdata.coffee()) == []


def test_missing_packages_say_how_to_install(monkeypatch):
    import sys

    monkeypatch.setattr(faces, "_MODELS", {})
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(faces.FaceAlignError, match=r"pip install -e '.\[faces\]'.*--box"):
        faces.detect_faces(np.zeros((8, 8, 3), np.uint8))


def test_shard_with_crop_face_aligns_photos_and_skips_those_without_a_face(tmp_path):
    """shard.crop=face: a folder of photos becomes FFHQ-aligned squares; a photo with no face is
    skipped, with the reason in the manifest (nothing silently dropped)."""
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("dlib")
    from PIL import Image

    from cartoon_stylegan.data import write_shards
    from cartoon_stylegan.data.sources import prepare

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.jpg", quality=95)
    Image.fromarray(skdata.coffee()).save(folder / "coffee.png")
    man = write_shards(str(folder), tmp_path / "out", "t", resolution=64, crop="face", workers=1, progress=False)
    assert man["count"] == 1 and man["crop"] == "face"
    assert [(s["path"].rsplit("/", 1)[-1], s["reason"]) for s in man["skipped"]] == [
        ("coffee.png", "no face found (shard.crop=face)")]
    # the square is the aligned face, not the centre crop
    img = Image.fromarray(skdata.astronaut())
    aligned, _ = prepare(img, 64, crop="face")
    centre, _ = prepare(img, 64, crop="center")
    assert np.abs(aligned.astype(int) - centre.astype(int)).mean() > 20
    assert np.array_equal(aligned, faces.align_face(skdata.astronaut(), faces.detect_faces(skdata.astronaut())[0], 64))
