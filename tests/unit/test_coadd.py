"""Coadding noisy copies."""

from __future__ import annotations

import numpy as np
import sep
from astropy.stats import mad_std

from seechange.improc.coadd import coadd
from seechange.improc.inject import inject_point_sources
from seechange.improc.types import FLAG_COSMIC_RAY, FLAG_SATURATED
from tests.unit.test_zogy import make_image


def test_noise_drops_by_sqrt_n_and_flux_kept() -> None:
    rng = np.random.default_rng(0)
    n = 4
    imgs = []
    for i in range(n):
        im = make_image(rng, sky_e=900.0, zp=30.0 + 0.1 * i)
        s = 10 ** (0.4 * (im.zp - 30.0))  # same star in this image's electrons
        imgs.append(inject_point_sources(im, [(128.2, 127.7)], [2e4 * s], rng=rng))
    imgs[1].image[40, 40] = 1e6  # an unflagged cosmic ray: rejected by clipping
    imgs[2].flags[80, 80] = FLAG_COSMIC_RAY
    imgs[2].weight[80, 80] = 0.0
    out = coadd(imgs)
    assert out.zp == imgs[0].zp
    quiet = np.ones(out.shape, bool)
    quiet[100:160, 100:160] = False
    ratio = mad_std(imgs[0].image[quiet]) / mad_std(out.image[quiet])
    # zero points differ by 0.1 mag steps, so image i's noise is scaled by 10**(-0.04 i): expected gain
    expected = np.sqrt(sum(10 ** (0.08 * i) for i in range(n)))  # = sqrt(n) for equal zero points
    assert abs(ratio - expected) < 0.05 * expected
    f, _, _ = sep.sum_circle(np.ascontiguousarray(out.image, dtype=np.float64), [128.2], [127.7], 15.0)
    assert abs(f[0] / 2e4 - 1) < 0.02
    assert abs(out.image[40, 40]) < 200
    assert out.weight[80, 80] > 0 and out.flags[80, 80] == 0
    assert np.isclose(np.median(out.weight), expected**2 / 900.0, rtol=0.05)
    assert np.isclose(out.psf.sum(), 1.0) and out.psf.shape[0] % 2 == 1
    assert abs(out.fwhm_px - 4.0) < 0.6


def _moffat_stamp(fwhm: float, half: int = 40, beta: float = 3.0) -> np.ndarray:
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    p = (1 + (x * x + y * y) / alpha**2) ** (-beta)
    return (p / p.sum()).astype(np.float32)


def _seeing_triplet(rng: np.random.Generator) -> list:
    """A sharp, low-noise image (more than half the coadd weight) and two broad ones, one bright star."""
    out = []
    for fwhm, sky in ((2.6, 400.0), (5.2, 900.0), (5.6, 900.0)):
        im = make_image(rng, sky_e=sky, fwhm=fwhm)
        psf = _moffat_stamp(fwhm)
        im = inject_point_sources(im, [(128.0, 128.0)], [3e6], psf=psf, rng=rng)
        im.psf = psf
        out.append(im)
    return out


def test_cosmic_ray_in_the_dominant_image_is_clipped() -> None:
    imgs = _seeing_triplet(np.random.default_rng(3))
    imgs[0].image[40, 60:63] += np.float32(1500.0)  # unflagged cosmic ray in the image with most weight
    out = coadd(imgs)
    w = np.asarray(out.meta["psf_weights"])
    assert w[0] > 0.5 * w.sum()  # its weighted median would be its own value
    assert np.all(np.abs(out.image[40, 60:63]) < 200)


def test_star_wings_are_not_clipped_and_keep_the_coadd_psf() -> None:
    imgs = _seeing_triplet(np.random.default_rng(4))
    out = coadd(imgs)
    y, x = np.mgrid[0:256, 0:256]
    r = np.hypot(x - 128.0, y - 128.0)
    k = out.psf.shape[0] // 2
    py, px = np.mgrid[-k : k + 1, -k : k + 1]
    pr = np.hypot(px, py)
    for r0, r1 in ((6, 10), (10, 15), (15, 22)):
        # the broad inputs' wing is several times the sharp one's here: clipping it made the coadd's star
        # fainter than its PSF by tens of percent, and left rings in every difference image
        measured = float(out.image[(r >= r0) & (r < r1)].sum())
        expected = 3e6 * float(out.psf[(pr >= r0) & (pr < r1)].sum())
        noise = np.sqrt(((r >= r0) & (r < r1)).sum() * 900.0 / 3)
        assert abs(measured - expected) < 0.03 * expected + 5 * noise


def test_saturation_in_any_input_is_kept() -> None:
    imgs = _seeing_triplet(np.random.default_rng(5))
    imgs[0].flags[127:130, 127:130] = FLAG_SATURATED
    imgs[0].weight[127:130, 127:130] = 0.0
    out = coadd(imgs)
    assert np.all(out.flags[127:130, 127:130] & FLAG_SATURATED)
    assert out.flags[10, 10] == 0
