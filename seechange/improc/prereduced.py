"""Load an image that arrives already reduced (e.g. NOIRLab Community Pipeline image/weight/mask triplets).

The header WCS is kept as it is (astropy reads TPV by translating it to a wcslib polynomial distortion, and
SIP through ``-SIP`` ctypes), the image is converted to electrons, the background is re-measured and removed,
and the PSF, FWHM and (when needed) zero point are measured here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage

from seechange.imageio import header_wcs, read_ccd
from seechange.improc.astrometry import find_offset, match_xy
from seechange.improc.background import measure_background
from seechange.improc.calibrate import detect_cosmic_rays, point_source_fine_ratio
from seechange.improc.extract import extract_sources, noise_from_weight
from seechange.improc.psf import build_psf, header_fwhm_px, noise_equivalent_area, psfex_psf
from seechange.improc.reduction import ReduceParams
from seechange.improc.types import FLAG_BAD, FLAG_COSMIC_RAY, FLAG_EDGE, FLAG_SATURATED, ImageData
from seechange.improc.zeropoint import limiting_magnitude, zeropoint_from_stars

__all__ = ["flag_cosmic_rays", "load_prereduced"]

log = logging.getLogger(__name__)

_ZP_CARDS = ("MAGZERO", "MAGZPT", "ZP")


def _gain(header: fits.Header) -> float:
    """Electrons per image unit: 1 if BUNIT says electrons, else GAIN (or the mean of GAINA/GAINB)."""
    bunit = str(header.get("BUNIT", "")).strip().lower()
    if bunit.startswith("electron") or bunit in ("e-", "e"):
        return 1.0
    if "GAIN" in header:
        return float(header["GAIN"])
    amps = [float(header[k]) for k in ("GAINA", "GAINB") if k in header]
    if amps:
        return float(np.mean(amps))
    warnings.warn(
        "load_prereduced: no GAIN/BUNIT in the header, assuming electrons", RuntimeWarning, stacklevel=3
    )
    return 1.0


def mask_flags(mask: np.ndarray, codes: Mapping[int, int] | None = None) -> np.ndarray:
    """Our flag bits from an integer mask: non-zero = FLAG_BAD, or per ``codes`` (value -> flag bits).

    With ``codes``, a non-zero value that is not in them is flagged bad and counted in one log line.
    """
    m = np.asarray(mask)
    if codes is None:
        return np.where(m != 0, np.uint16(FLAG_BAD), np.uint16(0))
    out = np.zeros(m.shape, np.uint16)
    known = np.zeros(m.shape, bool)
    for value, bits in codes.items():
        hit = m == value
        out[hit] |= np.uint16(bits)
        known |= hit
    unknown = ~known & (m != 0)
    if unknown.any():
        log.warning(
            "mask: %d pixels with values %s outside the known codes; flagged bad",
            int(unknown.sum()),
            sorted(int(v) for v in np.unique(m[unknown]))[:10],
        )
        out[unknown] |= np.uint16(FLAG_BAD)
    return out


def load_prereduced(
    image_path: Path,
    *,
    weight_path: Path | None = None,
    mask_path: Path | None = None,
    psf_path: Path | None = None,
    refcat: Table | None = None,
    params: ReduceParams,
    gain: float | None = None,
    mask_codes: Mapping[int, int] | None = None,
    hdu: int | str | None = None,
    weight_hdu: int | str | None = None,
    mask_hdu: int | str | None = None,
) -> ImageData:
    """Turn an already-reduced image (plus optional weight and mask) into an `ImageData`.

    Parameters
    ----------
    image_path : Path
        FITS image (first 2-D HDU), in ADU unless ``BUNIT`` says electrons.
    weight_path : Path, optional
        Inverse-variance map in the image's units (ADU^-2); converted to electrons^-2. Without it the weight
        is ``1 / (background rms map^2 + source electrons)``.
    mask_path : Path, optional
        Integer mask: non-zero = bad (FLAG_BAD), or coded per ``mask_codes``.
    psf_path : Path, optional
        PSFEx model of the CCD (the survey's, fitted on the whole CCD): the PSF is that model at the image's
        centre (`~seechange.improc.psf.psfex_psf`, row chosen by ``DETPOS``/``EXTNAME``, at most the image's
        size), not one built from the image's stars or the header FWHM (``meta["psf_source"] = "psfex"``).
    refcat : astropy.table.Table, optional
        Reference catalogue (ra, dec, mag_<band>) for the zero point when the header has none
        (``MAGZERO``, ``MAGZPT`` or ``ZP``, taken to apply to the image's own units).
    params : ReduceParams
        Background mesh, detection threshold, PSF and matching parameters.
    gain : float, optional
        Electrons per image unit; default from ``BUNIT``/``GAIN``/``GAINA``+``GAINB``.
    mask_codes : mapping of int to int, optional
        Mask value -> our flag bits (e.g. ``seechange.instruments.decam.CP_MASK_CODES`` for a Community
        Pipeline ``ood`` mask); values not in it are flagged bad.
    hdu, weight_hdu, mask_hdu : int or str, optional
        HDU (index or EXTNAME) of the CCD in each multi-extension file; default: the first 2-D image HDU.

    Returns
    -------
    ImageData
        Background-subtracted electrons, weight (e-^-2), flags (bad from the mask, saturated above
        ``ESATUR``/``SATURATE``, edge where the image is not finite or the weight is 0), PSF, header WCS,
        zero point for electrons (NaN with a warning when unknown), FWHM (pixels), background level and
        rms (electrons), ``astrom_rms_arcsec`` of the header WCS against the refcat (NaN without one).
    """
    ccd = read_ccd(Path(image_path), hdu)
    data, header = ccd.data, ccd.header
    g = float(gain) if gain is not None else _gain(header)
    flags = np.zeros(data.shape, np.uint16)
    flags[~np.isfinite(data)] |= FLAG_EDGE
    sat = header.get("ESATUR", header.get("SATURATE"))
    if sat is not None:
        flags[np.nan_to_num(data, nan=-np.inf) >= float(sat)] |= FLAG_SATURATED
    if mask_path is not None:
        m = read_ccd(Path(mask_path), mask_hdu, dtype=None).data
        flags |= mask_flags(m, mask_codes)
    electrons = np.where(np.isfinite(data), data, 0).astype(np.float32) * np.float32(g)
    bkg = measure_background(
        electrons,
        flags=flags,
        mesh=min(params.bkg_mesh, max(16, min(data.shape) // 4)),
        filter_size=params.bkg_filter,
    )
    image = (electrons - bkg.map).astype(np.float32)
    if weight_path is not None:
        w_in = read_ccd(Path(weight_path), weight_hdu).data
        weight = np.where(np.isfinite(w_in) & (w_in > 0), w_in, 0).astype(np.float32) / np.float32(g * g)
        flags[weight <= 0] |= FLAG_EDGE
    else:
        weight = 1.0 / (bkg.rms_map.astype(np.float32) ** 2 + np.maximum(image, 0))
    weight[flags != 0] = 0
    weight = weight.astype(np.float32)
    wcs = header_wcs(header, name=Path(image_path).name)
    wcs.pixel_shape = (data.shape[1], data.shape[0])
    scale = 3600.0 * float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    n_cr = flag_cosmic_rays(image, weight, flags, bkg.rms, header, params, header_fwhm_px(header, scale))
    noise = noise_from_weight(weight, fill=bkg.rms)
    sources = extract_sources(
        image, noise=noise, flags=flags, thresh=params.detect_thresh, minarea=params.detect_minarea
    )
    if psf_path is not None:
        ccd_name = str(header.get("DETPOS", header.get("EXTNAME", ""))).strip() or None
        ny, nx = data.shape
        odd = min(ny, nx) if min(ny, nx) % 2 else min(ny, nx) - 1
        psf = psfex_psf(psf_path, x=(nx - 1) / 2.0, y=(ny - 1) / 2.0, ccd=ccd_name, max_size=odd)
    else:
        psf = build_psf(
            image,
            sources,
            size_factor=params.psf_size_factor,
            min_snr=params.psf_min_snr,
            min_stars=3,
            fallback_fwhm=header_fwhm_px(header, scale),
        )
    band = str(header.get("FILTER", " ")).strip()[:1]
    zp, zp_err, astrom_rms, n_stars = float("nan"), float("nan"), float("nan"), 0
    zp_card = next((k for k in _ZP_CARDS if k in header), None)
    if zp_card is not None:
        zp = float(header[zp_card]) + 2.5 * np.log10(g)  # card is for image units; ours is for electrons
    if refcat is not None and len(refcat) and len(sources):
        zpm, zp_err, astrom_rms, n_stars = _refcat_calibration(
            image, sources, refcat, wcs, band, psf.stamp, psf.fwhm_px, noise, flags, params
        )
        if zp_card is None:
            zp = zpm
    if not np.isfinite(zp):
        warnings.warn(f"load_prereduced: no zero point for {image_path}", RuntimeWarning, stacklevel=2)
    exptime = float(header.get("EXPTIME", 0.0))
    meta = {
        "n_sources": len(sources),
        "n_stars": n_stars,
        "n_psf_stars": psf.n_stars,
        "psf_source": psf.source,
        "n_cosmic_ray_px": n_cr,
        "zp_err": zp_err,
        "zp_source": zp_card or ("refcat" if np.isfinite(zp) else "none"),
        "lim_mag": limiting_magnitude(zp, bkg.rms, noise_equivalent_area(psf.stamp)),
        "exptime": exptime,
        "gain": g,
        "airmass": float(header.get("AIRMASS", float("nan"))),
        "field": str(header.get("OBJECT", "")),
        "header_fwhm": float(header["FWHM"]) if "FWHM" in header else float("nan"),
    }
    return ImageData(
        image=image,
        weight=weight,
        flags=flags,
        psf=psf.stamp,
        wcs=wcs,
        zp=float(zp),
        fwhm_px=psf.fwhm_px,
        bkg_level=bkg.level,
        bkg_rms=bkg.rms,
        astrom_rms_arcsec=astrom_rms,
        mjd=float(header.get("MJD-OBS", 0.0)) + exptime / 2.0 / 86400.0,
        band=band,
        meta=meta,
    )


def flag_cosmic_rays(
    image: np.ndarray,
    weight: np.ndarray,
    flags: np.ndarray,
    sky_rms: float,
    header: fits.Header,
    params: ReduceParams,
    fwhm_px: float = float("nan"),
) -> int:
    """Flag cosmic rays that the input mask did not (in place: flags |= FLAG_COSMIC_RAY, weight = 0).

    Pre-reduced images often come with a mask that marks bad pixels and saturation but not cosmic rays (or
    not all of them): measured on the real null pair of ``decam-sfft``, unflagged cosmic rays were most of
    the false positives. Skipped for stacks (``NCOMBINE`` > 1: the combination removed them) and when
    ``params.cosmic_rays`` is off. The Laplacian threshold is ``params.cr_sigclip_prereduced`` (4.5, not
    the raw images' 6): resampled and interpolated products spread a hit over neighbours, and measured on
    the real decam-sfft frames the 4 to 8 sigma tracks that 6 left made most false positives (18d: 6 good
    sightings at 6, 1 plus the real transient at 4.5). The fine-structure contrast ``objlim`` is
    relative to the PSF when the header gives its FWHM (``fwhm_px``): ``params.cr_objlim_psf_factor``
    times what a point source of that FWHM gives (`point_source_fine_ratio`), never above
    ``params.cr_objlim``: resampling spreads a hit over two pixels, which raises the 3x3 median that
    protects stars and left hits of contrast 1.1 to 3.2 unflagged (decam-sfft 04e: a cosmic-ray track
    seen as an SNR 19 good sighting; 18d: a two-pixel hit of SNR 8.8), while a star of FWHM 3.8 px gives
    0.28. Returns the number of pixels flagged now. The one cosmic-ray path of every pre-reduced image:
    the pipeline's loader and the ``decam-sfft`` layout of ``evaluate real`` both call it.
    """
    if not params.cosmic_rays or int(header.get("NCOMBINE", 1) or 1) > 1:
        return 0
    with np.errstate(divide="ignore"):
        var = np.where(weight > 0, 1.0 / weight, sky_rms**2 + np.maximum(image, 0)).astype(np.float32)
    objlim = params.cr_objlim
    star = point_source_fine_ratio(fwhm_px)
    if np.isfinite(star) and star > 0:
        objlim = min(objlim, params.cr_objlim_psf_factor * star)
    cr = detect_cosmic_rays(
        image, var, sigclip=params.cr_sigclip_prereduced, objlim=objlim, exclude=(flags != 0)
    )
    # one pixel of growth: the faint edges of a hit, spread by the resampling or interpolation of the
    # product, left 15 to 18 sigma remainders (decam-sfft 04e) that were detected as good sightings
    cr = ndimage.binary_dilation(cr, iterations=1) & (flags == 0)
    flags[cr] |= FLAG_COSMIC_RAY
    weight[cr] = 0
    return int(np.count_nonzero(cr))


def _refcat_calibration(
    image: np.ndarray,
    sources: Table,
    refcat: Table,
    wcs,
    band: str,
    psf: np.ndarray,
    fwhm: float,
    noise: np.ndarray,
    flags: np.ndarray,
    params: ReduceParams,
) -> tuple[float, float, float, int]:
    """Match to the refcat through the header WCS; zero point (electrons), its error, WCS rms, n matched."""
    ok = (np.asarray(sources["flag"]) < 4) & (np.asarray(sources["snr"]) >= 10)
    idx = np.nonzero(ok)[0]
    sxy = np.column_stack([np.asarray(sources["x"])[idx], np.asarray(sources["y"])[idx]])
    rx, ry = wcs.all_world2pix(np.asarray(refcat["ra"], float), np.asarray(refcat["dec"], float), 0)
    rxy = np.column_stack([rx, ry])
    scale = 3600.0 * np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))
    dx, dy, _ = find_offset(sxy, rxy, max_offset_px=params.astrom_max_offset_arcsec / scale)
    i, j = match_xy(sxy + [dx, dy], rxy, params.astrom_match_radius_arcsec / scale)
    if len(i) < 3:
        return float("nan"), float("nan"), float("nan"), len(i)
    d = np.hypot(*(sxy[i] - rxy[j]).T) * scale
    astrom_rms = float(np.sqrt(np.mean(d**2)))
    mag_col = f"mag_{band}"
    if mag_col not in refcat.colnames:
        return float("nan"), float("nan"), astrom_rms, len(i)
    radius = params.zp_aperture_fwhm * fwhm
    mags = np.asarray(refcat[mag_col], float)[j]
    z = zeropoint_from_stars(
        image,
        sxy[i, 0],
        sxy[i, 1],
        mags,
        radius=radius,
        psf=psf,
        noise=noise,
        flags=flags,
        min_snr=params.zp_min_snr,
    )
    return z.zp, z.zp_err, astrom_rms, len(i)
