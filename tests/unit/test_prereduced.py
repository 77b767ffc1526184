import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from seechange.improc.prereduced import load_prereduced
from seechange.improc.reduction import ReduceParams
from tests.paths import SHARED_DATA

DATA = SHARED_DATA / "decam-sfft"
FRAMES = sorted(DATA.glob("DEC-OBS*.mini.fits")) if DATA.exists() else []


def _tpv_by_hand(h: fits.Header, xy: np.ndarray) -> np.ndarray:
    """Pixel (0-based) -> (ra, dec) with the TPV polynomial (PV terms 0..10) and a TAN deprojection."""
    u = xy[:, 0] + 1 - h["CRPIX1"]
    v = xy[:, 1] + 1 - h["CRPIX2"]
    x = h["CD1_1"] * u + h["CD1_2"] * v
    y = h["CD2_1"] * u + h["CD2_2"] * v
    r = np.hypot(x, y)

    def poly(ax, a, b):
        p = [h.get(f"PV{ax}_{k}", 0.0) for k in range(11)]
        return (
            p[0]
            + p[1] * a
            + p[2] * b
            + p[3] * r
            + p[4] * a * a
            + p[5] * a * b
            + p[6] * b * b
            + p[7] * a**3
            + p[8] * a * a * b
            + p[9] * a * b * b
            + p[10] * b**3
        )

    xi, eta = np.radians(poly(1, x, y)), np.radians(poly(2, y, x))
    ra0, dec0 = np.radians(h["CRVAL1"]), np.radians(h["CRVAL2"])
    den = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, den)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, den))
    return np.column_stack([np.degrees(ra) % 360, np.degrees(dec)])


@pytest.mark.skipif(not FRAMES, reason=f"{DATA} is not available")
@pytest.mark.parametrize("name", ["DEC-OBS04a.mini.fits", "DEC-OBS18c.mini.fits", "Stack-DEC-OBS04.fits"])
def test_decam_sfft_frame(name):
    path = DATA / name
    hdr = fits.getheader(path)
    with pytest.warns(RuntimeWarning, match="no zero point"):
        d = load_prereduced(path, params=ReduceParams())
    assert d.image.shape == (256, 256) and d.image.dtype == np.float32
    assert d.band == hdr["FILTER"][0]
    # the FWHM card is in pixels; our model agrees within 15% (the card is a CCD-wide median)
    assert d.fwhm_px == pytest.approx(hdr["FWHM"], rel=0.15)
    assert d.meta["n_psf_stars"] >= 3
    # image converted to electrons: the background rms is GAIN times the ADU rms
    assert d.meta["gain"] == pytest.approx(hdr["GAIN"])
    assert 20 < d.bkg_rms < 400  # electrons (stacks are less noisy)
    assert abs(d.bkg_level) < d.bkg_rms
    # TPV WCS: pixel -> sky -> pixel round trip, and the distortion is really applied
    rng = np.random.default_rng(70)
    xy = rng.uniform(0, 255, (200, 2))
    sky = d.wcs.all_pix2world(xy, 0)
    back = d.wcs.all_world2pix(sky, 0)
    assert np.abs(back - xy).max() < 0.01
    # the TPV polynomial is really applied: compare with an independent evaluation of the TPV standard
    np.testing.assert_allclose(_tpv_by_hand(hdr, xy), sky, rtol=0, atol=0.01 / 3600)  # 0.01 arcsec
    # pixel scale ~0.263 arcsec from the TPV CD matrix (PV1_1 ~ 1.01 scales it)
    a = d.wcs.all_pix2world([[128, 128], [129, 128]], 0)
    step = np.hypot((a[1, 0] - a[0, 0]) * np.cos(np.radians(a[0, 1])), a[1, 1] - a[0, 1]) * 3600
    assert step == pytest.approx(0.263, rel=0.03)
    assert np.all(d.weight[d.flags != 0] == 0) and np.all(d.weight[d.flags == 0] > 0)


def test_zero_point_from_card_and_refcat(tmp_path):
    rng = np.random.default_rng(71)
    ny = nx = 300
    img = rng.normal(0, 20.0, (ny, nx))
    yy, xx = np.mgrid[:ny, :nx]
    s = 3.5 / 2.3548
    gain, zp_adu = 2.0, 30.0
    xs, ys = rng.uniform(30, 270, 40), rng.uniform(30, 270, 40)
    mags = rng.uniform(17, 20, 40)
    for x0, y0, m in zip(xs, ys, mags):
        img += (
            10 ** (-0.4 * (m - zp_adu))
            * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
            / (2 * np.pi * s * s)
        )
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"], h["CRPIX1"], h["CRPIX2"] = 20.0, 10.0, 150.5, 150.5
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -0.263 / 3600, 0.0, 0.0, 0.263 / 3600
    h["GAIN"], h["FILTER"], h["EXPTIME"], h["MJD-OBS"] = gain, "r", 100.0, 59000.0
    path = tmp_path / "im.fits"
    fits.writeto(path, img.astype(np.float32), h)
    mask = np.zeros((ny, nx), np.int16)
    mask[:, 5] = 1
    fits.writeto(tmp_path / "mask.fits", mask)
    from astropy.wcs import WCS

    ra, dec = WCS(h).all_pix2world(xs, ys, 0)
    ref = Table({"ra": ra, "dec": dec, "mag_r": mags})
    d = load_prereduced(path, mask_path=tmp_path / "mask.fits", refcat=ref, params=ReduceParams())
    # refcat zero point, for electrons
    assert d.zp == pytest.approx(zp_adu + 2.5 * np.log10(gain), abs=0.02)
    assert d.meta["zp_source"] == "refcat" and d.astrom_rms_arcsec < 0.05
    assert np.all(d.flags[:, 5] & 1) and np.all(d.weight[:, 5] == 0)
    assert d.bkg_rms == pytest.approx(40.0, rel=0.05)  # 20 ADU x gain 2
    h["MAGZERO"] = 29.0
    fits.writeto(path, img.astype(np.float32), h, overwrite=True)
    d2 = load_prereduced(path, params=ReduceParams())
    assert d2.zp == pytest.approx(29.0 + 2.5 * np.log10(gain)) and d2.meta["zp_source"] == "MAGZERO"
