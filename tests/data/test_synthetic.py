"""Synthetic domains: determinism, batch invariance, windowed == full rendering, clear errors."""
import numpy as np
import pytest

from cartoon_stylegan.data import synthetic as S
from cartoon_stylegan.data import SYNTHETIC_DOMAINS, preview_grid, render, render_batch, sample_factors

DOMAINS = sorted(SYNTHETIC_DOMAINS)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("res", [16, 32, 64, 128])
def test_deterministic_in_seed_and_index(domain, res):
    a = render(domain, 7, 3, res)
    assert a.dtype == np.uint8 and a.shape == (res, res, 3)
    assert a.tobytes() == render(domain, 7, 3, res).tobytes()
    assert a.tobytes() != render(domain, 7, 4, res).tobytes()
    assert a.tobytes() != render(domain, 8, 3, res).tobytes()


@pytest.mark.parametrize("domain", DOMAINS)
def test_batch_equals_one_by_one(domain):
    idx = [5, 0, 17, 3, 9, 11]
    batch = render_batch(domain, 1, idx, 32)
    for i, im in zip(idx, batch):
        assert np.array_equal(im, render(domain, 1, i, 32))


@pytest.mark.parametrize("draw", [S.draw_faces, S.draw_cartoons])
@pytest.mark.parametrize("res", [16, 32, 64])
def test_windowed_features_equal_full_grid(draw, res):
    """Painting groups inside per-sample windows must not change a single byte."""
    f = sample_factors(11, 1, np.arange(48))
    assert np.array_equal(draw(f, res), draw(f, res, _full_window=True))


def test_domains_unpaired_but_same_factor_distribution():
    a = sample_factors(0, SYNTHETIC_DOMAINS["faces"].stream, np.arange(400))
    b = sample_factors(0, SYNTHETIC_DOMAINS["cartoons"].stream, np.arange(400))
    assert not np.allclose(a.cx, b.cx)                      # different draws (unpaired)
    for name in ("cx", "size", "tilt", "skin", "eye_r", "mouth_curve"):
        x, y = getattr(a, name), getattr(b, name)
        assert abs(x.mean() - y.mean()) < 0.15 * (x.max() - x.min())   # same distribution


def test_domains_render_differently_from_the_same_factors():
    f = sample_factors(0, 1, np.arange(4))
    faces, cartoons = S.draw("faces", f, 64), S.draw("cartoons", f, 64)
    assert np.abs(faces.astype(int) - cartoons.astype(int)).mean() > 5
    # cartoons are flat: few distinct colours per image compared with the shaded "photos"
    n_col = lambda im: len(np.unique(im.reshape(-1, 3), axis=0))  # noqa: E731
    assert n_col(cartoons[0]) < n_col(faces[0])


def test_preview_grid():
    g = preview_grid("synthetic:cartoons", 0, 6, 32)
    assert g.dtype == np.uint8 and g.shape == (2 * 32 + 2, 3 * 32 + 2 * 2, 3)
    assert np.array_equal(g[:32, :32], render("cartoons", 0, 0, 32))


@pytest.mark.parametrize("bad", [8, 48, 2048, 64.0, "64", True, 0])
def test_bad_resolution_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="power of two"):
        render("faces", 0, 0, bad)


def test_bad_domain_and_seed_are_clear_errors():
    with pytest.raises(ValueError, match="unknown synthetic domain 'dogs'.*cartoons.*faces"):
        render("dogs", 0, 0, 32)
    with pytest.raises(ValueError, match=">= 0"):
        render("faces", -1, 0, 32)


def test_domain_gap_moves_the_cartoons_geometry_by_the_stated_amounts():
    """synthetic:cartoons@G: G = 0 is the cartoons as before (same bytes); G > 0 moves each geometry factor
    by GAP_SHIFT x G (scaled or shifted) and leaves colours alone; out-of-range gaps are one line."""
    from cartoon_stylegan.data.synthetic import GAP_SHIFT, get_domain, shift_geometry

    idx = np.arange(16)
    assert np.array_equal(render_batch("cartoons@0", 3, idx, 32), render_batch("cartoons", 3, idx, 32))
    base = sample_factors(3, SYNTHETIC_DOMAINS["cartoons"].stream, idx)
    far = shift_geometry(base, 0.8)
    for name, (how, amount) in GAP_SHIFT.items():
        want = getattr(base, name) * (1 + amount * 0.8) if how == "scale" else getattr(base, name) + amount * 0.8
        np.testing.assert_allclose(getattr(far, name), want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(far.skin, base.skin) and np.array_equal(far.hair, base.hair)
    a, b = render_batch("cartoons", 3, idx, 32), render_batch("synthetic:cartoons@0.8", 3, idx, 32)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5  # the pictures do change
    assert get_domain("cartoons@0.8").gap == 0.8 and get_domain("cartoons@0.8").stream == 2
    for bad in ("cartoons@x", "cartoons@-1", "cartoons@2", "cartoons@nan"):
        with pytest.raises(ValueError, match="the gap after @ must be a number in 0..1.5"):
            get_domain(bad)
