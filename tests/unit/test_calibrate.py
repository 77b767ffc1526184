import numpy as np
import pytest
from astropy.io import fits

from seechange.improc.calibrate import (
    CalibFrames,
    calibrate,
    detect_cosmic_rays,
    load_calibration,
    overscan_correct_and_trim,
    point_source_fine_ratio,
)
from seechange.improc.types import FLAG_BAD, FLAG_BLEED, FLAG_COSMIC_RAY, FLAG_SATURATED

NY, NXA, NOV = 200, 60, 8  # rows, columns per amplifier, overscan columns per amplifier


def _header() -> fits.Header:
    h = fits.Header()
    nx = 2 * NXA + 2 * NOV
    h["DATASEC"] = f"[{NOV + 1}:{NOV + 2 * NXA},1:{NY}]"
    h["DATASECA"] = f"[{NOV + 1}:{NOV + NXA},1:{NY}]"
    h["DATASECB"] = f"[{NOV + NXA + 1}:{NOV + 2 * NXA},1:{NY}]"
    h["BIASSECA"] = f"[1:{NOV},1:{NY}]"
    h["BIASSECB"] = f"[{nx - NOV + 1}:{nx},1:{NY}]"
    h["GAINA"], h["GAINB"] = 4.0, 3.5
    h["RDNOISEA"], h["RDNOISEB"] = 6.0, 7.0
    h["SATURATA"], h["SATURATB"] = 40000.0, 38000.0
    return h


def _raw(trimmed_adu: np.ndarray, rng: np.random.Generator, *, noise_adu: float = 0.0) -> np.ndarray:
    """Put trimmed ADU into a raw frame with per-amp overscan levels that drift with the row."""
    rows = np.arange(NY, dtype=float)
    level_a = 1000.0 + 0.05 * rows  # ADU, a row gradient
    level_b = 1200.0 - 0.03 * rows
    raw = np.empty((NY, 2 * NXA + 2 * NOV))
    raw[:, :NOV] = level_a[:, None]
    raw[:, NOV : NOV + NXA] = trimmed_adu[:, :NXA] + level_a[:, None]
    raw[:, NOV + NXA : NOV + 2 * NXA] = trimmed_adu[:, NXA:] + level_b[:, None]
    raw[:, -NOV:] = level_b[:, None]
    if noise_adu:
        raw += rng.normal(0, noise_adu, raw.shape)
    return raw.astype(">f4")  # FITS byte order


def test_overscan_recovers_bias_with_row_gradient():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 100, (NY, 2 * NXA)).astype(np.float32)
    raw = _raw(truth, rng, noise_adu=1.5)
    raw_copy = raw.copy()
    trimmed, amps = overscan_correct_and_trim(raw, _header(), smooth_rows=15)
    np.testing.assert_array_equal(raw, raw_copy)  # input untouched
    assert trimmed.shape == (NY, 2 * NXA) and trimmed.dtype == np.float32
    resid = trimmed - truth
    # residual = pixel noise (1.5 ADU) + overscan-model noise (1.5/sqrt(8*15) ~ 0.15 ADU): no bias, no gradient
    assert abs(resid.mean()) < 0.05
    assert abs(np.polyfit(np.arange(NY), resid.mean(axis=1), 1)[0]) < 3e-3  # vs 0.05 and -0.03 injected
    assert [a.name for a in amps] == ["A", "B"]
    assert amps[0].overscan_level == pytest.approx(1000 + 0.05 * (NY - 1) / 2, abs=0.3)
    assert amps[1].overscan_level == pytest.approx(1200 - 0.03 * (NY - 1) / 2, abs=0.3)
    assert amps[0].overscan_rms == pytest.approx(1.5, rel=0.1)


def test_calibrate_recovers_electrons_and_flags():
    rng = np.random.default_rng(2)
    shape = (NY, 2 * NXA)
    exptime = 30.0
    gain = np.where(np.arange(2 * NXA) < NXA, 4.0, 3.5)[None, :] * np.ones(shape)
    true_e = np.full(shape, 800.0)  # sky electrons in the flat-fielded frame
    true_e[100, 30] += 5000.0  # a hot single pixel = cosmic ray
    flat = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    bias = rng.normal(300, 2, shape).astype(np.float32)
    dark = np.full(shape, 0.5, np.float32)  # e-/s
    bpm = np.zeros(shape, np.int16)
    bpm[10:12, 5] = 1
    adu = (true_e * flat + dark * exptime) / gain + bias
    adu[150:153, 90] = 39000.0  # saturated in amp B (saturation 38000)
    adu[148:150, 90] = 25000.0  # bleed above 0.5 * saturation, connected along the column
    raw = _raw(adu, rng)
    trimmed, _ = overscan_correct_and_trim(raw, _header(), smooth_rows=1)
    e, w, f = calibrate(trimmed, _header(), bias, dark, flat, bpm, exptime=exptime)
    good = f == 0
    np.testing.assert_allclose(e[good], true_e[good], rtol=2e-4)
    assert f[10, 5] & FLAG_BAD and f[11, 5] & FLAG_BAD
    assert f[151, 90] & FLAG_SATURATED and f[151, 91] & FLAG_SATURATED  # dilated by one pixel
    assert f[148, 90] & FLAG_BLEED
    assert f[100, 30] & FLAG_COSMIC_RAY
    assert np.all(w[~good] == 0)
    # weight = flat^2 / (sky_e*flat + dark e- + rn^2) away from features
    exp_var = (800 * flat + 15.0 + np.where(np.arange(2 * NXA) < NXA, 36.0, 49.0)[None, :]) / flat**2
    np.testing.assert_allclose(w[50:90, 40:50], 1 / exp_var[50:90, 40:50], rtol=1e-3)


def test_cosmic_rays_spare_stars():
    rng = np.random.default_rng(3)
    ny, nx = 256, 256
    yy, xx = np.mgrid[:ny, :nx]
    sky = 500.0
    img = rng.normal(sky, np.sqrt(sky + 25), (ny, nx))
    sigma = 3.5 / 2.3548  # FWHM 3.5 px stars
    stars = [(40.3, 50.7), (120.1, 200.5), (210.6, 80.2), (90.9, 140.4)]
    for x0, y0 in stars:
        img += 2e5 / (2 * np.pi * sigma**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    crs = [(20, 20), (60, 180), (230, 30), (150, 100)]
    for x, y in crs:
        img[y, x] += 3000.0
    img[150, 101] += 1500.0  # two-pixel hit
    var = np.maximum(img, 0) + 25
    m = detect_cosmic_rays(img, var)
    for x, y in crs:
        assert m[y, x]
    assert m[150, 101]
    for x0, y0 in stars:
        assert not m[round(y0) - 5 : round(y0) + 6, round(x0) - 5 : round(x0) + 6].any()
    assert m.sum() < 20


def test_psf_relative_objlim_flags_resampled_hits_and_spares_stars():
    """objlim = 3 x a point source's contrast flags hits spread over 2 px (a resampled product) and no star."""
    fwhm = 3.8
    star_ratio = point_source_fine_ratio(fwhm)
    assert 0.2 < star_ratio < 0.35  # independent of flux; larger for sharper PSFs
    assert point_source_fine_ratio(2.0) > 4 * star_ratio
    rng = np.random.default_rng(5)
    ny, nx = 200, 200
    yy, xx = np.mgrid[:ny, :nx]
    img = rng.normal(0.0, 100.0, (ny, nx))
    sigma = fwhm / 2.3548
    stars = [(40.3, 50.7), (120.1, 150.5), (160.6, 60.2), (70.5, 120.5)]
    for k, (x0, y0) in enumerate(stars):
        flux = 10.0 ** (5 + k)  # peaks 100 to 1e5 sigma
        img += flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    # a cosmic-ray track spread over two pixels across (as resampling leaves it), peak ~20 sigma
    track = [(30 + i, 160 + i // 3) for i in range(14)]
    for x, y in track:
        img[y, x] += 2000.0
        img[y + 1, x] += 1200.0
    var = np.maximum(img, 0) + 100.0**2
    default = detect_cosmic_rays(img, var, sigclip=4.5, objlim=4.0)
    relative = detect_cosmic_rays(img, var, sigclip=4.5, objlim=min(4.0, 3.0 * star_ratio))
    hit = sum(bool(relative[y, x] or relative[y + 1, x]) for x, y in track)
    assert hit >= 10 > sum(bool(default[y, x] or default[y + 1, x]) for x, y in track)
    for x0, y0 in stars:
        assert not relative[round(y0) - 6 : round(y0) + 7, round(x0) - 6 : round(x0) + 7].any()


def test_load_calibration(tmp_path):
    shape = (4, 5)
    fits.writeto(tmp_path / "bias.fits", np.full(shape, 3.0, ">f4"))
    fits.writeto(tmp_path / "flat.fits", np.full(shape, 1.0, ">f4"))
    bpm = np.zeros(shape, np.int16)
    bpm[1, 2] = 4
    fits.writeto(tmp_path / "bpm.fits", bpm)
    cal = load_calibration(tmp_path)
    assert isinstance(cal, CalibFrames)
    assert cal.bias.dtype == np.float32 and cal.bias.dtype.byteorder in ("=", "<")
    assert cal.dark.shape == shape and not cal.dark.any()
    assert cal.bpm[1, 2] and cal.bpm.sum() == 1
    with pytest.raises(FileNotFoundError):
        load_calibration(tmp_path / "nope")


def _mef(path, frames: dict[int, np.ndarray], *, compressed: bool, order=None) -> None:
    """A multi-extension frame file: one extension per CCD (CCDNUM, EXTNAME), lossless when compressed."""
    hdus = [fits.PrimaryHDU()]
    for ccdnum in order or sorted(frames):
        header = fits.Header({"CCDNUM": ccdnum, "EXTNAME": f"N{ccdnum - 31}"})
        data = frames[ccdnum]
        if compressed:
            hdus.append(fits.CompImageHDU(data, header, compression_type="GZIP_2", quantize_level=0))
        else:
            hdus.append(fits.ImageHDU(data, header))
    fits.HDUList(hdus).writeto(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_multi_extension_bias_and_flat_per_ccd_with_its_bpm(tmp_path, compressed: bool) -> None:
    from seechange.pipeline.reduce import ReduceInputError, ReduceResources
    from seechange.sim.calib import make_calibration

    shape = (64, 48)
    frames = {n: make_calibration(n, (shape[1], shape[0])) for n in (35, 36, 37)}
    shared = tmp_path / "calib" / "DECam"
    shared.mkdir(parents=True)
    suffix = ".fits.fz" if compressed else ".fits"
    # bias and flat as DECam delivers them: one file, every CCD, in any order; the dark likewise
    _mef(
        shared / f"bias{suffix}",
        {n: f.bias for n, f in frames.items()},
        compressed=compressed,
        order=[37, 35, 36],
    )
    _mef(shared / f"flat{suffix}", {n: f.flat for n, f in frames.items()}, compressed=compressed)
    _mef(shared / f"dark{suffix}", {n: f.dark for n, f in frames.items()}, compressed=compressed)
    # a bad-pixel mask given for CCD 36 only, in its own folder
    (shared / "36").mkdir()
    fits.writeto(shared / "36" / "bpm.fits", frames[36].bpm)

    resources = ReduceResources(tmp_path)
    for n, f in frames.items():
        cal = resources.calibration("DECam", str(n))
        assert np.array_equal(cal.bias, f.bias) and np.array_equal(cal.flat, f.flat)
        assert np.array_equal(cal.dark, f.dark)
        assert cal.bias.dtype == np.float32 and cal.bias.dtype.byteorder in ("=", "<")
        if n == 36:
            assert np.array_equal(cal.bpm, f.bpm != 0) and cal.bpm.any()
            assert "36/bpm.fits" in cal.source
        else:
            assert not cal.bpm.any()
        assert f"bias{suffix}" in cal.source
    # a CCD the files do not hold: one line naming the file and the CCD, as bad input
    with pytest.raises(ReduceInputError, match=rf"DECam CCD 40: .*bias{suffix}.*CCDNUM = 40") as info:
        resources.calibration("DECam", "40")
    assert "\n" not in str(info.value)
    with pytest.raises(ReduceInputError, match="a bias and a flat are required"):
        ReduceResources(tmp_path / "empty").calibration("DECam", "35")
