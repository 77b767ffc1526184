"""Injection of PSF-shaped sources."""

from __future__ import annotations

import numpy as np

from seechange.improc.inject import inject_point_sources
from tests.unit.test_zogy import make_image


def test_flux_position_noise_and_weight() -> None:
    rng = np.random.default_rng(0)
    img = make_image(rng, sky_e=100.0)
    before = img.image.copy()
    out = inject_point_sources(img, [(50.3, 60.8), (200.0, 10.0)], [1e5, 5e3], rng=rng)
    assert np.array_equal(img.image, before)
    added = out.image.astype(float) - before
    assert abs(added[40:82, 30:72].sum() / 1e5 - 1) < 0.01
    y, x = np.mgrid[40:82, 30:72]
    w = added[40:82, 30:72]
    assert abs((w * x).sum() / w.sum() - 50.3) < 0.02 and abs((w * y).sum() / w.sum() - 60.8) < 0.02
    assert out.weight[61, 50] < img.weight[61, 50]
    assert np.isclose(
        1 / out.weight[61, 50] - 1 / img.weight[61, 50],
        1e5 * img.psf[img.psf.shape[0] // 2, img.psf.shape[1] // 2],
        rtol=0.3,
    )
    assert out.meta["injected"][0][2] == 1e5
