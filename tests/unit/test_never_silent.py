"""Zero point, WCS and PSF are never silent: real CP headers (legacypipe-decam) and small synthetic cases."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from seechange.errors import UnusableImage
from seechange.imageio import header_wcs, merged_header
from seechange.improc.coadd import coadd
from seechange.improc.prereduced import load_prereduced
from seechange.improc.psf import build_psf, header_fwhm_px
from seechange.improc.reduction import ReduceParams
from seechange.pipeline.references import footprint_overlap
from tests.paths import SHARED_DATA
from tests.unit.test_zogy import make_image

TC3 = SHARED_DATA / "legacypipe-decam" / "testcase3"
CP_IMAGES = sorted(TC3.glob("c4d_*_ooi_*.fits")) if TC3.is_dir() else []
needs_tc3 = pytest.mark.skipif(not CP_IMAGES, reason="../shared/data/legacypipe-decam not present")


@needs_tc3
def test_header_fwhm_of_cp_images_is_the_fwhm_card_in_pixels() -> None:
    for path in CP_IMAGES:
        with fits.open(path) as hdul:
            header = merged_header(hdul[0].header, hdul[1].header)
        assert header_fwhm_px(header, 0.263) == pytest.approx(float(header["FWHM"]), rel=1e-9)


def test_header_seeing_in_arcsec_is_converted_with_the_pixel_scale() -> None:
    header = fits.Header()
    header["SEEING"] = (1.2, "[arcsec] seeing")
    assert header_fwhm_px(header, 0.3) == pytest.approx(4.0)
    header["FWHM"] = (0.9, "FWHM [arcsec]")  # FWHM wins over SEEING, and its comment says arcsec
    assert header_fwhm_px(header, 0.3) == pytest.approx(3.0)
    assert np.isnan(header_fwhm_px(fits.Header(), 0.3))


@needs_tc3
@pytest.mark.parametrize("path", CP_IMAGES, ids=lambda p: p.name[:22])
def test_prereduced_cp_cutout_psf_falls_back_to_the_header_fwhm(path: Path) -> None:
    weight = Path(str(path).replace("_ooi_", "_oow_"))
    mask = Path(str(path).replace("_ooi_", "_ood_"))
    refcat = Table(names=("ra", "dec"), dtype=(float, float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_prereduced(path, weight_path=weight, mask_path=mask, refcat=refcat, params=ReduceParams())
    with fits.open(path) as hdul:
        header_fwhm = float(merged_header(hdul[0].header, hdul[1].header)["FWHM"])
    assert data.meta is not None and data.meta["psf_source"] in ("header", "stars")
    if data.meta["psf_source"] == "header":
        assert data.fwhm_px == pytest.approx(header_fwhm, rel=0.05)
    else:  # a star model is kept only when it agrees with the header within a factor 2
        assert 0.5 * header_fwhm <= data.fwhm_px <= 2.0 * header_fwhm


def test_build_psf_without_stars_uses_the_fallback_and_says_so() -> None:
    empty = Table(names=("x", "y", "snr", "fwhm", "a", "b", "flag", "pixflags", "flux"))
    with pytest.warns(RuntimeWarning, match="from the header"):
        psf = build_psf(np.zeros((64, 64), np.float32), empty, fallback_fwhm=5.0)
    assert psf.source == "header" and psf.fwhm_px == pytest.approx(5.0, rel=0.05)
    with pytest.warns(RuntimeWarning, match="from the default"):
        psf = build_psf(np.zeros((64, 64), np.float32), empty)
    assert psf.source == "default" and psf.fwhm_px == pytest.approx(4.0, rel=0.05)


def test_missing_wcs_is_one_line_naming_the_file_and_cards() -> None:
    header = fits.Header()
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, 40, 50
    with pytest.raises(UnusableImage, match=r"^x\.fits: no celestial WCS \(needs CTYPE1/2") as info:
        header_wcs(header, name="x.fits")
    assert "\n" not in str(info.value) and "number of data axes" not in str(info.value)


def test_coadd_refuses_an_input_without_zero_point() -> None:
    rng = np.random.default_rng(3)
    good, bad = make_image(rng, sky_e=900.0, zp=30.0), make_image(rng, sky_e=900.0, zp=30.0)
    bad.zp = float("nan")
    with pytest.raises(UnusableImage, match=r"input\(s\) \[1\] have no zero point"):
        coadd([good, bad])


def test_footprint_overlap_fractions() -> None:
    square = np.array([[10.0, 0.0], [10.1, 0.0], [10.1, 0.1], [10.0, 0.1]])
    assert footprint_overlap(square, square) == pytest.approx(1.0)
    assert footprint_overlap(square, square[::-1]) == pytest.approx(1.0)  # orientation does not matter
    assert footprint_overlap(square, square + [0.05, 0.0]) == pytest.approx(0.5, abs=1e-3)
    assert footprint_overlap(square, square + [0.05, 0.05]) == pytest.approx(0.25, abs=1e-3)
    assert footprint_overlap(square, square + [0.2, 0.0]) == 0.0
    big = np.array([[9.9, -0.1], [10.2, -0.1], [10.2, 0.2], [9.9, 0.2]])
    assert footprint_overlap(square, big) == pytest.approx(1.0)
    assert footprint_overlap(big, square) == pytest.approx(1.0 / 9.0, rel=1e-2)
    across = np.array([[359.95, 0.0], [0.05, 0.0], [0.05, 0.1], [359.95, 0.1]])  # RA wraps through 0
    assert footprint_overlap(across, across + [0.05, 0.0]) == pytest.approx(0.5, abs=1e-3)
