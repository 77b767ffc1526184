"""Photometric zero point against a reference catalogue, and the limiting magnitude."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import sep
from astropy.stats import sigma_clip

from seechange.improc.psf import aperture_fraction

__all__ = ["ZeroPoint", "aperture_flux", "fit_zeropoint", "limiting_magnitude"]


@dataclass(frozen=True)
class ZeroPoint:
    """Result of `fit_zeropoint`.

    Attributes
    ----------
    zp : float
        AB zero point, ``mag = -2.5 log10(flux_e) + zp`` (NaN when no star was usable).
    zp_err : float
        Uncertainty of the zero point (robust scatter / sqrt(n)), mag.
    scatter : float
        Robust (MAD) scatter of the individual star zero points, mag.
    n_used : int
        Stars kept after clipping.
    """

    zp: float
    zp_err: float
    scatter: float
    n_used: int


def aperture_flux(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: float,
    *,
    noise: np.ndarray | float,
    flags: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circular-aperture flux with sep.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image, electrons (not modified).
    x, y : ndarray
        0-based pixel centres.
    radius : float
        Aperture radius, pixels.
    noise : ndarray or float
        1-sigma noise per pixel, electrons.
    flags : ndarray, optional
        Non-zero pixels are masked (and the source is flagged by sep).

    Returns
    -------
    flux, flux_err : ndarray
        Electrons.
    flag : ndarray of int
        sep photometry flags (non-zero when masked pixels or the image edge fall in the aperture).
    """
    data = np.ascontiguousarray(image, dtype=np.float32)
    err = noise if np.ndim(noise) == 0 else np.ascontiguousarray(noise, dtype=np.float32)
    mask = None if flags is None else np.asarray(flags) != 0
    flux, ferr, flag = sep.sum_circle(
        data, np.asarray(x, float), np.asarray(y, float), radius, err=err, mask=mask, subpix=5
    )
    return flux, ferr, flag.astype(np.int32)


def fit_zeropoint(
    flux_e: np.ndarray,
    flux_err: np.ndarray,
    mag_ref: np.ndarray,
    *,
    aperture_correction: float = 1.0,
    min_snr: float = 20.0,
    clip_sigma: float = 3.0,
) -> ZeroPoint:
    """Zero point ``median(mag_ref + 2.5 log10(flux / aperture_correction))`` with sigma clipping.

    Parameters
    ----------
    flux_e, flux_err : ndarray
        Instrumental fluxes of the matched stars and errors, electrons.
    mag_ref : ndarray
        Reference AB magnitudes of the same stars.
    aperture_correction : float, optional
        Fraction of a point source's total flux inside the measurement aperture (from the PSF model; 1 for a
        large aperture).
    min_snr : float, optional
        Stars below this flux SNR are ignored.
    clip_sigma : float, optional
        Clipping threshold (median / MAD based).

    Returns
    -------
    ZeroPoint
        NaN zero point, with a warning, when fewer than 3 stars are usable.
    """
    f = np.asarray(flux_e, float)
    fe = np.asarray(flux_err, float)
    m = np.asarray(mag_ref, float)
    if not 0 < aperture_correction <= 1.5:
        raise ValueError(f"aperture_correction must be in (0, 1.5], got {aperture_correction}")
    ok = np.isfinite(f) & np.isfinite(fe) & np.isfinite(m) & (f > 0) & (fe > 0)
    ok[ok] &= f[ok] / fe[ok] >= min_snr
    if ok.sum() < 3:
        warnings.warn(f"fit_zeropoint: only {int(ok.sum())} usable stars", RuntimeWarning, stacklevel=2)
        return ZeroPoint(zp=float("nan"), zp_err=float("nan"), scatter=float("nan"), n_used=int(ok.sum()))
    zps = m[ok] + 2.5 * np.log10(f[ok] / aperture_correction)
    clipped = sigma_clip(zps, sigma=clip_sigma, maxiters=5, cenfunc="median", stdfunc="mad_std")
    kept = np.asarray(clipped.compressed())
    zp = float(np.median(kept))
    scatter = float(1.4826 * np.median(np.abs(kept - zp)))
    # error of the median: 1.2533 sigma / sqrt(n)
    zp_err = float(1.2533 * scatter / np.sqrt(len(kept)))
    return ZeroPoint(zp=zp, zp_err=zp_err, scatter=scatter, n_used=len(kept))


def zeropoint_from_stars(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ref_mag: np.ndarray,
    *,
    radius: float,
    psf: np.ndarray,
    noise: np.ndarray | float,
    flags: np.ndarray | None,
    min_snr: float,
) -> ZeroPoint:
    """Zero point from aperture photometry of stars matched to a reference catalogue.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image, electrons.
    x, y : ndarray
        0-based pixel positions of the matched stars.
    ref_mag : ndarray
        Their catalogue magnitudes (AB) in the image's band.
    radius : float
        Aperture radius, pixels; when it is smaller than the PSF stamp the fluxes are corrected by the PSF's
        enclosed fraction.
    psf : ndarray
        Normalised PSF stamp.
    noise, flags
        As for :func:`aperture_flux`; stars with flagged apertures are left out.
    min_snr : float
        Minimum SNR of the stars used.

    Returns
    -------
    ZeroPoint
        See :func:`fit_zeropoint`.
    """
    f, fe, fflag = aperture_flux(image, x, y, radius, noise=noise, flags=flags)
    apcor = aperture_fraction(psf, radius) if radius < psf.shape[0] // 2 else 1.0
    ok = fflag == 0
    return fit_zeropoint(
        f[ok], fe[ok], np.asarray(ref_mag, float)[ok], aperture_correction=apcor, min_snr=min_snr
    )


def limiting_magnitude(zp: float, bkg_rms: float, nea_px: float, *, nsigma: float = 5.0) -> float:
    """Magnitude of a point source detected at ``nsigma`` by PSF photometry on a sky-limited image.

    Parameters
    ----------
    zp : float
        AB zero point.
    bkg_rms : float
        Background noise per pixel, electrons.
    nea_px : float
        PSF noise-equivalent area ``1 / sum(psf**2)``, pixels.
    nsigma : float, optional
        Detection significance.

    Returns
    -------
    float
        ``zp - 2.5 log10(nsigma * bkg_rms * sqrt(nea_px))``.
    """
    if not (bkg_rms > 0 and nea_px > 0):
        return float("nan")
    return float(zp - 2.5 * np.log10(nsigma * bkg_rms * np.sqrt(nea_px)))
