import numpy as np
import pytest

from seechange.improc.psf import aperture_fraction, gaussian_psf, noise_equivalent_area
from seechange.improc.zeropoint import aperture_flux, fit_zeropoint, limiting_magnitude


def test_zeropoint_on_synthetic_stars():
    rng = np.random.default_rng(50)
    zp_true, fwhm, sky_sigma = 31.2, 4.0, 12.0
    n = 80
    ny, nx = 800, 800
    gx, gy = np.meshgrid(np.arange(40, nx - 30, 80), np.arange(40, ny - 30, 80))
    x = gx.ravel()[:n] + rng.uniform(-3, 3, n)
    y = gy.ravel()[:n] + rng.uniform(-3, 3, n)
    mag = rng.uniform(17.0, 20.0, n)
    flux = 10 ** (-0.4 * (mag - zp_true))
    s = fwhm / 2.3548
    img = rng.normal(0, sky_sigma, (ny, nx))
    yy, xx = np.mgrid[-25:26, -25:26]
    for xi, yi, f in zip(x, y, flux):
        ix, iy = int(xi), int(yi)
        dx, dy = xx + ix - xi, yy + iy - yi
        img[iy - 25 : iy + 26, ix - 25 : ix + 26] += (
            f * np.exp(-(dx**2 + dy**2) / (2 * s * s)) / (2 * np.pi * s * s)
        )
    # 8 outliers (variables / blends) 0.5 mag off in the catalogue
    mag_ref = mag.copy()
    mag_ref[:8] += 0.5
    # small aperture + PSF aperture correction
    r = 1.5 * fwhm
    f, fe, _flag = aperture_flux(img, x, y, r, noise=sky_sigma)
    psf = gaussian_psf(fwhm, 31)
    z = fit_zeropoint(f, fe, mag_ref, aperture_correction=aperture_fraction(psf, r))
    assert z.zp == pytest.approx(zp_true, abs=0.01)
    assert z.n_used <= n - 8 and z.zp_err < 0.01
    # large aperture, no correction
    f2, fe2, _ = aperture_flux(img, x, y, 4 * fwhm, noise=sky_sigma)
    assert fit_zeropoint(f2, fe2, mag_ref).zp == pytest.approx(zp_true, abs=0.01)
    # limiting magnitude: 5 sigma in the NEA
    nea = noise_equivalent_area(psf)
    lim = limiting_magnitude(z.zp, sky_sigma, nea)
    assert lim == pytest.approx(z.zp - 2.5 * np.log10(5 * sky_sigma * np.sqrt(4 * np.pi * s * s)), abs=0.02)


def test_too_few_stars_gives_nan():
    with pytest.warns(RuntimeWarning):
        z = fit_zeropoint(np.array([100.0, -1]), np.array([1.0, 1.0]), np.array([20.0, 20.0]))
    assert np.isnan(z.zp) and z.n_used == 1
