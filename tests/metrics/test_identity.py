"""The identity measure: dlib's face-recognition embedding of paired faces, against a plain
reimplementation of its figures, and on the real photo scikit-image ships (the astronaut)."""
import numpy as np
import pytest
import torch

from cartoon_stylegan.metrics import identity

pytestmark = pytest.mark.skipif(identity.unavailable() is not None, reason=str(identity.unavailable()))


@pytest.fixture(scope="module")
def astronaut():
    """scikit-image's astronaut, FFHQ-aligned at 128 px (uint8, 3 x H x W)."""
    from skimage import data

    from cartoon_stylegan import faces

    img = data.astronaut()
    face = faces.detect_faces(img)[0]
    return torch.from_numpy(np.ascontiguousarray(faces.align_face(img, face, 128))).permute(2, 0, 1)


def _others(n, seed=0):
    """Face-like images that are nobody in particular: smooth random blobs on the astronaut's layout."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    return (torch.nn.functional.interpolate(low, size=128, mode="bicubic").clamp(0, 1) * 255).to(torch.uint8)


def test_the_same_face_is_close_and_other_images_are_far(astronaut):
    mirrored = torch.flip(astronaut, dims=[2])
    darker = (astronaut.float() * 0.8).to(torch.uint8)
    e = identity.embeddings(torch.stack([astronaut, mirrored, darker, *_others(2)]))
    assert e.shape == (5, 128)
    d = np.linalg.norm(e[0] - e, axis=1)
    assert d[1] < identity.SAME_PERSON and d[2] < identity.SAME_PERSON  # the same person (dlib's threshold)
    assert min(d[3:]) > max(d[1:3])


def test_scores_match_a_plain_reimplementation(astronaut):
    src = torch.stack([astronaut, *_others(3, seed=1)])
    tgt = torch.stack([torch.flip(astronaut, dims=[2]), *_others(3, seed=2)])
    got = identity.identity_scores(src, tgt)
    a, b = identity.embeddings(src), identity.embeddings(tgt)
    dist = [[float(np.sqrt(sum((x - y) ** 2 for x, y in zip(a[i], b[j])))) for j in range(4)] for i in range(4)]
    matched = [dist[i][i] for i in range(4)]
    mismatched = sum(dist[i][j] for i in range(4) for j in range(4) if i != j) / 12
    assert got["distance"] == pytest.approx(sum(matched) / 4, rel=1e-12)
    assert got["mismatched"] == pytest.approx(mismatched, rel=1e-12)
    assert got["ratio"] == pytest.approx(sum(matched) / 4 / mismatched, rel=1e-12)
    assert got["same"] == sum(m < 0.6 for m in matched) / 4
    assert got["per_latent"]["distance"] == pytest.approx(matched, rel=1e-12)
    same = identity.identity_scores(src, src)
    assert same["distance"] == 0 and same["ratio"] == 0 and same["same"] == 1.0
    with pytest.raises(ValueError, match="need >= 2 pairs"):
        identity.identity_scores(src[:1], tgt[:1])


def test_a_generator_against_itself_and_against_an_unrelated_one():
    from cartoon_stylegan.networks import Generator

    torch.manual_seed(0)
    G, other = (Generator(32, style_dim=32, n_mlp=2, channel_max=16).eval() for _ in range(2))
    same = identity.identity_distance(G, G, n=6, seed=1, batch=3)
    assert same["ratio"] == 0 and same["n"] == 6 and len(same["per_latent"]["ratio"]) == 6
    assert identity.identity_distance(G, other, n=6, seed=1, batch=3)["ratio"] > 0.3
