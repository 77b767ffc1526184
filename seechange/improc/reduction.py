"""The whole reduction of one raw CCD, and the four-file (image, weight, flags, psf) on-disk form."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from seechange.improc.astrometry import solve_astrometry
from seechange.improc.background import measure_background
from seechange.improc.calibrate import CalibFrames, calibrate, overscan_correct_and_trim
from seechange.improc.extract import extract_sources, noise_from_weight
from seechange.improc.psf import aperture_fraction, build_psf, noise_equivalent_area
from seechange.improc.types import FLAG_COSMIC_RAY, ImageData
from seechange.improc.zeropoint import aperture_flux, fit_zeropoint, limiting_magnitude
from seechange.parameters import StepParameters

__all__ = ["ReduceParams", "header_wcs", "read_image_data", "read_image_pixels", "reduce_exposure", "write_image_data"]

log = logging.getLogger(__name__)

_SUFFIXES = ("image", "weight", "flags", "psf")


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
        Cosmic-ray detector thresholds (Laplacian significance; contrast to fine structure).
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


def header_wcs(header: fits.Header) -> WCS:
    """Celestial WCS of a header with its pixel shape set (FITS fix-up warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    if "NAXIS1" in header and "NAXIS2" in header:
        wcs.pixel_shape = (int(header["NAXIS1"]), int(header["NAXIS2"]))
    return wcs


def reduce_exposure(
    raw_data: np.ndarray, header: fits.Header, calib: CalibFrames, refcat: Table, *, params: ReduceParams
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
    band = str(header.get("FILTER", " ")).strip()[:1]
    trimmed, amps = overscan_correct_and_trim(raw_data, header, smooth_rows=params.overscan_smooth_rows)
    lap("overscan")
    electrons, weight, flags = calibrate(
        trimmed, header, calib.bias, calib.dark, calib.flat, calib.bpm, exptime=exptime,
        cosmic_rays=params.cosmic_rays, cr_sigclip=params.cr_sigclip, cr_objlim=params.cr_objlim,
        saturation_grow=params.saturation_grow, bleed_fraction=params.bleed_fraction,
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
    psf = build_psf(image, sources, size_factor=params.psf_size_factor, min_snr=params.psf_min_snr)
    lap("psf")
    wcs = header_wcs(header)
    wcs.pixel_shape = (image.shape[1], image.shape[0])
    astrom_rms, n_matched, offset = float("nan"), 0, (float("nan"), float("nan"))
    src_i = ref_i = np.zeros(0, int)
    try:
        res = solve_astrometry(
            sources, refcat, wcs, band=band, max_offset_arcsec=params.astrom_max_offset_arcsec,
            match_radius_arcsec=params.astrom_match_radius_arcsec,
            sip_degree=params.astrom_sip_degree or None,
        )
        wcs, astrom_rms, n_matched, offset = res.wcs, res.rms_arcsec, res.n_matched, res.offset_px
        src_i, ref_i = res.src_index, res.ref_index
    except RuntimeError as exc:
        warnings.warn(f"reduce_exposure: astrometry failed, keeping the header WCS: {exc}", RuntimeWarning,
                      stacklevel=2)
    lap("astrometry")
    zp = zp_err = zp_scatter = float("nan")
    n_zp = 0
    mag_col = f"mag_{band}"
    if len(src_i) and mag_col in refcat.colnames:
        radius = params.zp_aperture_fwhm * psf.fwhm_px
        x, y = np.asarray(sources["x"])[src_i], np.asarray(sources["y"])[src_i]
        f, fe, fflag = aperture_flux(image, x, y, radius, noise=noise, flags=flags)
        half = psf.stamp.shape[0] // 2
        apcor = aperture_fraction(psf.stamp, radius) if radius < half else 1.0
        ok = fflag == 0
        z = fit_zeropoint(f[ok], fe[ok], np.asarray(refcat[mag_col], float)[ref_i][ok],
                          aperture_correction=apcor, min_snr=params.zp_min_snr)
        zp, zp_err, zp_scatter, n_zp = z.zp, z.zp_err, z.scatter, z.n_used
    lim_mag = limiting_magnitude(zp, bkg.rms, noise_equivalent_area(psf.stamp))
    lap("zeropoint")
    timings["total"] = round(time.perf_counter() - t_all, 4)
    meta = {
        "n_sources": len(sources), "n_stars": int(n_matched), "n_zp_stars": int(n_zp),
        "n_psf_stars": int(psf.n_stars), "zp_err": zp_err, "zp_scatter": zp_scatter, "lim_mag": lim_mag,
        "exptime": exptime, "gain": float(np.mean([a.gain for a in amps])),
        "read_noise": float(np.mean([a.read_noise for a in amps])),
        "airmass": float(header.get("AIRMASS", float("nan"))), "field": str(header.get("OBJECT", "")),
        "astrom_offset_px": [float(offset[0]), float(offset[1])],
        "overscan_levels": {a.name: a.overscan_level for a in amps},
        "n_cosmic_ray_px": int(np.count_nonzero(flags & FLAG_COSMIC_RAY)), "timings": timings,
    }
    mjd = float(header.get("MJD-OBS", 0.0)) + exptime / 2.0 / 86400.0
    return ImageData(
        image=image.astype(np.float32, copy=False), weight=weight, flags=flags, psf=psf.stamp, wcs=wcs,
        zp=zp, fwhm_px=psf.fwhm_px, bkg_level=bkg.level, bkg_rms=bkg.rms, astrom_rms_arcsec=astrom_rms,
        mjd=mjd, band=band, meta=meta,
    )


def _atomic_write(path: Path, hdu: fits.PrimaryHDU) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        hdu.writeto(tmp, overwrite=True, checksum=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _scalars(data: ImageData) -> dict[str, Any]:
    return {"zp": data.zp, "fwhm_px": data.fwhm_px, "bkg_level": data.bkg_level, "bkg_rms": data.bkg_rms,
            "astrom_rms_arcsec": data.astrom_rms_arcsec, "mjd": data.mjd, "band": data.band}


def write_image_data(stem: Path, data: ImageData, header_extra: dict[str, Any]) -> None:
    """Write ``<stem>.image.fits``, ``.weight.fits``, ``.flags.fits`` and ``.psf.fits`` atomically.

    Parameters
    ----------
    stem : Path
        Path without the suffixes, e.g. ``reduced/<prov8>/<expname>_<ccd>``; the folder is created.
    data : ImageData
        What to write.
    header_extra : dict
        Extra cards (FITS keyword -> value) for the image header, e.g. provenance and exposure ids.

    Notes
    -----
    The image header carries the WCS and readable ZP, FWHM, BKGLEV, BKGRMS, ASTRMS, LIMMAG, MJD-OBS and
    BAND cards; the exact values (and ``meta``) are also kept as JSON in a ``SCMETA`` card, from which
    `read_image_data` restores them bit for bit. Each file is written to a temporary name in the same
    folder and renamed into place.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    hdr = data.wcs.to_header(relax=True)
    cards = {"ZP": (data.zp, "AB zero point: mag = -2.5 log10(flux_e) + ZP"),
             "FWHM": (data.fwhm_px, "[pixel] PSF FWHM"),
             "BKGLEV": (data.bkg_level, "[e-] background removed"),
             "BKGRMS": (data.bkg_rms, "[e-] background rms"),
             "ASTRMS": (data.astrom_rms_arcsec, "[arcsec] astrometric rms"),
             "LIMMAG": (data.meta.get("lim_mag", float("nan")), "5-sigma point-source limit, AB"),
             "MJD-OBS": (data.mjd, "[d] mid-exposure MJD"), "BAND": (data.band, "filter band"),
             "BUNIT": ("electron", "background-subtracted")}
    for key, (value, comment) in cards.items():
        hdr[key] = (value if not (isinstance(value, float) and not np.isfinite(value)) else "NaN", comment)
    for key, value in header_extra.items():
        hdr[key] = value
    hdr["SCMETA"] = json.dumps({"scalars": _scalars(data), "meta": data.meta}, default=_json_default)
    whdr = data.wcs.to_header(relax=True)
    whdr["BUNIT"] = "electron-2"
    fhdr = data.wcs.to_header(relax=True)
    fhdr["FLAGBITS"] = "1 bad, 2 saturated, 4 cosmic ray, 8 bleed, 16 edge"
    phdr = fits.Header()
    phdr["FWHM"] = (data.fwhm_px, "[pixel]")
    jobs = [(f"{stem}.image.fits", fits.PrimaryHDU(np.asarray(data.image, np.float32), hdr)),
            (f"{stem}.weight.fits", fits.PrimaryHDU(np.asarray(data.weight, np.float32), whdr)),
            (f"{stem}.flags.fits", fits.PrimaryHDU(np.asarray(data.flags, np.uint16), fhdr)),
            (f"{stem}.psf.fits", fits.PrimaryHDU(np.asarray(data.psf, np.float32), phdr))]
    # two threads: byte swapping, checksums and file writes release the GIL (0.45 s -> 0.25 s here)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(_atomic_write, Path(path), hdu) for path, hdu in jobs]:
            f.result()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in SCMETA")


def _read_image_file(stem: Path) -> tuple[np.ndarray, WCS, dict[str, Any]]:
    """Pixels (native float32), WCS and the scalar fields of ``<stem>.image.fits``."""
    with fits.open(f"{stem}.image.fits", memmap=False) as hdul:
        hdr = hdul[0].header
        image = np.asarray(hdul[0].data, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(hdr, relax=True).celestial
    wcs.pixel_shape = (image.shape[1], image.shape[0])
    stored = json.loads(hdr["SCMETA"]) if "SCMETA" in hdr else {"scalars": {}, "meta": {}}
    sc = stored["scalars"]

    def _card(key: str, card: str, default: Any) -> Any:
        if key in sc:
            return sc[key]
        v = hdr.get(card, default)
        return float("nan") if v == "NaN" else v

    fields: dict[str, Any] = {
        "zp": float(_card("zp", "ZP", np.nan)), "fwhm_px": float(_card("fwhm_px", "FWHM", np.nan)),
        "bkg_level": float(_card("bkg_level", "BKGLEV", np.nan)),
        "bkg_rms": float(_card("bkg_rms", "BKGRMS", np.nan)),
        "astrom_rms_arcsec": float(_card("astrom_rms_arcsec", "ASTRMS", np.nan)),
        "mjd": float(_card("mjd", "MJD-OBS", 0.0)), "band": str(_card("band", "BAND", "")), "meta": stored["meta"],
    }
    return image, wcs, fields


def read_image_data(stem: Path) -> ImageData:
    """Read the four files written by `write_image_data` back into an `ImageData` (native byte order).

    Parameters
    ----------
    stem : Path
        Path without the ``.image.fits`` etc. suffixes.

    Returns
    -------
    ImageData
    """
    stem = Path(stem)
    image, wcs, fields = _read_image_file(stem)
    weight = np.asarray(fits.getdata(f"{stem}.weight.fits"), dtype=np.float32)
    flags = np.asarray(fits.getdata(f"{stem}.flags.fits"), dtype=np.uint16)
    psf = np.asarray(fits.getdata(f"{stem}.psf.fits"), dtype=np.float32)
    return ImageData(image=image, weight=weight, flags=flags, psf=psf, wcs=wcs, **fields)


def read_image_pixels(stem: Path, *, flags: np.ndarray | None = None) -> ImageData:
    """Only ``<stem>.image.fits`` of what `write_image_data` wrote: pixels, WCS and scalars.

    For readers that need the pixels but not the weight, flags or PSF (one full-frame file instead of
    three). ``weight`` is a read-only array of ones (a zero-stride view, no memory), ``psf`` a 1x1 stamp,
    and ``flags`` the given array (e.g. a superset computed downstream) or read-only zeros.
    """
    stem = Path(stem)
    image, wcs, fields = _read_image_file(stem)
    ones = np.broadcast_to(np.float32(1.0), image.shape)
    if flags is None:
        flags = np.broadcast_to(np.uint16(0), image.shape)
    return ImageData(image=image, weight=ones, flags=flags, psf=np.ones((1, 1), np.float32), wcs=wcs, **fields)
