import numpy as np
import pytest

from seechange.improc.extract import extract_sources, noise_from_weight
from seechange.improc.types import FLAG_COSMIC_RAY


def _gauss_image(rng, positions, fluxes, *, shape=(300, 400), fwhm=3.5, sky_sigma=10.0):
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    s = fwhm / 2.3548
    img = rng.normal(0.0, sky_sigma, shape)
    for (x0, y0), f in zip(positions, fluxes):
        img += f / (2 * np.pi * s * s) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    return img


def test_finds_injected_stars_at_known_positions():
    rng = np.random.default_rng(20)
    n = 30
    pos = np.column_stack([rng.uniform(20, 380, n), rng.uniform(20, 280, n)])
    fluxes = np.full(n, 1e5)  # SNR ~ 1e5 / (10 * sqrt(4 pi s^2) ~ 27) ~ 350
    img = _gauss_image(rng, pos, fluxes).astype(">f4")
    flags = np.zeros(img.shape, np.uint16)
    flags[int(pos[0, 1]), int(pos[0, 0])] = FLAG_COSMIC_RAY
    t = extract_sources(img, noise=10.0, flags=flags, thresh=5.0, aper_radius=8.0)
    assert len(t) >= n - 1  # stars can blend
    d = np.hypot(t["x"][:, None] - pos[:, 0], t["y"][:, None] - pos[:, 1])
    j = np.argmin(d, axis=0)
    isolated = np.array([np.sort(np.hypot(*(pos - p).T))[1] > 15 for p in pos])
    isolated[0] = False  # star 0 has a masked pixel at its centre
    err = d[j, np.arange(n)][isolated]
    assert np.max(err) < 0.05
    assert np.median(t["flux"][j[isolated]]) == pytest.approx(1e5, rel=0.02)
    assert np.median(t["fwhm"][j[isolated]]) == pytest.approx(3.5, rel=0.1)
    assert np.all(t["snr"][j[isolated]] > 100)
    assert t["pixflags"][j[0]] & FLAG_COSMIC_RAY
    assert {"x", "y", "flux", "flux_err", "a", "b", "theta", "fwhm", "flag", "snr"} <= set(t.colnames)


def test_nothing_found_is_empty_with_warning():
    rng = np.random.default_rng(21)
    with pytest.warns(RuntimeWarning):
        t = extract_sources(rng.normal(0, 1, (64, 64)), noise=1.0, thresh=50)
    assert len(t) == 0 and "x" in t.colnames


def test_noise_from_weight():
    w = np.array([[4.0, 0.0]], np.float32)
    np.testing.assert_allclose(noise_from_weight(w, fill=99.0), [[0.5, 99.0]])


def test_non_finite_and_non_positive_noise_pixels_are_masked_like_flags():
    """NaN/inf image pixels and NaN/inf/<=0 noise pixels are masked exactly as flagged pixels are, and the
    caller's arrays are not modified."""
    rng = np.random.default_rng(22)
    n = 20
    pos = np.column_stack([rng.uniform(20, 380, n), rng.uniform(20, 280, n)])
    img = _gauss_image(rng, pos, np.full(n, 5e4)).astype(np.float32)
    noise = np.full(img.shape, 10.0, np.float32)
    noise[:, 200:] = 12.0  # varying noise
    bad = np.zeros(img.shape, bool)
    bad[50:60, 30:40] = True
    img[50:55, 30:40] = np.nan
    img[55:60, 30:35] = np.inf
    noise[55:60, 35:40] = 0.0
    # bad noise values across star 1 (it stays detected from its unmasked pixels)
    x1, y1 = int(pos[1, 0]), int(pos[1, 1])
    noise[y1 - 1, x1 - 5 : x1 + 5] = np.nan
    noise[y1, x1 - 5 : x1 + 5] = np.inf
    noise[y1 + 1, x1 - 5 : x1 + 5] = -1.0
    bad[y1 - 1 : y1 + 2, x1 - 5 : x1 + 5] = True
    img_before, noise_before = img.copy(), noise.copy()
    t = extract_sources(img, noise=noise, thresh=5.0)
    np.testing.assert_array_equal(img, img_before)
    np.testing.assert_array_equal(noise, noise_before)
    # the same catalogue as with those pixels flagged and given harmless values
    clean_img = np.where(bad, np.float32(0), img)
    clean_noise = np.where(bad, np.float32(10.0), noise)
    ref = extract_sources(clean_img, noise=clean_noise, flags=bad.astype(np.uint16), thresh=5.0)
    for c in ("x", "y", "flux", "flux_err", "a", "b", "fwhm", "flag", "npix"):
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(ref[c]), err_msg=c)
    d = np.hypot(t["x"][:, None] - pos[:, 0], t["y"][:, None] - pos[:, 1]).min(axis=0)
    far = np.array([np.sort(np.hypot(*(pos - p).T))[1] > 15 for p in pos])
    far &= (np.abs(pos[:, 0] - 35) > 15) | (np.abs(pos[:, 1] - 55) > 15)
    far[1] = False
    assert np.max(d[far]) < 0.05
    assert d[1] < 2.0 and np.isfinite(t["flux_err"]).all()  # its centre rows are masked


def test_masking_on_real_decam_pixels(shared_data):
    """On real DECam pixels (varying noise, a NaN column, zero-noise pixels) the catalogue equals the one
    with those pixels flagged, and real sources are found."""
    from astropy.io import fits

    from seechange.improc.background import measure_background

    path = shared_data / "decam-sfft" / "DEC-OBS04a.mini.fits"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    img = np.asarray(fits.getdata(path), np.float32)
    bkg = measure_background(img, mesh=64)
    img = img - bkg.map
    yy = np.mgrid[: img.shape[0], : img.shape[1]][0]
    noise = (bkg.rms * (1.0 + 0.2 * yy / img.shape[0])).astype(np.float32)  # varying noise
    bad = np.zeros(img.shape, bool)
    bad[:, 60] = True
    img[:, 60] = np.nan
    bad[200:203, 100:140] = True
    noise[200:203, 100:140] = 0.0
    t = extract_sources(img, noise=noise, thresh=3.0)
    assert len(t) >= 5
    ref = extract_sources(
        np.where(bad, np.float32(0), img),
        noise=np.where(bad, np.float32(bkg.rms), noise),
        flags=bad.astype(np.uint16),
        thresh=3.0,
    )
    for c in set(t.colnames) - {"pixflags"}:  # pixflags reports the flags given, none here
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(ref[c]), err_msg=c)
