"""Plain data shared by the image-processing steps (no database, no Kafka)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS


@dataclass
class ImageData:
    """A calibrated image with everything the later steps need.

    Attributes
    ----------
    image : ndarray, float32
        Background-subtracted pixels, electrons.
    weight : ndarray, float32
        Inverse variance, electrons^-2; 0 where flagged.
    flags : ndarray, uint16
        Bit mask (1 bad, 2 saturated, 4 cosmic ray, 8 bleed, 16 edge/no data).
    psf : ndarray, float32
        Normalised, odd-sized, centred PSF stamp.
    wcs : astropy.wcs.WCS
        Celestial WCS of the pixel grid (0-based pixel convention when used through astropy).
    zp : float
        AB zero point: mag = -2.5 log10(flux_e) + zp.
    fwhm_px : float
        PSF FWHM, pixels.
    bkg_level : float
        Median background removed, electrons.
    bkg_rms : float
        Robust rms of the background, electrons.
    astrom_rms_arcsec : float
        RMS of matched reference-star positions after the WCS fit, arcsec (per axis combined).
    mjd : float
        Mid-exposure MJD (for coadds: mean of the inputs).
    band : str
        One-letter filter band.
    meta : dict
        Anything else worth recording (n stars matched, zp error, limiting magnitude, ...).
    """

    image: np.ndarray
    weight: np.ndarray
    flags: np.ndarray
    psf: np.ndarray
    wcs: WCS
    zp: float
    fwhm_px: float
    bkg_level: float
    bkg_rms: float
    astrom_rms_arcsec: float = 0.0
    mjd: float = 0.0
    band: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]


FLAG_BAD = 1
FLAG_SATURATED = 2
FLAG_COSMIC_RAY = 4
FLAG_BLEED = 8
FLAG_EDGE = 16


def pixels_where(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero(mask)`` of a 2-D mask, the same arrays in the same order, about 10x faster on a sparse
    full-frame mask (NumPy's 2-D ``nonzero`` costs 12 ms on a 2048x4096 bool array, the flat one 1 ms).

    Parameters
    ----------
    mask : ndarray
        2-D array; its non-zero elements are returned.

    Returns
    -------
    ys, xs : ndarray of int64
        Row and column indices of the non-zero elements, in row-major order.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    if m.shape[1] == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty.copy()
    ys, xs = np.divmod(np.flatnonzero(m), m.shape[1])
    return ys, xs
