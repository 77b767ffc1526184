"""The whole reduction of one raw CCD (its on-disk form is `seechange.imageio`'s four-file format)."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table

from seechange.imageio import header_wcs
from seechange.improc.astrometry import solve_astrometry
from seechange.improc.background import measure_background
from seechange.improc.calibrate import CalibFrames, calibrate, overscan_correct_and_trim
from seechange.improc.extract import extract_sources, noise_from_weight
from seechange.improc.psf import build_psf, header_fwhm_px, noise_equivalent_area
from seechange.improc.types import FLAG_COSMIC_RAY, ImageData
from seechange.improc.zeropoint import limiting_magnitude, zeropoint_from_stars
from seechange.parameters import StepParameters

__all__ = ["ReduceParams", "reduce_exposure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReduceParams(StepParameters):
    """Parameters of the reduce step (all of them are critical: they feed the provenance).

    Attributes
    ----------
    overscan_smooth_rows : int
        Running-median length along rows of the overscan model, rows.
    cosmic_rays : bool
        Flag cosmic rays.
    cr_sigclip, cr_objlim : float
        Cosmic-ray detector thresholds (Laplacian significance; contrast to fine structure). The
        Laplacian ``S = L+ / (sqrt(20) sigma)`` of a hit of ``a`` sigma per pixel is 0.89 a for one pixel
        but 0.67 a for a two-pixel track, whose matched-filter significance in the difference is about
        0.94 a at LS4's FWHM 2.5 px: tracks of 8 to 10 sigma per pixel are left at 6 (4 of the 11 LS4 and 2
        of the 3 DECam false positives of the simulated nights). 4.5 flagged 3 and 2 of them, but on a
        simulated z-band DECam night (sky 19,700 e-, ``tests/integration/test_reference_build.py``) it
        flagged 0.5 % of the pixels, left 2 to 5 sources per CCD and no zero point: kept at 6.
    cr_sigclip_prereduced : float
        Laplacian significance threshold for images that arrive reduced (resampled or interpolated
        products spread a hit over its neighbours; see `seechange.improc.prereduced`).
    cr_objlim_psf_factor : float
        For images that arrive reduced: the fine-structure contrast limit is this many times what a
        point source of the header FWHM gives (`seechange.improc.calibrate.point_source_fine_ratio`),
        never above ``cr_objlim``.
    saturation_grow : int
        Dilation of the saturated and bleed masks, pixels.
    bleed_fraction : float
        Fraction of saturation above which column-connected pixels are bleed trails.
    bkg_mesh : int
        Background mesh size, pixels.
    bkg_filter : int
        Background mesh median-filter size, meshes.
    detect_thresh : float
        Source detection threshold, sigma.
    detect_minarea : int
        Minimum source area, pixels.
    psf_size_factor : float
        PSF stamp size = this x FWHM, made odd, within [15, 41] pixels.
    psf_min_snr : float
        Minimum SNR of PSF stars.
    astrom_max_offset_arcsec : float
        Largest pointing error searched, arcsec.
    astrom_match_radius_arcsec : float
        Final matching radius, arcsec.
    astrom_sip_degree : int
        SIP degree (0 for pure TAN).
    zp_aperture_fwhm : float
        Zero-point aperture radius in units of the FWHM (large; an aperture correction from the PSF model is
        applied only if it is smaller than the stamp).
    zp_min_snr : float
        Minimum SNR of zero-point stars.
    """

    overscan_smooth_rows: int = 31
    cosmic_rays: bool = True
    cr_sigclip: float = 6.0
    cr_objlim: float = 4.0
    cr_sigclip_prereduced: float = 4.5
    cr_objlim_psf_factor: float = 3.0
    saturation_grow: int = 1
    bleed_fraction: float = 0.5
    bkg_mesh: int = 128
    bkg_filter: int = 3
    detect_thresh: float = 5.0
    detect_minarea: int = 5
    psf_size_factor: float = 8.0
    psf_min_snr: float = 50.0
    astrom_max_offset_arcsec: float = 10.0
    astrom_match_radius_arcsec: float = 1.0
    astrom_sip_degree: int = 2
    zp_aperture_fwhm: float = 4.0
    zp_min_snr: float = 20.0


def reduce_exposure(
    raw_data: np.ndarray,
    header: fits.Header,
    calib: CalibFrames,
    refcat: Table,
    *,
    params: ReduceParams,
    band: str | None = None,
) -> ImageData:
    """Reduce one raw CCD: overscan, calibration, flags, background, sources, PSF, WCS, zero point.

    Parameters
    ----------
    raw_data : ndarray
        Raw CCD, ADU (any byte order; not modified).
    header : astropy.io.fits.Header
        Raw header (amplifier sections and electronics, EXPTIME, MJD-OBS, FILTER, approximate TAN WCS of
        the trimmed grid).
    calib : CalibFrames
        Bias, dark, flat and bad-pixel mask of this CCD.
    refcat : astropy.table.Table
        Reference catalogue around the CCD (ra, dec, mag_<band>).
    params : ReduceParams
        Step parameters.
    band : str, optional
        Band (from the instrument's filter map, as ingest recorded it); default: the FILTER card's first
        letter.

    Returns
    -------
    ImageData
        Background-subtracted electrons, weight, flags, PSF, fitted WCS, zero point, FWHM (pixels),
        background level and rms (electrons), astrometric rms (arcsec), mid-exposure MJD, band, and ``meta``
        (n_stars, n_psf_stars, zp_err, zp_scatter, lim_mag, exptime, gain, read_noise, airmass, field,
        astrometry offset, timings in seconds per step).
    """
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = round(now - t0, 4)
        t0 = now

    exptime = float(header["EXPTIME"])
    if band is None:
        band = str(header.get("FILTER", " ")).strip()[:1]
    trimmed, amps = overscan_correct_and_trim(raw_data, header, smooth_rows=params.overscan_smooth_rows)
    lap("overscan")
    electrons, weight, flags = calibrate(
        trimmed,
        header,
        calib.bias,
        calib.dark,
        calib.flat,
        calib.bpm,
        exptime=exptime,
        cosmic_rays=params.cosmic_rays,
        cr_sigclip=params.cr_sigclip,
        cr_objlim=params.cr_objlim,
        saturation_grow=params.saturation_grow,
        bleed_fraction=params.bleed_fraction,
    )
    lap("calibrate")
    bkg = measure_background(electrons, flags=flags, mesh=params.bkg_mesh, filter_size=params.bkg_filter)
    image = electrons  # subtracted in place: the sky-level frame is not used again
    image -= bkg.map
    del electrons
    lap("background")
    noise = noise_from_weight(weight, fill=bkg.rms)
    sources = extract_sources(
        image, noise=noise, flags=flags, thresh=params.detect_thresh, minarea=params.detect_minarea
    )
    lap("extract")
    wcs = header_wcs(header, name=f"CCD {header.get('DETPOS', header.get('CCDNUM', '?'))}")
    wcs.pixel_shape = (image.shape[1], image.shape[0])
    scale = 3600.0 * float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    psf = build_psf(
        image,
        sources,
        size_factor=params.psf_size_factor,
        min_snr=params.psf_min_snr,
        fallback_fwhm=header_fwhm_px(header, scale),
    )
    lap("psf")
    astrom_rms, n_matched, offset = float("nan"), 0, (float("nan"), float("nan"))
    src_i = ref_i = np.zeros(0, int)
    try:
        res = solve_astrometry(
            sources,
            refcat,
            wcs,
            band=band,
            max_offset_arcsec=params.astrom_max_offset_arcsec,
            match_radius_arcsec=params.astrom_match_radius_arcsec,
            sip_degree=params.astrom_sip_degree or None,
        )
        wcs, astrom_rms, n_matched, offset = res.wcs, res.rms_arcsec, res.n_matched, res.offset_px
        src_i, ref_i = res.src_index, res.ref_index
    except RuntimeError as exc:
        warnings.warn(
            f"reduce_exposure: astrometry failed, keeping the header WCS: {exc}", RuntimeWarning, stacklevel=2
        )
    lap("astrometry")
    zp = zp_err = zp_scatter = float("nan")
    n_zp = 0
    mag_col = f"mag_{band}"
    if len(src_i) and mag_col in refcat.colnames:
        radius = params.zp_aperture_fwhm * psf.fwhm_px
        x, y = np.asarray(sources["x"])[src_i], np.asarray(sources["y"])[src_i]
        mags = np.asarray(refcat[mag_col], float)[ref_i]
        z = zeropoint_from_stars(
            image,
            x,
            y,
            mags,
            radius=radius,
            psf=psf.stamp,
            noise=noise,
            flags=flags,
            min_snr=params.zp_min_snr,
        )
        zp, zp_err, zp_scatter, n_zp = z.zp, z.zp_err, z.scatter, z.n_used
    lim_mag = limiting_magnitude(zp, bkg.rms, noise_equivalent_area(psf.stamp))
    lap("zeropoint")
    timings["total"] = round(time.perf_counter() - t_all, 4)
    meta = {
        "n_sources": len(sources),
        "n_stars": int(n_matched),
        "n_zp_stars": int(n_zp),
        "n_psf_stars": int(psf.n_stars),
        "psf_source": psf.source,
        "zp_err": zp_err,
        "zp_scatter": zp_scatter,
        "lim_mag": lim_mag,
        "exptime": exptime,
        "gain": float(np.mean([a.gain for a in amps])),
        "read_noise": float(np.mean([a.read_noise for a in amps])),
        "airmass": float(header.get("AIRMASS", float("nan"))),
        "field": str(header.get("OBJECT", "")),
        "astrom_offset_px": [float(offset[0]), float(offset[1])],
        "overscan_levels": {a.name: a.overscan_level for a in amps},
        "n_cosmic_ray_px": int(np.count_nonzero(flags & FLAG_COSMIC_RAY)),
        "timings": timings,
    }
    mjd = float(header.get("MJD-OBS", 0.0)) + exptime / 2.0 / 86400.0
    return ImageData(
        image=image.astype(np.float32, copy=False),
        weight=weight,
        flags=flags,
        psf=psf.stamp,
        wcs=wcs,
        zp=zp,
        fwhm_px=psf.fwhm_px,
        bkg_level=bkg.level,
        bkg_rms=bkg.rms,
        astrom_rms_arcsec=astrom_rms,
        mjd=mjd,
        band=band,
        meta=meta,
    )
