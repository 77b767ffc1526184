"""Photometry and quality flags on seeded synthetic injections."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from seechange.improc.detection import DETECTION_COLUMNS, detect_transients
from seechange.improc.inject import inject_point_sources
from seechange.improc.measure import QF_DIPOLE, MeasureParams, measure_sightings
from seechange.improc.zogy import ZogyParams, zogy
from tests.unit.test_zogy import make_image


def _grid_positions(rng: np.random.Generator, n_side: int = 6, shape=(256, 256), margin: int = 30):
    g = np.linspace(margin, shape[0] - margin, n_side)
    xy = np.array([(x, y) for y in g for x in g], dtype=float)
    return xy + rng.uniform(-0.5, 0.5, xy.shape)


def _matched(det, xy, tol=2.0):
    idx = []
    for x, y in xy:
        d = np.hypot(det["x"] - x, det["y"] - y)
        idx.append(int(np.argmin(d)) if len(d) and d.min() < tol else -1)
    return np.array(idx)


def test_psf_flux_pulls_and_bias() -> None:
    pulls, ratios, good = [], [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        ref = make_image(rng, fwhm=3.4, sky_e=500.0, zp=30.2)
        new = make_image(rng, fwhm=4.4, sky_e=900.0, zp=30.0)
        xy = _grid_positions(rng)
        flux = rng.uniform(2000.0, 8000.0, len(xy))
        new = inject_point_sources(new, xy, flux, rng=rng)
        res = zogy(new, ref, params=ZogyParams())
        det = detect_transients(res, threshold=5.0)
        m = measure_sightings(res, new, ref, det)
        idx = _matched(m, xy)
        assert np.all(idx >= 0)
        pulls.extend((m["flux_psf"][idx] - flux) / m["flux_psf_err"][idx])
        ratios.extend(m["flux_psf"][idx] / flux)
        good.extend(m["is_good"][idx])
        dist = np.hypot(m["x"][idx] - xy[:, 0], m["y"][idx] - xy[:, 1])
        assert np.median(dist) < 0.3 and np.all(dist < 1.0)
    pulls = np.asarray(pulls)
    assert 0.8 < np.std(pulls) < 1.25
    assert abs(np.median(ratios) - 1.0) < 0.02
    assert np.mean(good) > 0.95


def test_faint_and_negative_sources_measured() -> None:
    rng = np.random.default_rng(42)
    ref = make_image(rng, fwhm=3.0, sky_e=500.0, stars=[(80.3, 90.6, 4000.0)])
    new = make_image(rng, fwhm=4.0, sky_e=900.0, stars=[(170.1, 160.2, 3000.0)])
    res = zogy(new, ref, params=ZogyParams())
    det = detect_transients(res, threshold=5.0)
    m = measure_sightings(res, new, ref, det)
    assert len(m) == 2
    neg = m[~m["is_positive"]][0]
    pos = m[m["is_positive"]][0]
    assert neg["flux_psf"] < 0 and abs(neg["flux_psf"] + 4000.0) < 4 * neg["flux_psf_err"]
    assert abs(pos["flux_psf"] - 3000.0) < 4 * pos["flux_psf_err"]
    assert np.isclose(pos["flux_njy"], pos["flux_psf"] * 10 ** (-0.4 * (30.0 - 31.4)))
    assert np.isclose(pos["mag"], -2.5 * np.log10(pos["flux_psf"]) + 30.0)
    assert np.isclose(abs(pos["snr"]), abs(pos["score"]), rtol=0.1)
    assert m["is_good"].all()


def test_dipole_is_flagged() -> None:
    rng = np.random.default_rng(3)
    star = 2e5
    ref = make_image(rng, fwhm=3.5, sky_e=500.0, stars=[(128.0, 128.0, star)])
    new = make_image(rng, fwhm=3.5, sky_e=500.0, stars=[(128.9, 128.0, star)])  # 0.9 px misregistration
    res = zogy(new, ref, params=ZogyParams(flux_error_fraction=0.0))
    det = detect_transients(res, threshold=5.0)
    m = measure_sightings(res, new, ref, det)
    assert len(m) >= 2
    assert np.all(m["qflags"] & QF_DIPOLE)
    assert not m["is_good"].any()


def _detections(points) -> Table:
    """A detection table at chosen (x, y, is_positive) points, as detect_transients would return."""
    rows = [
        (i, x, y, round(x), round(y), 6.0 if pos else -6.0, pos, 5, 0) for i, (x, y, pos) in enumerate(points)
    ]
    return Table(
        rows=rows,
        names=DETECTION_COLUMNS,
        dtype=(np.int64, np.float64, np.float64, np.int64, np.int64, np.float64, bool, np.int64, np.uint16),
    )


def test_near_bright_star_flag() -> None:
    from seechange.improc.measure import QF_NEAR_BRIGHT
    from seechange.improc.types import FLAG_SATURATED

    rng = np.random.default_rng(7)
    # a bright star that varies by 3%, a faint galaxy-like source with a transient on it, saturation
    ref = make_image(rng, fwhm=3.2, sky_e=600.0, zp=30.0, stars=[(128.0, 128.0, 2e6), (60.0, 200.0, 3e4)])
    new = make_image(
        rng,
        fwhm=4.6,
        sky_e=1000.0,
        zp=30.0,
        stars=[(128.0, 128.0, 2.06e6), (60.0, 200.0, 3e4), (60.5, 200.5, 5e3)],
    )
    new.flags[200:203, 40:43] = FLAG_SATURATED
    new.weight[200:203, 40:43] = 0.0
    res = zogy(new, ref, params=ZogyParams())
    pts = [
        (134.0, 128.0, False),  # 6 px out in the variable star's wing, within its measured residual reach
        (128.0, 128.0, True),  # the star's own 3% change: not flagged by this cut
        (60.5, 200.5, True),  # transient on a faint source: not flagged
        (49.0, 201.0, True),  # next to saturated pixels
        (120.0, 60.0, True),
    ]  # empty sky
    m = measure_sightings(res, new, ref, _detections(pts))
    near = (np.asarray(m["qflags"]) & QF_NEAR_BRIGHT) != 0
    assert near.tolist() == [True, False, False, True, False]
    off = measure_sightings(res, new, ref, _detections(pts), params=MeasureParams(bright_stars=False))
    assert not np.any(np.asarray(off["qflags"]) & QF_NEAR_BRIGHT)


def test_near_bright_reach_grows_with_the_star_flux() -> None:
    """A star whose new-image PSF model is 6 % too narrow leaves a residual of a fixed fraction of its wing:
    the same faint detection 5 px out is flagged next to a bright star and not next to a faint one."""
    import dataclasses

    from seechange.improc.measure import QF_NEAR_BRIGHT, _wing_residual
    from tests.unit.test_zogy import gaussian_psf

    flagged = []
    for star in (3e4, 3e6):
        rng = np.random.default_rng(11)
        ref = make_image(rng, fwhm=3.4, sky_e=600.0, stars=[(128.0, 128.0, star)])
        new = make_image(rng, fwhm=4.4, sky_e=900.0, stars=[(128.0, 128.0, star)])
        new = dataclasses.replace(new, psf=gaussian_psf(4.15), fwhm_px=4.15)  # PSF model error
        res = zogy(new, ref, params=ZogyParams())
        m = measure_sightings(res, new, ref, _detections([(133.0, 128.0, True), (60.0, 60.0, True)]))
        near = (np.asarray(m["qflags"]) & QF_NEAR_BRIGHT) != 0
        assert not near[1]  # empty sky
        flagged.append(bool(near[0]))
        if star > 1e6:  # the residual fraction is measured on the star: a few % of its wing
            dvar = np.asarray(res.diff_variance, np.float64) * res.renorm_factor**2
            from seechange.improc.measure import _radial_profile

            eps = _wing_residual(
                np.asarray(res.diff, np.float64),
                dvar,
                res.flags,
                128.0,
                128.0,
                star,
                _radial_profile(res.psf_d),
                (133.0, 128.0),
                res.fwhm_px,
            )
            assert 0.01 < eps < 0.3
    assert flagged == [False, True]


def test_psf_chi2_on_the_cropped_stamp_equals_the_full_shift() -> None:
    """`_psf_chi2` shifts only the centre of P_D it fits: its chi^2 must be the one of the full stamp's
    linear shift (to rounding), at half-pixel offsets too, and about 1 for P_D-shaped sources in noise."""
    from scipy import ndimage

    from seechange.improc.measure import _psf_chi2

    rng = np.random.default_rng(5)
    h, fwhm, sigma = 50, 4.0, 10.0
    y, x = np.mgrid[-h : h + 1, -h : h + 1]
    psf = np.exp(-0.5 * (x**2 + y**2) / (fwhm / 2.3548) ** 2) - 0.01 * np.exp(-0.5 * (x**2 + y**2) / 8.0**2)
    psf /= psf.sum()
    xc = np.array([60.5, 140.37, 100.0, 60.0, 140.0])
    yc = np.array([60.5, 60.79, 100.0, 140.0, 140.51])
    flux = np.array([5000.0, 3000.0, 8000.0, 1000.0, 20000.0])
    diff = rng.normal(0.0, sigma, (200, 200))
    for xi, yi, f in zip(xc, yc, flux, strict=True):
        ix, iy = round(xi), round(yi)
        diff[iy - h : iy + h + 1, ix - h : ix + h + 1] += f * ndimage.shift(psf, (yi - iy, xi - ix), order=1)
    dvar = np.full(diff.shape, sigma**2)
    bad = np.zeros(diff.shape, bool)
    got = _psf_chi2(diff, dvar, bad, xc, yc, flux, psf, fwhm)

    r, rad = int(np.ceil(1.5 * fwhm)), 1.5 * fwhm
    want = []
    for xi, yi, f in zip(xc, yc, flux, strict=True):
        ix, iy = round(xi), round(yi)
        sh = ndimage.shift(psf, (yi - iy, xi - ix), order=1, mode="constant")[
            h - r : h + r + 1, h - r : h + r + 1
        ]
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        m = np.hypot(xx + ix - xi, yy + iy - yi) <= rad
        res = (diff[iy - r : iy + r + 1, ix - r : ix + r + 1] - f * sh)[m]
        want.append(float((res**2 / sigma**2).sum() / (m.sum() - 1)))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert 0.5 < np.median(got) < 1.6
