import numpy as np
import pytest

from seechange.improc.extract import extract_sources
from seechange.improc.psf import (
    aperture_fraction,
    build_psf,
    gaussian_psf,
    measure_fwhm,
    noise_equivalent_area,
    stamp_size_for,
)


def _moffat(dx, dy, fwhm, beta):
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    return (beta - 1) / (np.pi * alpha**2) * (1 + (dx**2 + dy**2) / alpha**2) ** (-beta)


def _gauss(dx, dy, fwhm):
    s = fwhm / 2.3548
    return np.exp(-(dx**2 + dy**2) / (2 * s * s)) / (2 * np.pi * s * s)


def _star_field(rng, profile, *, n=60, shape=(600, 600), flux=2e5, sky_sigma=8.0):
    ny, nx = shape
    img = rng.normal(0, sky_sigma, shape)
    # a jittered grid keeps stars isolated
    gx, gy = np.meshgrid(np.arange(45, nx - 40, 75), np.arange(45, ny - 40, 75))
    xs = gx.ravel()[:n] + rng.uniform(-5, 5, gx.size)[:n]
    ys = gy.ravel()[:n] + rng.uniform(-5, 5, gy.size)[:n]
    for x0, y0 in zip(xs, ys):
        x1, y1 = int(x0) - 25, int(y0) - 25
        yy, xx = np.mgrid[y1 : y1 + 51, x1 : x1 + 51]
        img[y1 : y1 + 51, x1 : x1 + 51] += flux * profile(xx - x0, yy - y0)
    return img.astype(np.float32)


@pytest.mark.parametrize("fwhm", [2.8, 4.5])
def test_gaussian_psf_model_fwhm(fwhm):
    rng = np.random.default_rng(30)
    img = _star_field(rng, lambda dx, dy: _gauss(dx, dy, fwhm))
    src = extract_sources(img, noise=8.0, aper_radius=2 * fwhm)
    m = build_psf(img, src)
    assert m.n_stars >= 30
    n = m.stamp.shape[0]
    # the stamp carries the analytic wing out to 8 FWHM (16 x FWHM across)
    assert n % 2 == 1 and abs(n - 16 * fwhm) <= 2.5
    assert m.stamp.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(m.stamp), m.stamp.shape) == (n // 2, n // 2)
    assert m.fwhm_px == pytest.approx(fwhm, rel=0.03)
    # the model matches the true profile at the 1% of peak level
    truth = gaussian_psf(fwhm, n)
    assert np.abs(m.stamp - truth).max() < 0.02 * truth.max()


def test_moffat_psf_model_fwhm():
    rng = np.random.default_rng(31)
    fwhm, beta = 3.8, 3.0
    img = _star_field(rng, lambda dx, dy: _moffat(dx, dy, fwhm, beta), flux=4e5)
    src = extract_sources(img, noise=8.0, aper_radius=8.0)
    m = build_psf(img, src)
    assert m.n_stars >= 30
    assert m.fwhm_px == pytest.approx(fwhm, rel=0.03)


def test_fallback_with_few_stars():
    rng = np.random.default_rng(32)
    img = rng.normal(0, 1, (200, 200)).astype(np.float32)
    img[100, 100] += 500
    src = extract_sources(img, noise=1.0)
    with pytest.warns(RuntimeWarning):
        m = build_psf(img, src)
    assert m.n_stars == 0 and m.stamp.sum() == pytest.approx(1.0, abs=1e-5)


def test_helpers():
    g = gaussian_psf(3.0, 21)
    assert g.shape == (21, 21) and g.sum() == pytest.approx(1.0, abs=1e-6)
    assert measure_fwhm(g) == pytest.approx(3.0, rel=0.01)
    s = 3.0 / 2.3548
    assert noise_equivalent_area(g) == pytest.approx(4 * np.pi * s * s, rel=0.02)
    assert aperture_fraction(g, 10.0) == pytest.approx(1.0, abs=1e-4)
    assert aperture_fraction(g, s * np.sqrt(2 * np.log(2))) == pytest.approx(0.5, abs=0.02)
    assert stamp_size_for(2.0) == 15 and stamp_size_for(20.0) == 41 and stamp_size_for(5.2) == 21
    with pytest.raises(ValueError):
        gaussian_psf(3.0, 20)


def test_moffat_wing_is_analytic_beyond_the_core():
    # The empirical stack is noise beyond ~2 FWHM (sky noise / star flux per pixel); the model's wing is the
    # fitted Moffat there, so it follows the true profile far below that noise, out to 8 FWHM.
    rng = np.random.default_rng(33)
    fwhm, beta = 3.8, 3.0
    img = _star_field(rng, lambda dx, dy: _moffat(dx, dy, fwhm, beta), flux=4e5)
    src = extract_sources(img, noise=8.0, aper_radius=8.0)
    m = build_psf(img, src)
    assert m.moffat is not None and m.moffat.beta == pytest.approx(beta, rel=0.1)
    n = m.stamp.shape[0]
    assert n >= 8 * 2 * fwhm
    k = n // 2
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    r = np.hypot(xx, yy)
    truth = _moffat(xx, yy, fwhm, beta)
    truth /= truth[r <= 25].sum()  # the test's stars are drawn out to 25 px
    for r0, r1 in ((6, 10), (10, 15), (15, 22)):
        ring = (r >= r0) & (r < r1)
        assert m.stamp[ring].mean() == pytest.approx(truth[ring].mean(), rel=0.1)
        # per-pixel error far below the per-pixel noise of a median stack (~ 8 / 4e5 / sqrt(49) ~ 3e-6)
        assert np.std(m.stamp[ring] - truth[ring]) < 0.1 * truth[ring].mean() + 2e-7
