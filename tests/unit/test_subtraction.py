"""subtract + detect_and_measure end to end on synthetic images (and full-size timing)."""

from __future__ import annotations

import time

import numpy as np

from seechange.improc.detection import DetectParams, detect_and_measure
from seechange.improc.inject import inject_point_sources
from seechange.improc.subtraction import SubtractParams, subtract
from tests.unit.test_zogy import make_image, simple_wcs


def test_params_critical_and_frozen() -> None:
    p = SubtractParams()
    assert "threads" not in p.critical() and p.critical()["zogy"]["flux_error_fraction"] == 0.005
    assert DetectParams().critical()["threshold"] == 5.0
    assert SubtractParams(threads=1).critical() == p.critical()


def test_subtract_with_misaligned_reference_finds_transient() -> None:
    rng = np.random.default_rng(2)
    stars = [(70.0, 80.0, 5e4), (180.0, 170.0, 3e4), (200.0, 60.0, 2e4)]
    new = make_image(rng, fwhm=4.2, sky_e=900.0, stars=stars)
    new.astrom_rms_arcsec = 0.03
    rwcs = simple_wcs((256, 256), rot_deg=0.3, shift=(2.4, -1.7))
    nw = new.wcs
    rstars = [(*rwcs.world_to_pixel_values(*nw.pixel_to_world_values(x, y)), f) for x, y, f in stars]
    ref = make_image(
        rng, fwhm=3.3, sky_e=400.0, wcs=rwcs, stars=[(float(x), float(y), f) for x, y, f in rstars]
    )
    ref.astrom_rms_arcsec = 0.03
    new = inject_point_sources(new, [(128.3, 100.6)], [4000.0], rng=rng)
    res = subtract(new, ref, params=SubtractParams())
    t = detect_and_measure(res, new, res.meta["ref_resampled"], params=DetectParams())
    good = t[t["is_good"]]
    assert len(good) == 1
    assert abs(good["x"][0] - 128.3) < 0.5 and abs(good["y"][0] - 100.6) < 0.5
    assert abs(good["flux_psf"][0] - 4000.0) < 4 * good["flux_psf_err"][0]
    assert res.meta["astrometric_sigma_px"] > 0


def test_full_size_recovery() -> None:
    """A full-size pair: 28 of 30 injected sources good (timings are printed; `seechange bench` measures them)."""
    rng = np.random.default_rng(9)
    shape = (4096, 2048)
    new = make_image(rng, shape=shape, fwhm=4.5, sky_e=900.0)
    ref = make_image(
        rng, shape=shape, fwhm=3.5, sky_e=400.0, wcs=simple_wcs(shape, rot_deg=0.01, shift=(0.4, 0.3))
    )
    xy = np.c_[rng.uniform(50, 2000, 30), rng.uniform(50, 4040, 30)]
    new = inject_point_sources(new, xy, np.full(30, 4000.0), rng=rng)
    t0 = time.perf_counter()
    res = subtract(new, ref, params=SubtractParams())
    t1 = time.perf_counter()
    tab = detect_and_measure(res, new, res.meta["ref_resampled"], params=DetectParams())
    t2 = time.perf_counter()
    print(f"\nsubtract 2048x4096: {t1 - t0:.2f} s, detect_and_measure: {t2 - t1:.2f} s, n={len(tab)}")
    assert np.sum(tab["is_good"] & tab["is_positive"]) >= 28
