import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from seechange.improc.astrometry import find_offset, load_refcat, solve_astrometry

SCALE = 0.263 / 3600.0  # deg / pixel


def _wcs(ra, dec, nx, ny, rot_deg=0.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = SCALE * np.array([[-c, s], [s, c]])
    w.pixel_shape = (nx, ny)
    return w


def _scene(rng, *, nx=1024, ny=2048, n=600, centroid_noise=0.03):
    ra0, dec0 = 150.0, -20.0
    truth = _wcs(ra0, dec0, nx, ny, rot_deg=0.05)
    # the header WCS is 4 arcsec off (3 east, ~2.6 north) and unrotated
    header = _wcs(ra0 + 3.0 / 3600 / np.cos(np.radians(dec0)), dec0 + np.sqrt(16 - 9) / 3600, nx, ny)
    x, y = rng.uniform(-20, nx + 20, n), rng.uniform(-20, ny + 20, n)
    ra, dec = truth.all_pix2world(x, y, 0)
    mag = rng.uniform(16, 22, n)
    ref = Table({"ra": ra, "dec": dec, "mag_r": mag})
    seen = (x > 0) & (x < nx - 1) & (y > 0) & (y < ny - 1) & (rng.uniform(size=n) > 0.1)
    sx = x[seen] + rng.normal(0, centroid_noise, seen.sum())
    sy = y[seen] + rng.normal(0, centroid_noise, seen.sum())
    flux = 10 ** (-0.4 * (mag[seen] - 30))
    # spurious detections (galaxies, cosmic rays) not in the catalogue
    k = 60
    sx, sy = np.r_[sx, rng.uniform(0, nx, k)], np.r_[sy, rng.uniform(0, ny, k)]
    flux = np.r_[flux, rng.uniform(1e3, 1e5, k)]
    src = Table(
        {"x": sx, "y": sy, "flux": flux, "snr": np.full(len(sx), 100.0), "flag": np.zeros(len(sx), int)}
    )
    return src, ref, header, truth


@pytest.mark.parametrize("sip", [None, 2])
def test_recovers_offset_and_rotation(sip):
    rng = np.random.default_rng(40)
    src, ref, header, truth = _scene(rng)
    res = solve_astrometry(src, ref, header, band="r", sip_degree=sip)
    assert res.n_matched > 400
    assert res.rms_arcsec < 0.05  # 0.03 px centroid noise ~ 0.011 arcsec radial
    # the fitted WCS agrees with the truth over the whole CCD
    gx, gy = np.meshgrid(np.linspace(0, 1023, 9), np.linspace(0, 2047, 9))
    a = np.array(res.wcs.all_pix2world(gx.ravel(), gy.ravel(), 0))
    b = np.array(truth.all_pix2world(gx.ravel(), gy.ravel(), 0))
    dra = (a[0] - b[0]) * np.cos(np.radians(-20.0)) * 3600
    ddec = (a[1] - b[1]) * 3600
    assert np.hypot(dra, ddec).max() < 0.05
    # the header WCS was 4 arcsec = 15 px off
    assert np.hypot(*res.offset_px) == pytest.approx(4.0 / 0.263, abs=1.5)


def test_find_offset_vote():
    rng = np.random.default_rng(41)
    ref = rng.uniform(0, 1000, (200, 2))
    src = ref[:150] - [7.3, -11.2] + rng.normal(0, 0.1, (150, 2))
    dx, dy, votes = find_offset(src, ref, max_offset_px=40)
    assert dx == pytest.approx(7.3, abs=0.1) and dy == pytest.approx(-11.2, abs=0.1) and votes >= 140


def test_too_few_stars_raises():
    rng = np.random.default_rng(42)
    src, ref, header, _ = _scene(rng, n=4)
    with pytest.raises(RuntimeError):
        solve_astrometry(src[:3], ref, header)


def test_load_refcat(tmp_path):
    Table({"ra": [10.0, 10.1, 50.0], "dec": [0.0, 0.0, 0.0], "mag_r": [15, 16, 17]}).write(
        tmp_path / "f1.ecsv", format="ascii.ecsv"
    )
    Table({"ra": [10.05], "dec": [0.02], "mag_r": [18.0]}).write(tmp_path / "f2.ecsv", format="ascii.ecsv")
    t = load_refcat(tmp_path, 10.0, 0.0, 0.2)
    assert sorted(t["mag_r"]) == [15, 16, 18]
    with pytest.raises(FileNotFoundError):
        load_refcat(tmp_path / "none", 0, 0, 1)


def test_linear_tan_sip_fit_recovers_a_distorted_wcs() -> None:
    """fit_tan_sip: the TAN fit equals astropy's fit_wcs_from_points; with SIP it recovers the truth."""
    import warnings

    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS, Sip
    from astropy.wcs.utils import fit_wcs_from_points

    from seechange.improc.astrometry import fit_tan_sip

    rng = np.random.default_rng(1)
    truth = WCS(naxis=2)
    truth.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    truth.wcs.crval = [150.1, -30.2]
    truth.wcs.crpix = [1024, 2048]
    s = 0.263 / 3600
    truth.wcs.cd = [[-s * 0.9998, s * 0.02], [s * 0.02, s * 0.9998]]
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], a[1, 1], b[0, 2], b[1, 1] = 2e-6, -1e-6, 1.5e-6, 3e-7
    truth.sip = Sip(a, b, None, None, truth.wcs.crpix)
    truth.wcs.set()
    xy = np.column_stack([rng.uniform(0, 2048, 300), rng.uniform(0, 4096, 300)])
    world = SkyCoord(*truth.all_pix2world(xy[:, 0], xy[:, 1], 0), unit="deg")
    noisy = xy + rng.normal(0, 0.02, xy.shape)
    grid = np.column_stack([rng.uniform(0, 2048, 2000), rng.uniform(0, 4096, 2000)])
    on_sky = SkyCoord(*truth.all_pix2world(grid[:, 0], grid[:, 1], 0), unit="deg")

    def err(w: WCS) -> np.ndarray:
        return SkyCoord(*w.all_pix2world(grid[:, 0], grid[:, 1], 0), unit="deg").separation(on_sky).arcsec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tan_astropy = fit_wcs_from_points((noisy[:, 0], noisy[:, 1]), world, projection="TAN")
    tan = fit_tan_sip(noisy, world)
    assert np.max(np.abs(err(tan) - err(tan_astropy))) < 1e-4  # the same least-squares solution
    sip = fit_tan_sip(noisy, world, sip_degree=2)
    assert list(sip.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    assert np.sqrt(np.mean(err(sip) ** 2)) < 0.003  # 0.02 px noise = 0.005"; the fit averages it down
    assert np.sqrt(np.mean(err(tan) ** 2)) > 0.1  # the distortion is real
