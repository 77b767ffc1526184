"""The one CCD reader (single, multi-extension, tile-compressed files) and the durable atomic writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from seechange import imageio
from seechange.imageio import ImageReadError, read_ccd, write_bytes_atomic, write_fits_atomic


def _mef(path: Path, *, compressed: bool = False) -> list[np.ndarray]:
    """Primary (no data, pointing cards) + CCDs 7 and 9 (int32 and float32) + a table at the end."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 60000, size=(40, 30), dtype=np.int32)
    b = rng.normal(100.0, 5.0, size=(40, 30)).astype(np.float32)
    primary = fits.PrimaryHDU(header=fits.Header({"INSTRUME": "TEST", "OBJECT": "F1", "GAIN": 1.0}))
    hdu = fits.CompImageHDU if compressed else fits.ImageHDU
    kw = {"compression_type": "GZIP_2", "quantize_level": 0.0} if compressed else {}  # lossless
    ccds = [
        hdu(a, header=fits.Header({"CCDNUM": 7, "GAIN": 4.0}), name="N7"),
        hdu(b, header=fits.Header({"CCDNUM": 9}), name="S9", **kw),
    ]
    table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.ones(3))])
    fits.HDUList([primary, *ccds, table]).writeto(path)
    return [a, b]


@pytest.mark.parametrize("compressed", [False, True])
def test_read_ccd_selects_by_default_index_extname_and_ccdnum(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / ("mef.fits.fz" if compressed else "mef.fits")
    a, b = _mef(path, compressed=compressed)
    first = read_ccd(path)
    assert first.index == 1 and first.data.dtype == np.dtype(np.float32) and first.data.dtype.isnative
    np.testing.assert_array_equal(first.data, a.astype(np.float32))
    # merged header: primary cards inherited, the extension's winning
    assert first.header["INSTRUME"] == "TEST" and first.header["OBJECT"] == "F1"
    assert first.header["GAIN"] == 4.0 and first.header["CCDNUM"] == 7
    assert first.header["NAXIS1"] == 30 and first.header["NAXIS2"] == 40 and "SIMPLE" not in first.header
    for selected in (read_ccd(path, 2), read_ccd(path, "s9"), read_ccd(path, ccdnum=9)):
        assert selected.index == 2 and selected.header["GAIN"] == 1.0 and selected.header["CCDNUM"] == 9
        np.testing.assert_array_equal(selected.data, b)
    native = read_ccd(path, "N7", dtype=None)
    assert native.data.dtype.kind == "i" and native.data.dtype.isnative
    np.testing.assert_array_equal(native.data, a)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("compressed", [False, True])
def test_read_ccd_reads_only_the_selected_hdu(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "mef.fits"
    a, _ = _mef(path, compressed=compressed)
    raw = path.read_bytes()
    with fits.open(path) as hdul:
        second = hdul.fileinfo(2)["datLoc"]
    path.write_bytes(raw[: second + 100])  # the second CCD's pixels and the table are cut off
    np.testing.assert_array_equal(read_ccd(path, "N7").data, a.astype(np.float32))
    with pytest.raises(ImageReadError, match=r"^mef\.fits: not a readable FITS file"):
        read_ccd(path, "S9")


def test_read_ccd_single_hdu_file_keeps_its_header(tmp_path: Path) -> None:
    path = tmp_path / "one.fits"
    data = np.arange(12, dtype=">f8").reshape(3, 4)
    fits.PrimaryHDU(data, fits.Header({"EXPTIME": 30.0})).writeto(path)
    ccd = read_ccd(path)
    assert ccd.index == 0 and ccd.header["EXPTIME"] == 30.0 and ccd.header["SIMPLE"]
    assert ccd.data.dtype == np.dtype(np.float32)
    assert read_ccd(path, dtype=None).data.dtype == np.dtype("=f8")


def test_read_ccd_errors_are_one_line_and_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mef.fits"
    _mef(path)
    with pytest.raises(ImageReadError, match=r"^mef\.fits: 2 image HDUs; give one CCD per file$"):
        read_ccd(path, unique=True)
    with pytest.raises(ImageReadError, match=r"^mef\.fits: no HDU 'XX'$"):
        read_ccd(path, "XX")
    with pytest.raises(ImageReadError, match=r"^mef\.fits: HDU 3 is not a 2-D image$"):
        read_ccd(path, 3)
    with pytest.raises(ImageReadError, match=r"^mef\.fits: no 2-D image HDU with CCDNUM = 4$"):
        read_ccd(path, ccdnum=4)
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((2, 3, 4), np.float32)).writeto(cube)
    with pytest.raises(ImageReadError, match=r"^cube\.fits: no 2-D image HDU \(data has 3 dimensions\)$"):
        read_ccd(cube)
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"SIMPLE = not really a FITS file\n" * 3)
    with pytest.raises(ImageReadError, match=r"^junk\.fits: not a readable FITS file") as info:
        read_ccd(junk)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError):
        read_ccd(tmp_path / "absent.fits")
    with pytest.raises(TypeError):
        read_ccd(path, 1, ccdnum=7)


def test_atomic_writers_fsync_the_file_and_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(imageio.os, "fsync", fsync)
    folder = tmp_path / "out"
    write_bytes_atomic(folder / "a.bin", [b"ab", b"cd"])
    assert (folder / "a.bin").read_bytes() == b"abcd"
    assert len(synced) == 2 and Path(synced[0]).parent == folder and Path(synced[1]) == folder
    synced.clear()
    write_fits_atomic(folder / "b.fits", np.ones((2, 2), np.float32), checksum=True)
    assert len(synced) == 2 and Path(synced[1]) == folder
    with fits.open(folder / "b.fits", checksum=True) as hdul:
        assert "CHECKSUM" in hdul[0].header and "DATASUM" in hdul[0].header
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "b.fits"]
    assert ((folder / "a.bin").stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("compressed", [False, True])
def test_a_late_hdu_is_read_directly_with_the_same_pixels_and_header(
    tmp_path: Path, compressed: bool
) -> None:
    """HDU k >= 2 skips astropy's walk of the headers before it; result identical to astropy's own read."""
    rng = np.random.default_rng(5)
    primary = fits.PrimaryHDU(header=fits.Header({"INSTRUME": "TEST", "OBJECT": "F1", "NEXTEND": 5}))
    hdu = fits.CompImageHDU if compressed else fits.ImageHDU
    arrays, hdus = [], []
    for k in range(5):  # BITPIX 16 with BZERO 32768 (as DECam raw files), int32, float32
        if k % 3 == 0:
            raw = rng.integers(0, 65535, size=(24, 18), dtype=np.uint16)
            h = hdu(raw, header=fits.Header({"CCDNUM": k, "LONGCARD": "x" * 60}), name=f"C{k}")
            arrays.append(raw.astype(np.float32))
        elif k % 3 == 1:
            raw32 = rng.integers(-5000, 60000, size=(24, 18), dtype=np.int32)
            h = hdu(raw32, header=fits.Header({"CCDNUM": k}), name=f"C{k}")
            arrays.append(raw32.astype(np.float32))
        else:
            f = rng.normal(100.0, 5.0, size=(24, 18)).astype(np.float32)
            kw = {"quantize_level": 0.0, "compression_type": "GZIP_2"} if compressed else {}
            h = hdu(f, header=fits.Header({"CCDNUM": k}), name=f"C{k}", **kw)
            arrays.append(f)
        hdus.append(h)
    path = tmp_path / ("five.fits.fz" if compressed else "five.fits")
    fits.HDUList([primary, *hdus]).writeto(path)
    for index in range(2, 6):
        direct = imageio._read_hdu_direct(path, index, np.float32)
        assert direct is not None, index
        assert direct.index == index
        np.testing.assert_array_equal(direct.data, arrays[index - 1])
        with fits.open(path) as hdul:
            expected = imageio.merged_header(hdul[0].header, hdul[index].header)
        assert list(direct.header.items()) == list(expected.items())
        via = read_ccd(path, index)
        np.testing.assert_array_equal(via.data, direct.data)
    assert imageio._read_hdu_direct(path, 9, np.float32) is None  # no such HDU: astropy's path says so
    with pytest.raises(ImageReadError, match="no HDU 9"):
        read_ccd(path, 9)
