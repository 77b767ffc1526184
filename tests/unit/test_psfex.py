"""PSFEx models as the PSF of pre-reduced images, and the galaxy-nucleus sightings they removed (issue 8)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from seechange.errors import CorruptFile
from seechange.evaluation.real_folder import _calibrate_group, _groups, evaluate_real_folder, load_folder
from seechange.improc.coadd import coadd
from seechange.improc.detection import DetectParams
from seechange.improc.prereduced import load_prereduced
from seechange.improc.psf import gaussian_psf, measure_fwhm, psfex_psf
from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import SubtractParams, subtract
from seechange.improc.zogy import ZogyParams
from seechange.pipeline.ingest_reduced import pair_cp_triplets, psfex_beside
from tests.paths import SHARED_DATA

TC3 = SHARED_DATA / "legacypipe-decam" / "testcase3"
needs_tc3 = pytest.mark.skipif(not TC3.is_dir(), reason="../shared/data/legacypipe-decam not present")


def _psfex_file(path: Path, comps: list[np.ndarray], *, deg: int, samp: float = 1.0, rows=None) -> Path:
    """A PSFEx file: PSFEx's own layout (parameters in the PSF_DATA header), or merged rows per CCD."""
    n, size = len(comps), comps[0].shape[0]
    cube = np.stack(comps).astype(np.float32)
    if rows is None:
        col = fits.Column(
            name="PSF_MASK", format=f"{n * size * size}E", dim=f"({size},{size},{n})", array=[cube]
        )
        hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
        h = hdu.header
        h["POLNAXIS"], h["POLNGRP"], h["POLDEG1"], h["PSF_SAMP"] = (2 if deg else 0), 1, deg, samp
        h["POLNAME1"], h["POLZERO1"], h["POLSCAL1"] = "X_IMAGE", 100.5, 200.0
        h["POLNAME2"], h["POLZERO2"], h["POLSCAL2"] = "Y_IMAGE", 50.5, 100.0
    else:  # Legacy Surveys merged file: one row per CCD, parameters as columns
        cols = [
            fits.Column(name="ccdname", format="3A", array=[r[0] for r in rows]),
            fits.Column(
                name="psf_mask",
                format=f"{n * size * size}E",
                dim=f"({size},{size},{n})",
                array=[r[1] for r in rows],
            ),
            fits.Column(name="polnaxis", format="K", array=[2] * len(rows)),
            fits.Column(name="polngrp", format="K", array=[1] * len(rows)),
            fits.Column(name="poldeg1", format="K", array=[deg] * len(rows)),
            fits.Column(name="psf_samp", format="D", array=[samp] * len(rows)),
            fits.Column(name="polzero1", format="D", array=[0.0] * len(rows)),
            fits.Column(name="polscal1", format="D", array=[1.0] * len(rows)),
            fits.Column(name="polzero2", format="D", array=[0.0] * len(rows)),
            fits.Column(name="polscal2", format="D", array=[1.0] * len(rows)),
        ]
        hdu = fits.BinTableHDU.from_columns(cols)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def test_psfex_polynomial_position_and_sampling(tmp_path: Path) -> None:
    g3, g5 = gaussian_psf(3.0, 35).astype(np.float64), gaussian_psf(5.0, 35).astype(np.float64)
    # degree 1: terms 1, u, v (PSFEx order); the PSF goes from FWHM 3 at X_IMAGE = POLZERO1 to 5 one POLSCAL1 on
    path = _psfex_file(tmp_path / "a.psf", [g3, g5 - g3, np.zeros_like(g3)], deg=1)
    at0 = psfex_psf(path, x=99.5, y=49.5)  # X_IMAGE = 100.5 -> u = 0
    at1 = psfex_psf(path, x=299.5, y=49.5)  # u = 1
    assert at0.source == "psfex" and at0.stamp.shape == (35, 35)
    assert abs(at0.fwhm_px - measure_fwhm(g3)) < 0.02 and abs(at1.fwhm_px - measure_fwhm(g5)) < 0.02
    assert abs(float(at1.stamp.sum()) - 1.0) < 1e-5
    assert psfex_psf(path, x=99.5, y=49.5, max_size=21).stamp.shape == (21, 21)
    # PSF_SAMP 0.5: a model pixel is half an image pixel, so FWHM 8 model pixels is 4 image pixels
    g8 = gaussian_psf(8.0, 51).astype(np.float64)
    half = psfex_psf(_psfex_file(tmp_path / "b.psf", [g8], deg=0, samp=0.5), x=0.0, y=0.0)
    assert abs(half.fwhm_px - 4.0) < 0.1


def test_psfex_merged_rows_by_ccd(tmp_path: Path) -> None:
    g3, g6 = gaussian_psf(3.0, 31), gaussian_psf(6.0, 31)
    zero = np.zeros_like(g3)
    rows = [("S4", np.stack([g3] + [zero] * 5)), ("S9", np.stack([g6] + [zero] * 5))]
    path = _psfex_file(tmp_path / "m-psfex.fits", [g3] * 6, deg=2, rows=rows)
    assert abs(psfex_psf(path, x=10, y=10, ccd="S9").fwhm_px - measure_fwhm(g6)) < 0.02
    assert abs(psfex_psf(path, x=10, y=10, ccd="S4").fwhm_px - measure_fwhm(g3)) < 0.02
    with pytest.raises(CorruptFile, match="no PSF for CCD N1"):
        psfex_psf(path, x=10, y=10, ccd="N1")
    (tmp_path / "junk.psf").write_bytes(b"not fits")
    with pytest.raises(CorruptFile):
        psfex_psf(tmp_path / "junk.psf", x=0, y=0)


@needs_tc3
def test_cp_triplet_finds_its_psfex_model_and_the_loader_uses_it() -> None:
    (t,) = pair_cp_triplets([TC3 / "c4d_180908_000426_ooi_g_ls9.N10.fits"])
    assert t.psf == TC3 / "psfex" / "c4d_180908_000426_ooi_g_ls9-N10-psfex.fits" == psfex_beside(t.image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_prereduced(
            t.image, weight_path=t.weight, mask_path=t.mask, psf_path=t.psf, params=ReduceParams()
        )
    assert d.meta["psf_source"] == "psfex" and d.psf.shape[0] <= min(d.shape)
    # the model's FWHM agrees with the header's measured FWHM card (4.46 px) to within 10 %
    assert abs(d.fwhm_px / d.meta["header_fwhm"] - 1.0) < 0.10


def _nucleus_scorr(images, name: str) -> float:
    """Largest S_corr within 3 px of the galaxy nucleus on ``name``'s difference (border fixed at 8 px).

    The border is fixed so that both PSFs are compared on the same pixels: by default it is the radius of
    99.5 % of the broader PSF's flux, which for the PSFEx models (wings) is 20 px, all but one column of
    these 41-px cut-outs.
    """
    params = SubtractParams(zogy=ZogyParams(border_px=8))
    for group in _groups(images, 0.5):
        group = _calibrate_group(group, [])
        k = min(3, len(group) - 1)
        ref = coadd([m.data for m in group[:k]])
        for im in group[k:]:
            if name in im.name:
                res = subtract(im.data, ref, params=params)
                x, y = im.data.wcs.all_world2pix(
                    244.779701, 12.072358, 0
                )  # the nucleus (peak of the z images)
                ix, iy = round(float(x)), round(float(y))
                return float(res.score_corr[iy - 3 : iy + 4, ix - 3 : ix + 4].max())
    raise AssertionError(name)


@needs_tc3
def test_galaxy_nucleus_sightings_were_the_header_gaussian_psf() -> None:
    """The two good sightings on the testcase3 nucleus (2018 z and g) came mostly from the PSF model.

    Gaussians of the header FWHM (no wings): S_corr 16 (z) and 8 (g) at the nucleus. The survey's PSFEx
    models (what the pipeline now uses when they lie beside the images): 6 and 4, the g one below the
    detection threshold (README "Real pixels": the z remainder, and why it is not nuclear variability).
    """
    threshold = DetectParams().threshold
    with_psfex, _ = load_folder(TC3)
    header_only, _ = load_folder(TC3, psfex=False)
    s = {
        name: (_nucleus_scorr(header_only, name), _nucleus_scorr(with_psfex, name))
        for name in ("c4d_180218_090701_ooi_z", "c4d_180908_000426_ooi_g")
    }
    for name, (s_header, s_psfex) in s.items():
        assert s_header > threshold + 2.0 and s_psfex < 0.55 * s_header, (name, s_header, s_psfex)
    assert s["c4d_180908_000426_ooi_g"][1] < threshold
    r = evaluate_real_folder(TC3, n_rounds=1)
    assert r["good_sightings"] == 0 and all(f["psf_source"] == "psfex" for f in r["per_image"])
