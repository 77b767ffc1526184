"""Artefacts of real images: single-pixel spikes, sharp detections at any SNR, registration noise from data."""

from __future__ import annotations

import numpy as np

from seechange.improc.detection import DetectParams, detect_and_measure
from seechange.improc.inject import inject_point_sources
from seechange.improc.measure import QF_BAD_PIXELS, QF_WIDTH, MeasureParams
from seechange.improc.subtraction import (
    SubtractParams,
    registration_scatter_px,
    single_pixel_spikes,
    subtract,
)
from seechange.improc.types import FLAG_BAD
from tests.unit.test_zogy import make_image


def _stars(rng: np.random.Generator, n: int, shape: tuple[int, int], flux: float) -> list[tuple]:
    ys = rng.uniform(20, shape[0] - 20, n)
    xs = rng.uniform(20, shape[1] - 20, n)
    return [(x, y, flux) for x, y in zip(xs, ys)]


def test_spikes_are_found_and_stars_are_not() -> None:
    rng = np.random.default_rng(11)
    stars = _stars(rng, 30, (256, 256), 3e4)
    im = make_image(rng, fwhm=2.2, sky_e=500.0, stars=stars)  # narrow but resolved stars, some faint
    faint = make_image(rng, fwhm=2.2, sky_e=500.0, stars=_stars(rng, 30, (256, 256), 800.0))
    hot = [(40, 50), (200, 100), (130, 220)]
    for y, x in hot:
        im.image[y, x] += 400.0  # about 18 sigma in one pixel
    found = single_pixel_spikes(im.image, im.weight, im.fwhm_px)
    assert {(int(y), int(x)) for y, x in zip(*np.nonzero(found))} == set(hot)
    assert not single_pixel_spikes(faint.image, faint.weight, faint.fwhm_px).any()
    assert not single_pixel_spikes(im.image, im.weight, 1.5).any()  # undersampled: never


def test_hot_pixel_in_either_image_does_not_make_a_good_sighting() -> None:
    rng = np.random.default_rng(5)
    ref = make_image(rng, fwhm=3.4, sky_e=600.0)
    new = make_image(rng, fwhm=4.2, sky_e=900.0)
    new.image[100, 100] += 600.0  # a hot pixel in the new image only
    ref.image[60, 180] += 600.0  # and one in the reference (a negative in D)
    before = new.flags.copy()
    res = subtract(new, ref)
    assert np.array_equal(new.flags, before)  # the input is not changed
    assert res.flags[100, 100] & FLAG_BAD
    tab = detect_and_measure(res, new, res.meta["ref_resampled"])
    near = [
        row
        for row in tab
        if np.hypot(row["x"] - 100, row["y"] - 100) < 3 or np.hypot(row["x"] - 180, row["y"] - 60) < 3
    ]
    assert all(not row["is_good"] for row in near)


def test_sharp_detection_flagged_at_low_snr_and_point_sources_kept() -> None:
    rng = np.random.default_rng(7)
    ref = make_image(rng, fwhm=3.5, sky_e=600.0)
    new = make_image(rng, fwhm=4.0, sky_e=900.0)
    xy = np.array([[40.3, 40.7], [90.1, 200.4], [150.6, 60.2], [210.2, 150.8], [60.5, 120.5], [180.4, 210.1]])
    new = inject_point_sources(new, xy, np.full(len(xy), 2500.0), rng=rng)  # about SNR 7 point sources
    new.image[128, 128] += 700.0  # an unflagged one-pixel hit of comparable significance (about 8 sigma)
    params = SubtractParams(spike_nsigma=0.0)  # leave the hit to the measurement cut
    res = subtract(new, ref, params=params)
    tab = detect_and_measure(
        res, new, res.meta["ref_resampled"], params=DetectParams(measure=MeasureParams())
    )
    hit = [r for r in tab if np.hypot(r["x"] - 128, r["y"] - 128) < 2]
    assert len(hit) == 1 and abs(hit[0]["snr"]) < 10 and hit[0]["qflags"] & QF_WIDTH
    kept = 0
    for x, y in xy:
        rows = [r for r in tab if np.hypot(r["x"] - x, r["y"] - y) < 2]
        if rows:
            assert not rows[0]["qflags"] & (QF_WIDTH | QF_BAD_PIXELS)
            kept += 1
    assert kept >= 5


def test_registration_scatter_measures_a_shift_between_the_images() -> None:
    shape = (512, 512)
    rng = np.random.default_rng(3)
    stars = _stars(rng, 80, shape, 5e4)
    ref = make_image(rng, shape=shape, fwhm=3.5, sky_e=400.0, stars=stars)
    aligned = make_image(rng, shape=shape, fwhm=3.8, sky_e=400.0, stars=stars)
    shifted = make_image(
        rng, shape=shape, fwhm=3.8, sky_e=400.0, stars=[(x + 0.25, y - 0.15, f) for x, y, f in stars]
    )
    sig0, n0 = registration_scatter_px(aligned, ref)
    sig1, n1 = registration_scatter_px(shifted, ref)
    assert n0 >= 20 and n1 >= 20
    assert sig0 < 0.03
    assert abs(sig1 - np.sqrt((0.25**2 + 0.15**2) / 2)) < 0.03
    # subtract() uses it (the catalogue figures of these images are 0)
    res = subtract(shifted, ref)
    assert abs(res.meta["astrometric_sigma_px"] - sig1) < 1e-6
    assert (
        subtract(shifted, ref, params=SubtractParams(registration_from_data=False)).meta[
            "astrometric_sigma_px"
        ]
        == 0.0
    )
