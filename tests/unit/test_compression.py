"""Tile-compressed planes: the quantisation error against the noise, exact zeros, lossless integers and
constants, and the readers of the older uncompressed files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from seechange.compression import NOISE_Q, RELATIVE_BITS, compressed_hdu, pixel_noise
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


def _zogy_result(rng):
    from seechange.improc.zogy import ZogyResult

    shape = (128, 96)
    score_corr = rng.normal(0, 1, shape).astype(np.float32)
    score_corr[:, :3] = 0.0  # the FLAG_EDGE border
    score_var = (2e-6 * (1 + 0.05 * rng.random(shape))).astype(np.float32)
    return ZogyResult(
        diff=rng.normal(0, 60, shape).astype(np.float32),
        diff_variance=np.full(shape, 3600.0, np.float32) * (1 + 0.01 * rng.random(shape)).astype(np.float32),
        psf_d=np.ones((7, 7), np.float32) / 49,
        f_d=0.9,
        f_s=0.05,
        score=score_corr * np.float32(1.01) * np.sqrt(score_var),
        score_var=score_var,
        score_corr=score_corr,
        score_std=1.01,
        renorm_factor=1.01,
        flags=(rng.random(shape) < 0.02).astype(np.uint16) * np.uint16(16),
        noise_corr_new=1.1,
        noise_corr_ref=1.2,
        zp=31.5,
        fwhm_px=4.0,
        wcs=_image_data(rng).wcs,
        border_px=3,
    )


def test_zogy_products_round_trip_and_older_files(tmp_path):
    from seechange.pipeline.subtract import _SCALARS, read_zogy, write_zogy

    rng = np.random.default_rng(6)
    res = _zogy_result(rng)
    ref = ImageData(
        **{**_image_data(rng).__dict__, "image": rng.normal(0, 20, res.diff.shape).astype(np.float32)}
    )
    write_zogy(tmp_path, "new/x", res, ref)
    back, ref_back = read_zogy(tmp_path, "new/x")
    steps = {k: read_ccd(tmp_path / f"new/x.{k}.fits").header["QSTEP"] for k in ("diff", "score", "ref")}
    assert np.abs(back.diff - res.diff).max() <= 0.5 * steps["diff"] * (1 + 1e-5)
    assert np.abs(back.score_corr - res.score_corr).max() <= 0.5 * steps["score"] * (1 + 1e-5)
    assert np.all(back.score_corr[:, :3] == 0)
    assert np.abs(ref_back - ref.image).max() <= 0.5 * steps["ref"] * (1 + 1e-5)
    np.testing.assert_allclose(back.score_var, res.score_var, rtol=2**-RELATIVE_BITS)
    np.testing.assert_allclose(back.diff_variance, res.diff_variance, rtol=2**-RELATIVE_BITS)
    assert np.array_equal(back.flags, res.flags) and np.array_equal(back.psf_d, res.psf_d)
    assert (back.renorm_factor, back.border_px, back.f_s) == (1.01, 3, 0.05)
    # the same products as written before compression: each plane in the primary HDU, V_S in "VAR"
    header = res.wcs.to_header(relax=True)
    for name in _SCALARS:
        header[f"HIERARCH {name.upper()}"] = float(getattr(res, name))
    old = tmp_path / "old"
    score = fits.HDUList([fits.PrimaryHDU(res.score_corr, header), fits.ImageHDU(res.score_var, name="VAR")])
    write_fits_atomic(old / "x.score.fits", score)
    planes = {"diff": res.diff, "weight": 1 / res.diff_variance, "ref": ref.image, "flags": res.flags}
    for kind, plane in {**planes, "psf": res.psf_d}.items():
        write_fits_atomic(old / f"x.{kind}.fits", fits.PrimaryHDU(plane, header if kind != "psf" else None))
    was, ref_was = read_zogy(tmp_path, "old/x")
    assert np.array_equal(was.diff, res.diff) and np.array_equal(was.score_var, res.score_var)
    assert np.array_equal(ref_was, ref.image) and was.renorm_factor == 1.01
