"""Validation at the door and multi-CCD splitting (``seechange.pipeline.ingest.scan_raw_file``), no services.

Each odd value real files carry has a test: a simulated DECam CCD (64x128 pixels) is written with one card or
the pixels changed, and the outcome (an Exposure's values, or a one-line refusal naming file, CCD and card)
is checked against what was written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from seechange.errors import UnusableImage
from seechange.improc.calibrate import amp_layout, calibrate, overscan_correct_and_trim
from seechange.improc.types import FLAG_BAD
from seechange.instruments import DECAM, LS4, UnknownInstrument, get_instrument
from seechange.pipeline.ingest import CcdOutcome, IngestError, RawInfo, scan_raw_file
from seechange.sim.mef import pack_exposure
from seechange.sim.night import plan_night, render_planned

SIZE = (64, 128)  # trimmed nx, ny


@pytest.fixture(scope="module")
def ccd() -> fits.PrimaryHDU:
    plan = plan_night(n_fields=1, n_epochs=1, size=SIZE)
    hdu, _ = render_planned(plan, 0)
    return hdu


def _write(
    tmp_path: Path, hdu: fits.PrimaryHDU, change: Callable[[fits.Header, np.ndarray], np.ndarray | None]
) -> Path:
    header, data = hdu.header.copy(), hdu.data.copy()
    out = change(header, data)
    path = tmp_path / "c4d_230101_000000_37.fits"
    fits.PrimaryHDU(data=out if out is not None else data, header=header).writeto(path, overwrite=True)
    return path


def _one(path: Path) -> CcdOutcome:
    outcomes = scan_raw_file(path)
    assert len(outcomes) == 1
    return outcomes[0]


def _good(path: Path) -> RawInfo:
    one = _one(path)
    assert one.error is None, one.error
    assert one.info is not None
    return one.info


def _refused(path: Path, *words: str) -> str:
    one = _one(path)
    assert one.info is None and one.error is not None
    message = str(one.error)
    assert "\n" not in message and path.name in message and "CCD N6" in message, message
    for w in words:
        assert w in message, message
    return message


# --- accepted odd values ---------------------------------------------------------------------------------


def test_plain_simulated_ccd(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    info = _good(_write(tmp_path, ccd, lambda h, d: None))
    assert (info.instrument, info.section_id, info.ccd_name, info.band) == ("DECam", "37", "N6", "r")
    assert info.mjd == ccd.header["MJD-OBS"] and info.exp_time == ccd.header["EXPTIME"]
    assert info.gain == pytest.approx((3.9 + 4.1) / 2) and info.read_noise == pytest.approx(7.0)
    assert info.origin_id == str(ccd.header["EXPNUM"]) and info.hdu == 0


def test_bitpix_16_with_bzero_32768(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    path = tmp_path / "c4d_230101_000000_37.fits"
    u16 = ccd.data.astype(np.uint16)
    fits.PrimaryHDU(data=u16, header=ccd.header.copy()).writeto(path)  # astropy writes BITPIX 16, BZERO 32768
    with fits.open(path) as hdul:
        assert hdul[0].header["BITPIX"] == 16 and hdul[0].header["BZERO"] == 32768
    assert _good(path).section_id == "37"
    from seechange.imageio import read_ccd

    assert np.array_equal(read_ccd(path).data, u16.astype(np.float32))


def test_float_data(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    info = _good(_write(tmp_path, ccd, lambda h, d: d.astype(np.float32) + 0.25))
    assert info.band == "r"


def test_int_data(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    assert ccd.data.dtype.kind == "i"
    assert _good(_write(tmp_path, ccd, lambda h, d: d.astype(np.int32))).section_id == "37"


@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_nan_or_zero_filled_amplifier_is_flagged_and_the_rest_processed(
    tmp_path: Path, ccd: fits.PrimaryHDU, fill: float
) -> None:
    def kill_b(h: fits.Header, d: np.ndarray) -> np.ndarray:
        out = d.astype(np.float32)
        nx_raw = out.shape[1]
        out[:, nx_raw // 2 :] = fill  # amplifier B: its data and its overscan
        return out

    path = _write(tmp_path, ccd, kill_b)
    _good(path)  # ingest reads headers only: the pixels are reduce's to check
    _, amps, (electrons, weight, flags) = _calibrated(path)
    b = amps[1].trimmed
    a = amps[0].trimmed
    assert np.all(flags[b] & FLAG_BAD) and np.all(weight[b] == 0)
    assert np.isfinite(electrons).all()
    assert not np.any(flags[a] & FLAG_BAD) and np.all(weight[a] > 0)


def test_missing_optional_cards(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def strip(h: fits.Header, d: np.ndarray) -> None:
        for key in ("AIRMASS", "OBJECT", "EXPNUM", "GAINA", "GAINB", "RDNOISEA", "RDNOISEB", "TELRA"):
            del h[key]

    info = _good(_write(tmp_path, ccd, strip))
    assert (info.airmass, info.field, info.gain, info.read_noise) == (None, None, None, None)
    assert info.origin_id == "c4d_230101_000000_37"


def test_lower_case_and_padded_values(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def pad(h: fits.Header, d: np.ndarray) -> None:
        h["INSTRUME"] = "  decam "
        h["FILTER"] = "  r DECam SDSS c0002 6415.0 1480.0   "
        del h["CCDNUM"]
        h["DETPOS"] = " n6 "
        h["EXPTIME"] = " 60.0 "
        h["AIRMASS"] = "1.25  "

    info = _good(_write(tmp_path, ccd, pad))
    assert (info.instrument, info.section_id, info.ccd_name, info.band) == ("DECam", "37", "N6", "r")
    assert info.exp_time == 60.0 and info.airmass == 1.25


@pytest.mark.parametrize(
    ("value", "band"),
    [
        ("g DECam SDSS c0001 4720.0 1520.0", "g"),
        ("r DECam SDSS c0002 6415.0 1480.0", "r"),
        ("i DECam SDSS c0003 7835.0 1470.0", "i"),
        ("z DECam SDSS c0004 9260.0 1520.0", "z"),
        ("Y DECam c0005 10095.0 1130.0", "Y"),
        ("VR DECam c0007 6300.0 2600.0", "VR"),
    ],
)
def test_filter_names_mapped_to_bands(tmp_path: Path, ccd: fits.PrimaryHDU, value: str, band: str) -> None:
    def set_filter(h: fits.Header, d: np.ndarray) -> None:
        h["FILTER"] = value

    assert _good(_write(tmp_path, ccd, set_filter)).band == band


def test_sexagesimal_ra_dec_without_wcs(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def no_wcs(h: fits.Header, d: np.ndarray) -> None:
        for key in [
            k for k in h if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CUNIT", "WCSAXES"))
        ]:
            del h[key]
        h["RA"], h["DEC"] = "02:01:30.00", "-20:15:36.0"

    info = _good(_write(tmp_path, ccd, no_wcs))
    assert info.ra == pytest.approx(30.375, abs=1e-9) and info.dec == pytest.approx(-20.26, abs=1e-9)


def test_decimal_string_ra_dec_without_wcs(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def no_wcs(h: fits.Header, d: np.ndarray) -> None:
        del h["CTYPE1"]
        h["RA"], h["DEC"] = "30.375", -20.26

    info = _good(_write(tmp_path, ccd, no_wcs))
    assert (info.ra, info.dec) == (30.375, -20.26)


def test_mjd_obs_missing_but_date_obs_present(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def drop(h: fits.Header, d: np.ndarray) -> None:
        del h["MJD-OBS"]
        h["DATE-OBS"] = "2023-02-25T00:46:42.500"

    info = _good(_write(tmp_path, ccd, drop))
    assert info.mjd == pytest.approx(Time("2023-02-25T00:46:42.5", scale="utc").mjd, abs=1e-9)


# --- refused, one line naming file, CCD and card ---------------------------------------------------------


@pytest.mark.parametrize(
    ("card", "value", "words"),
    [
        ("RA", 400.0, ("RA = 400.0", "[0, 360)")),
        ("RA", "25:00:00", ("RA = '25:00:00'", "not an angle")),
        ("DEC", -95.0, ("DEC = -95.0", "[-90, 90]")),
        ("FILTER", "banana", ("FILTER = 'banana'", "not a DECam filter")),
        ("FILTER", "", ("FILTER = ''",)),
        ("MJD-OBS", "yesterday", ("MJD-OBS = 'yesterday'", "not an MJD")),
        ("EXPTIME", 0.0, ("EXPTIME = 0.0", "> 0")),
        ("EXPTIME", "long", ("EXPTIME = 'long'", "not a number")),
        ("DATASECB", "[83:200,1:128]", ("DATASECB = '[83:200,1:128]'", "outside the 164x128 array")),
        ("DATASEC", "[51:114,1:999]", ("DATASEC = '[51:114,1:999]'", "outside")),
        ("BIASSECA", "garbage", ("not a FITS section", "garbage")),
        ("CRVAL2", 123.0, ("unusable WCS (CTYPE/CRVAL/CRPIX/CD)",)),
        ("GAINA", -1.0, ("GAINA = -1.0", "> 0")),
    ],
)
def test_bad_card_is_refused(
    tmp_path: Path, ccd: fits.PrimaryHDU, card: str, value: object, words: tuple[str, ...]
) -> None:
    def set_card(h: fits.Header, d: np.ndarray) -> None:
        h[card] = value

    _refused(_write(tmp_path, ccd, set_card), *words)


def test_unknown_instrument_is_refused_naming_it(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def other(h: fits.Header, d: np.ndarray) -> None:
        h["INSTRUME"] = "HyperCam9"

    _refused(_write(tmp_path, ccd, other), "INSTRUME = 'HyperCam9' is not a known instrument", "DECam, LS4")


def test_missing_time_cards(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    def drop(h: fits.Header, d: np.ndarray) -> None:
        del h["MJD-OBS"], h["DATE-OBS"]

    _refused(_write(tmp_path, ccd, drop), "MJD-OBS and DATE-OBS")


def _calibrated(path: Path) -> tuple[np.ndarray, list, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Reduce's calibration of the CCD of ``path`` with unit calibration frames."""
    from seechange.imageio import read_ccd

    raw = read_ccd(path)
    trimmed, amps = overscan_correct_and_trim(raw.data, raw.header, smooth_rows=1)
    shape = trimmed.shape
    zeros, ones = np.zeros(shape, np.float32), np.ones(shape, np.float32)
    out = calibrate(
        trimmed, raw.header, zeros, zeros, ones, np.zeros(shape, np.int16), exptime=60.0, cosmic_rays=False
    )
    return trimmed, amps, out


@pytest.mark.parametrize(
    "fill, what",
    [
        (lambda d: np.full(d.shape, np.nan, np.float32), "NaN"),
        (lambda d: np.full(d.shape, 1000, np.int32), "one value"),
    ],
)
def test_all_nan_or_constant_ccd_is_registered_then_refused_by_reduce(
    tmp_path: Path, ccd: fits.PrimaryHDU, fill: Callable[[np.ndarray], np.ndarray], what: str
) -> None:
    path = _write(tmp_path, ccd, lambda h, d: fill(d))
    _good(path)  # the header is sound; no pixel is read at ingest
    with pytest.raises(UnusableImage, match=f"every pixel of the data section is .*{what}") as err:
        _calibrated(path)
    assert "\n" not in str(err.value)


def test_a_file_cut_short_is_refused_whole_not_read_as_fewer_ccds(
    tmp_path: Path, ccd: fits.PrimaryHDU, caplog: pytest.LogCaptureFixture
) -> None:
    """Cut inside the third CCD's data or its header: refused, never two CCDs; at its start: a warning."""
    hdus = []
    for n in (35, 36, 37):
        h = ccd.header.copy()
        h["CCDNUM"], h["DETPOS"] = n, DECAM.ccd_name(n)
        hdus.append(fits.ImageHDU(ccd.data, h))
    for fmt in ("mef", "mef-fz"):
        whole = tmp_path / f"three_{fmt}.fits"
        pack_exposure(hdus, fmt).writeto(whole, overwrite=True)
        assert [o.info is not None for o in scan_raw_file(whole)] == [True, True, True]
        with fits.open(whole) as hdul:
            third = hdul[3].fileinfo()["hdrLoc"]
        body = whole.read_bytes()
        for cut, words in ((len(body) - 2880, "truncated"), (third + 1000, "truncated or corrupt header")):
            short = tmp_path / f"short_{fmt}_{cut}.fits"
            short.write_bytes(body[:cut])
            with pytest.raises(IngestError, match=words):
                scan_raw_file(short)
        # cut exactly at an HDU boundary: only NEXTEND can tell, and it is a warning (cut-outs keep theirs)
        short = tmp_path / f"boundary_{fmt}.fits"
        short.write_bytes(body[:third])
        with caplog.at_level(logging.WARNING, logger="seechange.imageio"):
            assert len(scan_raw_file(short)) == 2
        assert "NEXTEND = 3 but the file holds 2 extension(s)" in caplog.text


def test_three_dimensional_image_is_refused(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(data=np.zeros((2, 8, 8), np.float32), header=fits.Header()).writeto(path)
    with pytest.raises(Exception, match="no 2-D image HDU"):
        scan_raw_file(path)


def test_wcs_less_ccd_of_a_multi_ccd_file_is_refused(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    hdus = []
    for n in (36, 37):
        h = ccd.header.copy()
        h["CCDNUM"], h["DETPOS"] = n, DECAM.ccd_name(n)
        if n == 37:
            del h["CTYPE1"]
        hdus.append(fits.ImageHDU(ccd.data, h))
    path = tmp_path / "two.fits"
    pack_exposure(hdus, "mef").writeto(path)
    outcomes = scan_raw_file(path)
    assert [o.label for o in outcomes] == ["N5", "N6"]
    assert outcomes[0].info is not None and outcomes[1].error is not None
    assert "CCD N6" in str(outcomes[1].error) and "no WCS" in str(outcomes[1].error)


# --- multi-CCD files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mef", "mef-fz"])
def test_every_ccd_of_a_multi_extension_file_is_an_outcome(
    tmp_path: Path, ccd: fits.PrimaryHDU, fmt: str
) -> None:
    numbers = [1, 2, 35, 61, 62]  # 2 = S30, 61 = N30 (skip list); also a guide CCD
    hdus = []
    for n in numbers:
        h = ccd.header.copy()
        h["CCDNUM"], h["DETPOS"] = n, DECAM.ccd_name(n)
        hdus.append(fits.ImageHDU(ccd.data, h))
    guide = ccd.header.copy()
    guide["DETPOS"] = "FS1"
    del guide["CCDNUM"]
    hdus.append(fits.ImageHDU(ccd.data[:64, :64], guide))
    path = tmp_path / ("c4d_230101_000000_ori" + (".fits.fz" if fmt == "mef-fz" else ".fits"))
    pack_exposure(hdus, fmt).writeto(path)
    outcomes = scan_raw_file(path)
    assert [o.label for o in outcomes] == ["S29", "S30", "N4", "N30", "N31", "FS1"]
    assert [o.hdu for o in outcomes] == [1, 2, 3, 4, 5, 6]
    made = {o.info.section_id: o.info for o in outcomes if o.info is not None}
    assert sorted(made) == ["1", "35", "62"]
    assert {o.label: o.skipped for o in outcomes if o.skipped} == {
        "S30": "S30 is in the skip list",
        "N30": "N30 is in the skip list",
        "FS1": "FS1 is a guide/focus CCD",
    }
    assert all(i.mjd == ccd.header["MJD-OBS"] and i.band == "r" for i in made.values())  # from the primary
    everything = scan_raw_file(path, skip=frozenset())
    assert sorted(o.info.section_id for o in everything if o.info is not None) == [
        "1",
        "2",
        "35",
        "61",
        "62",
    ]


def test_ccd_cards_win_over_the_primary(tmp_path: Path, ccd: fits.PrimaryHDU) -> None:
    h = ccd.header.copy()
    hdul = pack_exposure([fits.ImageHDU(ccd.data, h)], "mef")
    hdul[0].header["GAINA"] = 99.0  # a primary value the CCD's own card must override
    hdul[1].header["GAINA"] = 5.0
    path = tmp_path / "one_ext.fits"
    hdul.writeto(path)
    assert _good(path).gain == pytest.approx((5.0 + 4.1) / 2)


# --- instruments -----------------------------------------------------------------------------------------


def test_instrument_registry_and_definitions() -> None:
    assert get_instrument(" decam ") is DECAM and get_instrument("LS4") is LS4
    with pytest.raises(UnknownInstrument, match="'Foo' is not a known instrument"):
        get_instrument("Foo")
    assert len(DECAM.ccds) == 62 and DECAM.ccd_name(37) == "N6" and DECAM.ccd_number("S30") == 2
    assert DECAM.pixel_scale == 0.263 and DECAM.skip_ccds == {"S30", "N30"}
    assert len(LS4.ccds) == 32 and LS4.pixel_scale == 1.0 and LS4.exptime_default == 45.0
    bands = [LS4.quadrant_filters[(n - 1) // 8 + 1] for n in LS4.ccds]
    assert bands.count("i") == 16 and bands.count("g") == 8 and bands.count("z") == 8
    assert LS4.band("i") == "i" and DECAM.band("r DECam SDSS c0002 6415.0 1480.0") == "r"


def test_amp_layout_per_amplifier_cards(ccd: fits.PrimaryHDU) -> None:
    amps = amp_layout(ccd.header)
    assert [(a.name, a.gain, a.read_noise, a.saturation) for a in amps] == [
        ("A", 3.9, 6.8, 44800.0),
        ("B", 4.1, 7.2, 45400.0),
    ]
