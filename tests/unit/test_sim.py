"""Tests of the synthetic survey writer (small CCDs, seeded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import Angle, SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from seechange.sim import (
    FieldCatalog,
    plan_night,
    read_night_json,
    read_truth,
    render_exposure,
    render_planned,
    simulate_night,
)
from seechange.sim.instrument import BIAS_LEVEL, GAIN, N_OVERSCAN, READ_NOISE, SATURATION, bias_level_rows
from seechange.sim.psf import MoffatPSF

SIZE = (512, 1024)
PARAMS = {
    "seed": 7,
    "n_fields": 2,
    "n_epochs": 4,
    "band": "r",
    "size": SIZE,
    "ccdnum": 37,
    "n_ref_epochs": 2,
    "exptime": 60.0,
}
HEADER_KEYS = [
    "INSTRUME",
    "DETPOS",
    "CCDNUM",
    "FILTER",
    "EXPTIME",
    "MJD-OBS",
    "AIRMASS",
    "TELRA",
    "TELDEC",
    "RA",
    "DEC",
    "OBJECT",
    "EXPNUM",
    "GAINA",
    "GAINB",
    "RDNOISEA",
    "RDNOISEB",
    "SATURATA",
    "SATURATB",
    "DATASECA",
    "DATASECB",
    "BIASSECA",
    "BIASSECB",
    "DATASEC",
    "CTYPE1",
    "CTYPE2",
    "CRVAL1",
    "CRVAL2",
    "CRPIX1",
    "CRPIX2",
    "CD1_1",
    "CD1_2",
    "CD2_1",
    "CD2_2",
]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("simnight")
    calls: list[tuple[int, int]] = []
    summary = simulate_night(data, progress=lambda d, t: calls.append((d, t)), **PARAMS)
    return data, summary, calls


def _section(s: str) -> tuple[slice, slice]:
    x, y = s.strip("[]").split(",")
    x1, x2 = (int(v) for v in x.split(":"))
    y1, y2 = (int(v) for v in y.split(":"))
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def _calibrate(data: Path, rel: str) -> tuple[np.ndarray, fits.Header]:
    """The calibration equation documented in ``seechange.sim``."""
    raw = fits.getdata(data / rel).astype(np.float64)
    hdr = fits.getheader(data / rel)
    cal = data / "calib" / "DECam" / str(hdr["CCDNUM"])
    bias, dark, flat = (fits.getdata(cal / f"{n}.fits").astype(np.float64) for n in ("bias", "dark", "flat"))
    out = np.empty(bias.shape)
    x0 = _section(hdr["DATASEC"])[1].start
    for amp in "AB":
        rows, cols = _section(hdr[f"DATASEC{amp}"])
        overscan = np.median(raw[_section(hdr[f"BIASSEC{amp}"])], axis=1)
        tc = slice(cols.start - x0, cols.stop - x0)
        adu = raw[rows, cols] - overscan[:, None]
        out[:, tc] = ((adu - bias[:, tc]) * hdr[f"GAIN{amp}"] - dark[:, tc] * hdr["EXPTIME"]) / flat[:, tc]
    return out, hdr


def test_layout_of_files_and_progress(night):
    data, summary, calls = night
    assert len(summary.exposures) == 8 and calls[-1] == (8, 8)
    for rec in summary.exposures:
        assert (data / rec.raw_path).is_file() and (data / rec.truth_path).is_file()
        assert rec.raw_path == f"raw/{rec.field}/{rec.expname}_37.fits"
    for name in ("bias", "dark", "flat", "bpm"):
        assert (data / "calib" / "DECam" / "37" / f"{name}.fits").is_file()
    night_json = read_night_json(data)
    mjds = [e["mjd"] for e in night_json["exposures"]]
    assert mjds == sorted(mjds)
    gaps = np.diff(mjds) * 1440.0
    assert np.all((gaps >= 10.0) & (gaps <= 20.0))
    assert [e["field"] for e in night_json["exposures"][:4]] == ["simfield00", "simfield01"] * 2
    assert {t["kind"] for t in night_json["transients"]} == {"transient", "variable", "moving"}


def test_same_seed_same_bytes_and_regeneration(night, tmp_path):
    data, summary, _ = night
    plan = plan_night(**PARAMS)
    for i in (0, 5):
        hdu, _ = render_planned(plan, i)
        buf = io.BytesIO()
        hdu.writeto(buf)
        assert buf.getvalue() == (data / summary.exposures[i].raw_path).read_bytes()
    again = simulate_night(tmp_path, **{**PARAMS, "n_fields": 1, "n_epochs": 1, "seed": 8})
    other = (tmp_path / again.exposures[0].raw_path).read_bytes()
    assert other != (data / summary.exposures[0].raw_path).read_bytes()


def test_header_and_sections(night):
    data, summary, _ = night
    rec = summary.exposures[1]
    raw = fits.getdata(data / rec.raw_path)
    hdr = fits.getheader(data / rec.raw_path)
    for key in HEADER_KEYS:
        assert key in hdr, key
    assert raw.dtype.kind == "i" and raw.shape == (SIZE[1], SIZE[0] + 2 * N_OVERSCAN)
    assert hdr["INSTRUME"] == "DECam" and hdr["DETPOS"] == "N6" and hdr["FILTER"][0] == "r"
    assert hdr["OBJECT"] == rec.field and hdr["EXPTIME"] == 60.0
    a_rows, a_cols = _section(hdr["DATASECA"])
    _b_rows, b_cols = _section(hdr["DATASECB"])
    assert a_cols.stop - a_cols.start + b_cols.stop - b_cols.start == SIZE[0]
    assert a_cols.stop == b_cols.start and a_rows == slice(0, SIZE[1])
    assert _section(hdr["BIASSECA"])[1] == slice(0, N_OVERSCAN)
    assert _section(hdr["BIASSECB"])[1] == slice(SIZE[0] + N_OVERSCAN, SIZE[0] + 2 * N_OVERSCAN)
    assert _section(hdr["DATASEC"])[1] == slice(N_OVERSCAN, N_OVERSCAN + SIZE[0])
    tel = SkyCoord(Angle(hdr["TELRA"], unit="hourangle"), Angle(hdr["TELDEC"], unit="deg"))
    assert tel.separation(SkyCoord(hdr["CRVAL1"], hdr["CRVAL2"], unit="deg")).arcsec < 0.1


def test_overscan_statistics(night):
    data, summary, _ = night
    raw = fits.getdata(data / summary.exposures[2].raw_path).astype(np.float64)
    hdr = fits.getheader(data / summary.exposures[2].raw_path)
    for amp in "AB":
        strip = raw[_section(hdr[f"BIASSEC{amp}"])]
        level = bias_level_rows(amp, SIZE[1])
        assert abs(strip.mean() - level.mean()) < 0.2
        assert abs(level.mean() - BIAS_LEVEL[amp]) < 5.0
        resid = strip - level[:, None]
        expected = np.sqrt((READ_NOISE[amp] / GAIN[amp]) ** 2 + 1.0 / 12.0)  # plus integer rounding
        assert resid.std() == pytest.approx(expected, rel=0.03)
        assert hdr[f"GAIN{amp}"] == GAIN[amp] and hdr[f"SATURAT{amp}"] == SATURATION[amp]


def test_calibrated_sky_and_bright_star_flux(night):
    data, summary, _ = night
    cal = data / "calib" / "DECam" / "37"
    flat = fits.getdata(cal / "flat.fits")
    bpm = fits.getdata(cal / "bpm.fits")
    checked = 0
    for rec in summary.exposures[:4]:
        img, _hdr = _calibrate(data, rec.raw_path)
        truth = read_truth(data, rec.expname, 37)
        sky = truth.meta["sky_e"]
        assert np.median(img[bpm == 0]) == pytest.approx(sky, rel=0.01)
        psf = MoffatPSF(
            truth.meta["fwhm_px"], 3.0, truth.meta["psf_ellipticity"], truth.meta["psf_theta_rad"]
        )
        x, y, f = (np.asarray(truth[c]) for c in ("x", "y", "flux_e"))
        cands = np.flatnonzero((truth["kind"] == "star") & (f > 1e5) & (f < 8e5))
        for k in cands:
            # a box of 2.5 FWHM (stars are rendered out to 4 FWHM or more): compare with the fraction of
            # the star's total flux that the PSF puts in that box
            h = int(np.ceil(2.5 * truth.meta["fwhm_px"]))
            ix, iy = round(x[k]), round(y[k])
            if not (h <= ix < SIZE[0] - h and h <= iy < SIZE[1] - h):
                continue
            near = (np.abs(x - x[k]) < h + 15) & (np.abs(y - y[k]) < h + 15) & (f > 0.002 * f[k])
            if near.sum() > 1 or bpm[iy - h : iy + h + 1, ix - h : ix + h + 1].any():
                continue
            box = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
            measured = ((img[box] - sky) * flat[box]).sum()
            noise = np.sqrt(img[box].size * (sky + 50.0) + f[k])
            inbox = float(psf.stamps(np.array([x[k]]), np.array([y[k]]), h)[2][0].sum())
            assert 0.95 < inbox < 1.0
            assert abs(measured - f[k] * inbox * flat[iy, ix]) < 5 * noise + 0.01 * f[k]
            checked += 1
    assert checked >= 2


def test_truth_positions_and_header_wcs(night):
    data, summary, _ = night
    for rec in summary.exposures[:3]:
        truth = read_truth(data, rec.expname, 37)
        true_wcs = WCS(fits.Header(truth.meta["true_wcs"]))
        stars = truth[truth["kind"] == "star"]
        ra, dec = true_wcs.all_pix2world(stars["x"], stars["y"], 0)
        sep = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(stars["ra"], stars["dec"], unit="deg"))
        assert sep.arcsec.max() < 1e-3
        hw = WCS(fits.getheader(data / rec.raw_path))
        ra, dec = hw.all_pix2world(stars["x"], stars["y"], 0)
        sep = SkyCoord(ra, dec, unit="deg").separation(SkyCoord(stars["ra"], stars["dec"], unit="deg"))
        assert sep.arcsec.max() < 5.0 and sep.arcsec.min() > 1.0


def test_transients_absent_in_reference_epochs(night):
    data, summary, _ = night
    for rec in summary.exposures:
        truth = read_truth(data, rec.expname, 37)
        tv = truth[np.isin(truth["kind"], ["transient", "moving"])]
        assert len(tv) >= 4  # >= 3 transients plus the moving object
        if rec.epoch < PARAMS["n_ref_epochs"]:
            assert np.all(tv["flux_e"] == 0) and np.all(np.isinf(tv["mag"]))
        else:
            assert np.all(tv["flux_e"] > 0)
        var = truth[truth["kind"] == "variable"]
        assert len(var) >= 3 and np.all(var["flux_e"] > 0)


def test_transient_visible_in_pixels(night):
    data, summary, _ = night
    by_field = {}
    for rec in summary.exposures:
        by_field.setdefault(rec.field, []).append(rec)
    recs = by_field["simfield00"]
    ref_img, _ = _calibrate(data, recs[0].raw_path)
    new_img, _ = _calibrate(data, recs[-1].raw_path)
    truth = read_truth(data, recs[-1].expname, 37)
    ref_truth = read_truth(data, recs[0].expname, 37)
    t = truth[truth["kind"] == "transient"]
    k = int(np.argmax(t["flux_e"]))
    ix, iy = round(t["x"][k]), round(t["y"][k])
    box = (slice(iy - 10, iy + 11), slice(ix - 10, ix + 11))
    diff = (new_img[box] - truth.meta["sky_e"]).sum() - (ref_img[box] - ref_truth.meta["sky_e"]).sum()
    assert diff == pytest.approx(t["flux_e"][k], rel=0.25)


def test_refcat_only_stars(night):
    data, summary, _ = night
    for fld in summary.fields:
        ref = Table.read(data / fld.refcat_path)
        assert ref.colnames == ["ra", "dec", "mag_g", "mag_r", "mag_i", "mag_z"]
        assert len(ref) > 10 and ref["mag_r"].max() < 21.1
        rec = next(e for e in summary.exposures if e.field == fld.name)
        truth = read_truth(data, rec.expname, 37)
        inside = (truth["x"] >= 0) & (truth["x"] < SIZE[0]) & (truth["y"] >= 0) & (truth["y"] < SIZE[1])
        truth = truth[inside]
        tc = SkyCoord(truth["ra"], truth["dec"], unit="deg")
        rc = SkyCoord(ref["ra"], ref["dec"], unit="deg")
        idx, sep, _ = rc.match_to_catalog_sky(tc)
        matched = sep.arcsec < 0.05
        assert matched.sum() > 10
        assert np.all(truth["kind"][idx[matched]] == "star")
        dmag = ref["mag_r"][matched] - truth["mag"][idx[matched]]
        assert np.abs(dmag).max() < 0.06
        bright = truth[(truth["kind"] == "star") & (truth["mag"] < 21.0)]
        assert matched.sum() == len(bright)


def test_calibration_frames_and_bad_columns(night):
    data, summary, _ = night
    cal = data / "calib" / "DECam" / "37"
    bpm = fits.getdata(cal / "bpm.fits")
    flat = fits.getdata(cal / "flat.fits")
    assert bpm.dtype.kind == "i" and bpm.dtype.itemsize == 2 and bpm.shape == (SIZE[1], SIZE[0])
    assert flat[bpm == 0].mean() == pytest.approx(1.0, abs=1e-4)
    bad_cols = np.flatnonzero((bpm == 1).sum(axis=0) > SIZE[1] // 2)
    assert len(bad_cols) >= 2
    img, _ = _calibrate(data, summary.exposures[0].raw_path)
    sky = read_truth(data, summary.exposures[0].expname, 37).meta["sky_e"]
    col_medians = np.median(img[:, bad_cols], axis=0)
    assert np.any(np.abs(col_medians - sky) > 0.5 * sky)  # a dead or a hot column really is bad


def test_saturated_star_bleeds_along_its_column(night):
    _data, _, _ = night
    plan = plan_night(**PARAMS)
    spec = plan.specs[0]
    star = Table({"id": [0], "ra": [spec.ra], "dec": [spec.dec]})
    for band in "griz":
        star[f"mag_{band}"] = [12.5]
    galaxies = Table(
        names=["id", "ra", "dec", "mag_r", "r_eff", "q", "pa", "n"], dtype=[np.int64] + [np.float64] * 7
    )
    catalog = FieldCatalog(name=spec.field, ra=spec.ra, dec=spec.dec, stars=star, galaxies=galaxies)
    hdu, truth = render_exposure(spec, catalog, [], plan.calib)
    raw = hdu.data.astype(np.float64)
    hdr = hdu.header
    x, y = float(truth["x"][0]), float(truth["y"][0])
    ix, iy = round(x), round(y)
    sat = np.zeros((SIZE[1], SIZE[0]), bool)
    for amp in "AB":
        rows, cols = _section(hdr[f"DATASEC{amp}"])
        adu = raw[rows, cols] - np.median(raw[_section(hdr[f"BIASSEC{amp}"])], axis=1)[:, None]
        sat[:, cols.start - N_OVERSCAN : cols.stop - N_OVERSCAN] = adu >= hdr[f"SATURAT{amp}"]
    assert sat[iy, ix]
    assert sat[:, ix].sum() > 2 * sat[iy, :].sum()  # a bleed trail along the column
    assert truth.meta["n_bleed_pixels"] > 0 and truth.meta["n_full_well_pixels"] == sat.sum()


def test_psf_stamps_hold_fractions_of_the_total_flux() -> None:
    # the wing beyond a stamp is dropped, not folded back into the core (which made faint stars' cores
    # brighter than bright stars' and their wings stop short)
    psf = MoffatPSF(4.0, 3.0, 0.05, 0.3)
    small = psf.stamps(np.array([50.3]), np.array([40.7]), 6)[2][0]
    large = psf.stamps(np.array([50.3]), np.array([40.7]), 40)[2][0]
    assert small.sum() < 0.97 and large.sum() == pytest.approx(1.0, abs=2e-3)
    np.testing.assert_allclose(small, large[34:47, 34:47], rtol=1e-4, atol=1e-7)
    assert psf.centred_stamp(10).sum() == pytest.approx(1.0, abs=1e-5)
    assert psf.half_size_for(np.array([10.0]), 30.0)[0] >= 4 * 4.0
