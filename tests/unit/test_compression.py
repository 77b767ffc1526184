"""Tile-compressed planes: the quantisation error against the noise, exact zeros, lossless integers and
constants, and the readers of the older uncompressed files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from seechange.compression import NOISE_Q, compressed_hdu, pixel_noise
from seechange.imageio import read_ccd, read_image_data, write_fits_atomic, write_image_data
from seechange.improc.types import ImageData


def _round_trip(tmp_path, hdu) -> tuple[np.ndarray, fits.Header]:
    path = tmp_path / "plane.fits"
    write_fits_atomic(path, hdu, checksum=True)
    ccd = read_ccd(path, dtype=None)
    return ccd.data, ccd.header


def test_noise_quantisation_adds_half_a_percent_of_the_noise_variance(tmp_path):
    rng = np.random.default_rng(3)
    sigma = 12.5
    img = rng.normal(0.0, sigma, (256, 512)).astype(np.float32)
    img[100:103, 200:203] += 5000.0  # a star: large values are quantised with the same step
    img[:, :4] = 0.0  # a zero-filled border stays exactly zero
    assert 0.8 * sigma < pixel_noise(img) <= 1.02 * sigma  # a low percentile over bands: errs low
    back, hdr = _round_trip(tmp_path, compressed_hdu(img, quantise="noise"))
    err = back.astype(np.float64) - img
    step = hdr["QSTEP"]
    assert step == pytest.approx(pixel_noise(img) / NOISE_Q)
    assert np.abs(err).max() <= 0.5 * step * (1 + 1e-5)
    # uniform error of one step: variance step**2 / 12, i.e. about 1/192 of sigma**2 for q = 4
    assert np.var(err[:, 4:]) == pytest.approx(step**2 / 12, rel=0.05)
    assert np.var(err[:, 4:]) / sigma**2 <= 1 / (12 * NOISE_Q**2)
    assert np.all(back[:, :4] == 0)
    assert (tmp_path / "plane.fits").stat().st_size < img.nbytes / 4


def test_relative_quantisation_and_lossless_cases(tmp_path):
    rng = np.random.default_rng(4)
    weight = (1e-3 * (1 + 0.01 * rng.normal(size=(128, 256)))).astype(np.float32)
    weight[5, 5] = 0.0
    back, hdr = _round_trip(tmp_path, compressed_hdu(weight, quantise="relative"))
    assert np.abs(back - weight).max() <= 0.5 * hdr["QSTEP"] * (1 + 1e-5)
    assert hdr["QSTEP"] == pytest.approx(1e-3 / 256, rel=0.02) and back[5, 5] == 0
    constant = np.full((64, 64), 3.25e-4, np.float32)
    back, hdr = _round_trip(tmp_path, compressed_hdu(constant, quantise="relative"))
    assert hdr["QSTEP"] == 0.0 and np.array_equal(back, constant)
    flags = rng.integers(0, 2**16, (64, 128)).astype(np.uint16)
    back, _ = _round_trip(tmp_path, compressed_hdu(flags))
    assert back.dtype == np.uint16 and np.array_equal(back, flags)
    with pytest.raises(ValueError, match="quantise"):
        compressed_hdu(weight)


def _image_data(rng) -> ImageData:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [32.0, 16.0]
    wcs.wcs.cd = [[-7.3e-5, 0], [0, 7.3e-5]]
    return ImageData(
        image=rng.normal(0, 10, (32, 64)).astype(np.float32),
        weight=np.full((32, 64), 0.01, np.float32),
        flags=(rng.random((32, 64)) < 0.01).astype(np.uint16),
        psf=np.ones((5, 5), np.float32) / 25,
        wcs=wcs,
        zp=30.0,
        fwhm_px=3.0,
        bkg_level=100.0,
        bkg_rms=10.0,
        mjd=60000.5,
        band="r",
    )


def test_older_uncompressed_files_are_read(tmp_path):
    d = _image_data(np.random.default_rng(5))
    write_image_data(tmp_path / "new", d, {})
    assert read_ccd(tmp_path / "new.image.fits").index == 1  # compressed: HDU 1
    # an image written before compression: every plane in the primary HDU, uncompressed
    new_hdr = read_ccd(tmp_path / "new.image.fits").header
    for kind, plane in (("image", d.image), ("weight", d.weight), ("flags", d.flags), ("psf", d.psf)):
        hdr = new_hdr if kind == "image" else fits.Header()
        write_fits_atomic(tmp_path / f"old.{kind}.fits", fits.PrimaryHDU(plane, hdr))
    old = read_image_data(tmp_path / "old")
    assert np.array_equal(old.image, d.image) and np.array_equal(old.flags, d.flags)
    assert old.zp == d.zp and old.band == "r"
