"""The subtraction step: resample the reference onto the new image's grid and run ZOGY.

A pure function of in-memory images; its parameters are a :class:`~seechange.parameters.StepParameters`
whose critical part feeds the provenance hash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from seechange.improc.resample import resample_image
from seechange.improc.types import ImageData
from seechange.improc.zogy import ZogyParams, ZogyResult, zogy
from seechange.parameters import StepParameters, default_threads, noncritical

__all__ = ["SubtractParams", "astrometric_sigma_px", "subtract"]


@dataclass(frozen=True)
class SubtractParams(StepParameters):
    """Parameters of :func:`subtract`.

    Attributes
    ----------
    resample_order : int
        Spline order used to resample the reference onto the new image's grid. 1 (bilinear): measured
        against 3 on simulated nights (512x1024 x 2 fields x 5 epochs; 1024x2048 x 2 x 7) the same
        completeness, false positives and S_corr std (1.0004 vs 1.0007; 1.0038 vs 1.0039), pulls as close
        to 1 (0.97 vs 0.83; 0.87 vs 0.85), and 0.4 to 0.6 s less per full-size CCD (no spline prefilter).
    astrometric_floor_arcsec : float
        Added in quadrature to the images' astrometric rms, arcsec.
    zogy : ZogyParams
        ZOGY's options (flux-error term, renormalisation, border, precision). Its per-axis astrometric
        sigmas are derived per pair of images (:func:`astrometric_sigma_px`) and must be left at 0.
    threads : int
        Threads of the resampling, the FFTs and the file I/O (not critical: it does not change the result);
        default every core of the machine.
    """

    resample_order: int = 1
    astrometric_floor_arcsec: float = 0.0
    zogy: ZogyParams = field(default_factory=ZogyParams)
    threads: int = noncritical(default_factory=default_threads)

    def __post_init__(self) -> None:
        if self.zogy.astrometric_sigma_x != 0.0 or self.zogy.astrometric_sigma_y != 0.0:
            raise ValueError(
                "zogy.astrometric_sigma_x/y are derived per image pair: set astrometric_floor_arcsec instead"
            )
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def astrometric_sigma_px(new: ImageData, ref: ImageData, *, floor_arcsec: float = 0.0) -> float:
    """Per-axis registration noise between two images, pixels of ``new``.

    ``astrom_rms_arcsec`` is taken as the combined (two-axis) rms of each image, so the per-axis sigma is
    ``sqrt(rms_new^2 + rms_ref^2 + floor^2) / sqrt(2)`` divided by the pixel scale.
    """
    scale = float(np.mean(proj_plane_pixel_scales(new.wcs.celestial))) * 3600.0
    tot = np.sqrt(new.astrom_rms_arcsec**2 + ref.astrom_rms_arcsec**2 + floor_arcsec**2)
    return float(tot / np.sqrt(2.0) / scale)


def subtract(new: ImageData, ref: ImageData, *, params: SubtractParams = SubtractParams()) -> ZogyResult:
    """Resample the reference onto the new image's grid and run ZOGY.

    Parameters
    ----------
    new : ImageData
        New image (electrons, its own WCS, zp, PSF).
    ref : ImageData
        Reference (coadd), any grid overlapping the new image.
    params : SubtractParams
        Resampling and ZOGY options.

    Returns
    -------
    ZogyResult
        On the new image's grid; ``meta['ref_resampled']`` holds the resampled reference (ImageData) and
        ``meta['astrometric_sigma_px']`` the registration noise used.
    """
    ref_rs = resample_image(ref, new.wcs, new.shape, order=params.resample_order, threads=params.threads)
    sig = astrometric_sigma_px(new, ref, floor_arcsec=params.astrometric_floor_arcsec)
    del ref  # the reference on its own grid is not needed any more (freed unless the caller keeps it)
    zp = dataclasses.replace(params.zogy, astrometric_sigma_x=sig, astrometric_sigma_y=sig)
    res = zogy(new, ref_rs, params=zp, threads=params.threads)
    res.meta["ref_resampled"] = ref_rs
    res.meta["astrometric_sigma_px"] = sig
    return res
