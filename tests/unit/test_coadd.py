"""Coadding noisy copies."""

from __future__ import annotations

import numpy as np
import sep
from astropy.stats import mad_std

from seechange.improc.coadd import coadd
from seechange.improc.inject import inject_point_sources
from seechange.improc.types import FLAG_COSMIC_RAY
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
