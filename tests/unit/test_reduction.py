import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import mad_std
from astropy.table import Table
from astropy.wcs import WCS

from seechange.imageio import read_ccd_headers, read_image_data, write_image_data
from seechange.improc.calibrate import CalibFrames
from seechange.improc.reduction import ReduceParams, reduce_exposure
from seechange.improc.types import ImageData

SCALE = 0.263 / 3600.0
NOV = 20


def _wcs(ra, dec, nx, ny, rot_deg=0.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = SCALE * np.array([[-c, s], [s, c]])
    return w


def synthetic_raw(seed: int, nx: int = 512, ny: int = 1024, zp: float = 31.0, fwhm: float = 3.8):
    """A small raw CCD with Gaussian stars, its calibration frames, refcat and the true WCS."""
    rng = np.random.default_rng(seed)
    ra0, dec0 = 35.0, -5.0
    truth = _wcs(ra0, dec0, nx, ny, rot_deg=0.02)
    n = 500
    x, y = rng.uniform(-10, nx + 10, n), rng.uniform(-10, ny + 10, n)
    mag = rng.uniform(16.5, 23.5, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    refcat = Table({"ra": ra, "dec": dec, "mag_r": mag})
    sky, exptime = 1500.0, 60.0
    e = np.full((ny, nx), sky)
    s = fwhm / 2.3548
    yy, xx = np.mgrid[-20:21, -20:21]
    for xi, yi, m in zip(x, y, mag):
        ix, iy = round(xi), round(yi)
        stamp = 10 ** (-0.4 * (m - zp)) * np.exp(-((xx + ix - xi) ** 2 + (yy + iy - yi) ** 2) / (2 * s * s))
        stamp /= 2 * np.pi * s * s
        y0, y1, x0, x1 = iy - 20, iy + 21, ix - 20, ix + 21
        cy0, cx0 = max(0, -y0), max(0, -x0)
        y0c, x0c, y1c, x1c = max(y0, 0), max(x0, 0), min(y1, ny), min(x1, nx)
        if y1c > y0c and x1c > x0c:
            e[y0c:y1c, x0c:x1c] += stamp[cy0 : cy0 + y1c - y0c, cx0 : cx0 + x1c - x0c]
    flat = rng.uniform(0.97, 1.03, (ny, nx)).astype(np.float32)
    bias = rng.normal(5.0, 1.0, (ny, nx)).astype(np.float32)
    dark = np.full((ny, nx), 0.01, np.float32)
    gain, rn = 4.0, 7.0
    counts = rng.poisson(e * flat + dark * exptime) + rng.normal(0, rn, (ny, nx))
    adu = counts / gain + bias
    raw = np.empty((ny, nx + 2 * NOV), np.float32)
    level = 1400.0 + 3.0 * np.arange(ny) / ny
    raw[:, NOV : NOV + nx] = adu + level[:, None]
    raw[:, :NOV] = level[:, None] + rng.normal(0, rn / gain, (ny, NOV))
    raw[:, -NOV:] = level[:, None] + rng.normal(0, rn / gain, (ny, NOV))
    h = fits.Header()
    h["NAXIS1"], h["NAXIS2"] = nx + 2 * NOV, ny
    h["DATASEC"] = f"[{NOV + 1}:{NOV + nx},1:{ny}]"
    h["DATASECA"] = f"[{NOV + 1}:{NOV + nx // 2},1:{ny}]"
    h["DATASECB"] = f"[{NOV + nx // 2 + 1}:{NOV + nx},1:{ny}]"
    h["BIASSECA"] = f"[1:{NOV},1:{ny}]"
    h["BIASSECB"] = f"[{nx + NOV + 1}:{nx + 2 * NOV},1:{ny}]"
    for a in "AB":
        h[f"GAIN{a}"], h[f"RDNOISE{a}"], h[f"SATURAT{a}"] = gain, rn, 60000.0
    h["EXPTIME"], h["MJD-OBS"], h["FILTER"], h["AIRMASS"], h["OBJECT"] = (
        exptime,
        60000.1,
        "r DECam",
        1.2,
        "F1",
    )
    head = _wcs(ra0 + 3.0 / 3600 / np.cos(np.radians(dec0)), dec0 - 2.5 / 3600, nx, ny)
    h.update(head.to_header())
    calib = CalibFrames(bias=bias, dark=dark, flat=flat, bpm=np.zeros((ny, nx), bool))
    return raw.astype(">f4"), h, calib, refcat, truth


@pytest.fixture(scope="module")
def reduced() -> tuple[ImageData, WCS]:
    raw, h, calib, refcat, truth = synthetic_raw(60)
    return reduce_exposure(raw, h, calib, refcat, params=ReduceParams()), truth


def test_reduce_synthetic_exposure(reduced):
    d, truth = reduced
    assert d.image.shape == (1024, 512) and d.image.dtype == np.float32
    assert d.band == "r" and d.mjd == pytest.approx(60000.1 + 30 / 86400)
    assert d.zp == pytest.approx(31.0, abs=0.03)
    assert d.astrom_rms_arcsec < 0.1
    assert d.fwhm_px == pytest.approx(3.8, rel=0.05)
    assert d.bkg_level == pytest.approx(1500.0, rel=0.01)
    assert d.bkg_rms == pytest.approx(np.sqrt(1500 + 49), rel=0.05)
    assert d.meta["n_stars"] > 100
    assert d.meta["lim_mag"] > 23
    assert {"overscan", "calibrate", "background", "extract", "psf", "astrometry", "zeropoint"} <= set(
        d.meta["timings"]
    )
    # fitted WCS vs truth over the CCD
    gx, gy = np.meshgrid(np.linspace(0, 511, 6), np.linspace(0, 1023, 6))
    a = np.array(d.wcs.all_pix2world(gx.ravel(), gy.ravel(), 0))
    b = np.array(truth.all_pix2world(gx.ravel(), gy.ravel(), 0))
    sep = np.hypot((a[0] - b[0]) * np.cos(np.radians(-5)), a[1] - b[1]) * 3600
    assert sep.max() < 0.1
    # weight is consistent with the pixel scatter of the sky
    # (sky pixels dominate: the median per-pixel noise from the weight equals the measured sky rms)
    good = d.flags == 0
    assert np.median(1 / np.sqrt(d.weight[good])) == pytest.approx(d.bkg_rms, rel=0.03)
    assert mad_std(d.image[good] * np.sqrt(d.weight[good])) == pytest.approx(1.0, abs=0.08)


def test_params_critical_is_hashable_dict():
    p = ReduceParams(detect_thresh=4.0)
    c = p.critical()
    assert c["detect_thresh"] == 4.0 and c == ReduceParams(detect_thresh=4.0).critical()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.detect_thresh = 3.0  # frozen


def test_write_read_round_trip(reduced, tmp_path):
    d, _ = reduced
    stem = tmp_path / "sub" / "exp_N6"
    write_image_data(stem, d, {"PROVID": "abc123", "EXPID": 7})
    back = read_image_data(stem)
    headers = {k: read_ccd_headers(f"{stem}.{k}.fits")[0][1] for k in ("image", "weight")}
    for name in ("image", "weight", "flags", "psf"):
        a, b = getattr(d, name), getattr(back, name)
        assert a.dtype == b.dtype and b.dtype.isnative
        if name in headers:  # quantised (seechange.compression): off by at most half a step
            step = headers[name]["QSTEP"]
            assert step > 0 and np.abs(b.astype(np.float64) - a).max() <= 0.5 * step * (1 + 1e-5)
            assert np.array_equal(a == 0, b == 0) or name == "image"
        else:
            np.testing.assert_array_equal(a, b)
    for name in ("zp", "fwhm_px", "bkg_level", "bkg_rms", "astrom_rms_arcsec", "mjd", "band"):
        assert getattr(back, name) == getattr(d, name)
    assert back.meta["n_stars"] == d.meta["n_stars"] and back.meta["timings"] == d.meta["timings"]
    xy = np.array([[0.0, 0.0], [511.0, 1023.0], [200.5, 600.25]])
    np.testing.assert_allclose(back.wcs.all_pix2world(xy, 0), d.wcs.all_pix2world(xy, 0), rtol=0, atol=1e-10)
    hdr = headers["image"]
    assert hdr["PROVID"] == "abc123" and hdr["ZP"] == pytest.approx(d.zp)
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_reduce_simulated_ccd_against_truth(tmp_path_factory):
    sim = pytest.importorskip("seechange.sim")
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from seechange.imageio import header_wcs
    from seechange.improc.astrometry import load_refcat
    from seechange.improc.calibrate import load_calibration

    root = tmp_path_factory.mktemp("night")
    size = (512, 1024)
    sim.simulate_night(root, seed=11, n_fields=1, n_epochs=1, band="r", size=size)
    night = sim.read_night_json(root)
    ex = night["exposures"][0]
    raw, hdr = fits.getdata(root / ex["raw_path"], header=True)
    ra, dec = header_wcs(hdr).wcs.crval
    ref = load_refcat(root / "refcat", ra, dec, 0.3)
    calib = load_calibration(root / "calib" / "DECam" / str(ex["ccdnum"]))
    d = reduce_exposure(raw, hdr, calib, ref, params=ReduceParams())
    truth = sim.read_truth(root, ex["expname"], ex["ccdnum"])
    assert d.zp == pytest.approx(truth.meta["zp"], abs=0.03)
    assert d.astrom_rms_arcsec <= 0.1
    stars = truth[(truth["kind"] == "star") & np.isfinite(truth["mag"])]
    inside = (stars["x"] > 0) & (stars["x"] < size[0] - 1) & (stars["y"] > 0) & (stars["y"] < size[1] - 1)
    stars = stars[inside]
    r2, d2 = d.wcs.all_pix2world(np.asarray(stars["x"]), np.asarray(stars["y"]), 0)
    sep = (
        SkyCoord(r2 * u.deg, d2 * u.deg)
        .separation(SkyCoord(np.asarray(stars["ra"]) * u.deg, np.asarray(stars["dec"]) * u.deg))
        .arcsec
    )
    assert np.sqrt(np.mean(sep**2)) <= 0.1  # fitted WCS vs the true WCS at the true star positions
    assert d.fwhm_px == pytest.approx(truth.meta["fwhm_arcsec"] / 0.263, rel=0.05)
    assert d.bkg_level == pytest.approx(truth.meta["sky_e"], rel=0.01)
    crs = np.array(truth.meta["cosmic_ray_pixels"])
    if len(crs):
        assert np.mean(d.flags[crs[:, 1], crs[:, 0]] != 0) > 0.7
