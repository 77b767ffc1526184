"""Forced PSF photometry at fixed positions on a synthetic difference image with known noise."""

from __future__ import annotations

import numpy as np

from seechange.improc.detection import DetectParams
from seechange.improc.forced import ForcedParams, forced_psf_photometry, limiting_magnitude
from seechange.improc.inject import shifted_psf
from seechange.units import FWHM_PER_SIGMA

FWHM = 4.0
SIGMA_PIX = 10.0  # e- per pixel


def _psf() -> np.ndarray:
    h = 12
    y, x = np.mgrid[-h : h + 1, -h : h + 1]
    s = FWHM / FWHM_PER_SIGMA
    p = np.exp(-0.5 * (x**2 + y**2) / s**2)
    return p / p.sum()


def _image(rng: np.random.Generator, positions: np.ndarray, fluxes: np.ndarray) -> np.ndarray:
    img = rng.normal(0.0, SIGMA_PIX, (400, 400))
    psf = _psf()
    h = psf.shape[0] // 2
    for (x, y), f in zip(positions, fluxes, strict=True):
        ix, iy = int(np.rint(x)), int(np.rint(y))
        img[iy - h : iy + h + 1, ix - h : ix + h + 1] += f * shifted_psf(psf, x - ix, y - iy)
    return img


def test_flux_and_error_are_right_at_fixed_subpixel_positions() -> None:
    rng = np.random.default_rng(3)
    grid = np.array([(x + 0.37, y - 0.21) for x in range(40, 361, 40) for y in range(40, 361, 40)])
    flux = np.full(len(grid), 2000.0)
    var = np.full((400, 400), SIGMA_PIX**2)
    flags = np.zeros((400, 400), np.uint16)
    pulls, zero_pulls = [], []
    for _ in range(20):
        img = _image(rng, grid, flux)
        r = forced_psf_photometry(img, var, flags, _psf(), grid[:, 0], grid[:, 1], fwhm_px=FWHM)
        pulls.append((r.flux - flux) / r.flux_err)
        blank = grid + 20.0  # between the sources
        b = forced_psf_photometry(img, var, flags, _psf(), blank[:, 0], blank[:, 1], fwhm_px=FWHM)
        zero_pulls.append(b.flux / b.flux_err)
    p, z = np.concatenate(pulls), np.concatenate(zero_pulls)
    # the error of an optimal PSF fit within 2 FWHM: sigma / sqrt(sum P^2) (a little above the full PSF's)
    psf = _psf()
    full = SIGMA_PIX / np.sqrt(np.sum(psf**2))
    assert full <= r.flux_err[0] < 1.05 * full
    for pl in (p, z):
        assert abs(pl.mean()) < 3.0 / np.sqrt(pl.size)
        assert 0.9 < pl.std() < 1.1


def test_flagged_pixels_get_no_weight_and_are_counted() -> None:
    rng = np.random.default_rng(4)
    img = _image(rng, np.array([[200.0, 200.0]]), np.array([5000.0]))
    var = np.full(img.shape, SIGMA_PIX**2)
    flags = np.zeros(img.shape, np.uint16)
    img[200, 201] = 1e6  # a hot pixel on the source
    flags[200, 201] = 1
    r = forced_psf_photometry(img, var, flags, _psf(), [200.0], [200.0], fwhm_px=FWHM)
    assert r.n_bad[0] == 1
    assert abs(r.flux[0] - 5000.0) < 4 * r.flux_err[0]


def test_error_from_score_variance_and_limit() -> None:
    img = np.zeros((100, 100))
    var = np.full(img.shape, 4.0)
    flags = np.zeros(img.shape, np.uint16)
    vs = np.full(img.shape, 9.0e4)
    r = forced_psf_photometry(
        img, var, flags, _psf(), [50.2], [49.6], fwhm_px=FWHM, renorm=1.1, score_var=vs, f_s=30.0
    )
    assert r.flux_err[0] == 1.1 * 300.0 / 30.0
    assert limiting_magnitude(r.flux_err, 30.0)[0] == 30.0 - 2.5 * np.log10(5.0 * 11.0)
    far = forced_psf_photometry(img, var, flags, _psf(), [500.0], [500.0], fwhm_px=FWHM)
    assert np.isnan(far.flux[0]) and np.isnan(limiting_magnitude(far.flux_err, 30.0)[0])
    # the limit's significance is the detection threshold in use unless set (the default resolves to the
    # same critical parameters, so the same forced provenance, as before it was tied to the threshold)
    assert ForcedParams().critical() == {"fit_radius_fwhm": 2.0, "limit_sigma": None}
    assert DetectParams().forced_params.critical() == {"fit_radius_fwhm": 2.0, "limit_sigma": 5.0}
    assert DetectParams(threshold=4.0).forced_params.limit_sigma == 4.0
    fixed = DetectParams(threshold=4.0, forced=ForcedParams(limit_sigma=5.0))
    assert fixed.forced_params.limit_sigma == 5.0


def test_cropped_fit_template_is_the_centre_of_the_full_shift() -> None:
    """The fit template is interpolated on the fitted square only: it must be the centre of the full
    shifted stamp divided by the full stamp's sum, for a large P_D-like stamp with negative lobes and
    asymmetric wings, at shifts up to the half pixel a rounded position can have."""
    from scipy import ndimage

    from seechange.improc.forced import _fit_template, _shifted_sum, _spline_coefficients

    rng = np.random.default_rng(11)
    h = 50
    y, x = np.mgrid[-h : h + 1, -h : h + 1]
    p = np.exp(-0.5 * ((x - 0.3) ** 2 + (y + 0.2) ** 2) / 2.0**2) - 0.05 * np.exp(
        -0.5 * (x**2 + y**2) / 6.0**2
    )
    p += 1e-4 * rng.normal(size=p.shape)
    coeffs = _spline_coefficients(p / p.sum())
    half = 9
    for dx, dy in ((0.0, 0.0), (0.5, -0.5), (-0.5, 0.5), (0.37, -0.21), (-0.49, -0.13)):
        full = ndimage.shift(coeffs, (dy, dx), order=3, mode="constant", cval=0.0, prefilter=False)
        assert abs(_shifted_sum(coeffs, dx, dy) - full.sum()) <= 1e-12 * abs(full.sum())
        centre = (full / full.sum())[h - half : h + half + 1, h - half : h + half + 1]
        part = _fit_template(coeffs, dx, dy, half)
        assert part.shape == (2 * half + 1, 2 * half + 1)
        np.testing.assert_allclose(part, centre, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(_fit_template(coeffs, dx, dy), full / full.sum())
