"""Inverse-variance weighted coadd of images resampled onto one grid (reference building)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.wcs import WCS
from scipy import ndimage

from seechange.errors import UnusableImage
from seechange.improc.psf import noise_equivalent_area
from seechange.improc.resample import resample_image
from seechange.improc.types import FLAG_BLEED, FLAG_EDGE, FLAG_SATURATED, ImageData

__all__ = ["coadd"]


def _centred_psf(psf: np.ndarray, half: int) -> np.ndarray:
    """Pad or crop an odd centred stamp to size 2*half+1 and normalise."""
    k = psf.shape[0] // 2
    out = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float64)
    m = min(k, half)
    out[half - m : half + m + 1, half - m : half + m + 1] = psf[k - m : k + m + 1, k - m : k + m + 1]
    return out / out.sum()


def coadd(
    images: Sequence[ImageData],
    *,
    target_wcs: WCS | None = None,
    target_shape: tuple[int, int] | None = None,
    zp: float | None = None,
    clip_sigma: float = 5.0,
    order: int = 3,
) -> ImageData:
    """Resample, scale and combine images into an inverse-variance weighted mean.

    Parameters
    ----------
    images : sequence of ImageData
        Inputs (electrons, weights, flags, PSFs, zero points).
    target_wcs, target_shape : optional
        Output grid; default the first image's grid.
    zp : float, optional
        Common zero point the inputs are scaled to, AB mag; default the first image's ``zp`` (so the coadd
        is in that image's electrons).
    clip_sigma : float, optional
        With three or more inputs, a pixel value further than this many sigma (its own error), plus
        ``(FWHM_max / FWHM_min)^2`` times the local median, from the median of that pixel's usable values
        is excluded, except in the wings of bright sources (see `_near_sources`; there the inputs differ
        by more than their noise when the seeing differs).
    order : int, optional
        Spline order of the resampling.

    Raises
    ------
    UnusableImage
        An input without a finite zero point (it could not be scaled: never silently weight 0).

    Returns
    -------
    ImageData
        Weighted mean image (electrons at ``zp``; one weight per input, ``1 / (sky variance at zp x
        noise-equivalent area of its PSF)``, so every star of the coadd has the coadd's PSF), weight = the
        inverse of the propagated per-pixel variance ``sum(w_i^2 var_i) / sum(w_i)^2`` (resampling
        correlates the noise, so the pixel-to-pixel scatter is lower than this says while sums over a PSF
        follow it), flags = AND of the inputs' flags where no input was usable (else 0), plus saturation and
        bleed flags of any input, plus the flags of missing inputs on sources (with 3 or more inputs),
        PSF = the input
        PSFs on the output grid (``resample_image``'s, with the interpolation's smoothing) averaged with the
        same weights (centred, normalised), ``meta['noise_cov']`` the inputs' noise covariances weighted by
        their shares of the coadd's variance (absent when every input is on the grid), ``fwhm_px`` from it,
        ``astrom_rms_arcsec`` = rms of the inputs' values, ``mjd`` = mean of the inputs.
    """
    if len(images) == 0:
        raise ValueError("coadd needs at least one image")
    no_zp = [i for i, im in enumerate(images) if not np.isfinite(im.zp)]
    if no_zp:
        raise UnusableImage(f"coadd: input(s) {no_zp} have no zero point; a coadd cannot scale them")
    if zp is not None and not np.isfinite(zp):
        raise UnusableImage(f"coadd: target zero point {zp} is not finite")
    first = images[0]
    wcs = first.wcs if target_wcs is None else target_wcs
    shape: tuple[int, int] = (
        first.shape if target_shape is None else (int(target_shape[0]), int(target_shape[1]))
    )
    zp0 = first.zp if zp is None else float(zp)
    n = len(images)
    stack = np.zeros((n, *shape), dtype=np.float32)
    var = np.zeros((n, *shape), dtype=np.float32)
    usable_all = np.zeros((n, *shape), dtype=bool)
    flags_and = np.full(shape, np.uint16(0xFFFF), dtype=np.uint16)
    sat_any = np.zeros(shape, dtype=np.uint16)
    missing_or = np.zeros(shape, dtype=np.uint16)  # why some input is missing at the pixel
    img_w = np.zeros(n)
    half = max(im.psf.shape[0] // 2 for im in images)
    psfs: list[np.ndarray] = []  # the inputs' PSFs on the output grid (with the interpolation's smoothing)
    covs: list[np.ndarray | None] = []  # and their noise covariances (None: white)
    var_med = np.zeros(n)
    for i, im in enumerate(images):
        rs = resample_image(im, wcs, shape, order=order)
        psfs.append(np.asarray(rs.psf, float))
        c = rs.meta.get("noise_cov")
        covs.append(None if c is None else np.asarray(c, float))
        s = 10 ** (0.4 * (zp0 - im.zp))  # electrons at zp0 per electron of this image
        usable = (rs.flags == 0) & (rs.weight > 0)
        usable_all[i] = usable
        stack[i] = np.where(usable, rs.image * s, 0.0)
        np.divide(s * s, rs.weight, out=var[i], where=usable)
        sat_any |= rs.flags & np.uint16(FLAG_SATURATED | FLAG_BLEED)
        why = np.where(rs.flags != 0, rs.flags, np.uint16(FLAG_EDGE)).astype(np.uint16)
        flags_and &= np.where(usable, np.uint16(0), why).astype(np.uint16)
        missing_or |= np.where(usable, np.uint16(0), why).astype(np.uint16)
        if usable.any():
            # One weight per image (background variance at zp0 times the PSF's noise-equivalent area), not
            # per pixel: per-pixel inverse-variance weights include the source's own Poisson noise, so on a
            # star they favour the image where it is most spread out (worst seeing) and the stars of the coadd
            # would no longer have the coadd's PSF (measured on simulated nights: PSF-fit fluxes 25% low).
            var_med[i] = float(np.median(var[i][usable]))
            img_w[i] = 1.0 / (var_med[i] * noise_equivalent_area(np.asarray(im.psf)))
        del rs, usable, why  # before the next input is resampled
    # Input i's weight at a pixel is img_w[i] where it is usable and not clipped, else 0: one boolean
    # stack (`keep`) instead of a float32 weight stack, and every sum over inputs taken one input at a
    # time in the same order and dtype as a sum along axis 0 (the same values; the stacks, temporaries
    # and a 3 x 2048 x 4096 weight stack took about 920 MB, the largest peak of the subtract service).
    keep = usable_all
    bright = np.zeros(shape, dtype=bool)
    if n >= 3:
        # Clip outliers (unflagged cosmic rays, hot pixels) against the plain median of the usable inputs:
        # with per-image weights the best-seeing image often holds more than half the weight, its weighted
        # median is its own value, and its unflagged cosmic rays were never clipped (measured: 600-1500 e-
        # cosmic-ray pixels kept in references). Inputs with different seeing differ on sources by far
        # more than their noise: on the core of a faint source the sharpest input exceeds the median by up
        # to the ratio of PSF peaks, (FWHM_max / FWHM_min)^2, which is allowed for; in the wings of bright
        # sources (where the broadest input can be 16 x the sharpest) nothing is clipped.
        wmed = _weighted_median(stack, usable_all.astype(np.float32))
        n_use = np.maximum(usable_all.sum(axis=0), 1)
        typical = np.sqrt(np.where(usable_all, var, 0.0).sum(axis=0) / n_use)
        del n_use
        fw = [im.fwhm_px for im in images]
        snr_med = wmed / np.maximum(typical, 1e-12)
        del typical
        bright = _near_sources(snr_med, max(fw))
        del snr_med
        seeing = (max(fw) / max(min(fw), 1e-3)) ** 2
        lim = np.float32(seeing) * ndimage.maximum_filter(np.abs(wmed), size=3)
        keep = np.empty(stack.shape, dtype=bool)
        for i in range(n):  # one input at a time: no n-stack float temporaries (same values)
            out = np.abs(stack[i] - wmed) > clip_sigma * np.sqrt(var[i]) + lim
            out &= ~bright
            keep[i] = usable_all[i] & ~out
        del lim, wmed, out
    del usable_all
    w32 = img_w.astype(np.float32)
    wsum = np.zeros(shape, dtype=np.float32)
    wimg = np.zeros(shape, dtype=np.float32)
    num = np.zeros(shape, dtype=np.float64)  # sum_i w_i^2 var_i (no float64 stacks)
    for i in range(n):
        wi = np.where(keep[i], w32[i], np.float32(0.0))
        wsum += wi
        wimg += stack[i] * wi
        num += wi.astype(np.float64) ** 2 * var[i]
    del stack, var, keep, wi
    img = np.zeros(shape, dtype=np.float32)
    np.divide(wimg, wsum, out=img, where=wsum > 0)
    del wimg
    var_c = np.zeros(shape, dtype=np.float64)
    np.divide(num, wsum.astype(np.float64) ** 2, out=var_c, where=wsum > 0)
    del num
    weight = np.zeros(shape, dtype=np.float32)
    np.divide(1.0, var_c, out=weight, where=var_c > 0)
    # A pixel saturated (or bled into) in any input keeps that flag: the others' values there would make a
    # star whose core comes from some inputs and whose wing from all, which matches no PSF (measured:
    # stars just below saturation in the new image left +50 sigma residuals at their centres).
    # Likewise in the wings of sources above 5 sigma per pixel (`_near_sources`) where some input is
    # missing (bad column, cosmic ray, edge of its coverage): the coadd's star there is a different mixture
    # of the inputs' PSFs (measured: bad columns of one input through mag 20.5 stars left -7 sigma
    # residuals). Those pixels keep the missing inputs' flags. (Faint sources, e.g. most transients' host
    # galaxies, are left alone: their mixture error is below the noise.)
    partial = (wsum > 0) & (missing_or != 0) & bright
    flags = (
        np.where(wsum > 0, np.uint16(0), flags_and) | sat_any | np.where(partial, missing_or, np.uint16(0))
    ).astype(np.uint16)
    psf_w = img_w.copy()
    if psf_w.sum() <= 0:
        psf_w[:] = 1.0
    psf_sum = np.sum([w * _centred_psf(p, half) for w, p in zip(psf_w, psfs)], axis=0)
    psf = (psf_sum / psf_sum.sum()).astype(np.float32)
    fwhm = float(2.0 * np.sqrt(np.count_nonzero(psf >= 0.5 * psf.max()) / np.pi))
    return ImageData(
        image=img,
        weight=weight,
        flags=flags,
        psf=psf,
        wcs=wcs.deepcopy(),
        zp=zp0,
        fwhm_px=fwhm,
        bkg_level=float(np.mean([im.bkg_level * 10 ** (0.4 * (zp0 - im.zp)) for im in images])),
        bkg_rms=float(np.sqrt(np.median(var_c[var_c > 0]))) if np.any(var_c > 0) else 0.0,
        astrom_rms_arcsec=float(np.sqrt(np.mean([im.astrom_rms_arcsec**2 for im in images]))),
        mjd=float(np.mean([im.mjd for im in images])),
        band=first.band,
        meta={
            "n_images": n,
            "coadd_zp": zp0,
            "psf_weights": psf_w.tolist(),
            **_coadd_noise_cov(covs, img_w**2 * var_med),
        },
    )


def _coadd_noise_cov(covs: list[np.ndarray | None], share: np.ndarray) -> dict:
    """``{'noise_cov': ...}`` of the coadd (empty when every input's noise is white).

    The coadd's noise is ``sum_i w_i n_i`` over independent inputs, so its covariance is the inputs' own
    (normalised) covariances weighted by their shares ``w_i^2 var_i`` of the coadd's variance.
    """
    if all(c is None for c in covs) or not np.sum(share) > 0:
        return {}
    size = max(1 if c is None else c.shape[0] for c in covs)
    out = np.zeros((size, size))
    for c, q in zip(covs, share / np.sum(share)):
        c = np.ones((1, 1)) if c is None else c
        o = (size - c.shape[0]) // 2
        out[o : o + c.shape[0], o : o + c.shape[1]] += q * c
    return {"noise_cov": out / out.sum()}


def _near_sources(snr: np.ndarray, fwhm_px: float) -> np.ndarray:
    """Pixels within the wing of a bright source: near where ``snr`` (per-pixel S/N of the median) is high.

    A pixel counts as near a source when within ``2 x fwhm x 1.47^k`` pixels of a pixel above
    ``5 x 10^k`` sigma (k = 0..4): a Moffat(beta = 3) wing falls by 10 for every factor 1.47 in radius,
    so each tier reaches about as far as the wing of the broadest input stays above a fraction of a sigma.
    Without this, the wing of a bright star in the worst-seeing input (hundreds of electrons 10 px out,
    where the best-seeing input has tens) was clipped as an outlier, the coadd's star lost part of its
    wing while its PSF kept it, and every bright star left a 5-10 sigma ring in the difference image.
    """
    near = np.zeros(snr.shape, dtype=bool)
    for k in range(5):
        hot = snr > 5.0 * 10.0**k
        if not hot.any():
            break
        size = 2 * int(np.ceil(2.0 * fwhm_px * 1.47**k)) + 1
        near |= ndimage.maximum_filter(hot.astype(np.uint8), size=size) > 0
    return near


def _weighted_median(values: np.ndarray, weights: np.ndarray, *, rows: int = 256) -> np.ndarray:
    """Per-pixel weighted median along axis 0 (pixels without weight give 0).

    Computed ``rows`` image rows at a time (the same values): the sort and cumulative-sum temporaries of a
    whole 3 x 2048 x 4096 stack took about 700 MB.
    """
    if values.ndim == 3 and values.shape[1] > rows:
        out = np.empty(values.shape[1:], dtype=values.dtype)
        for y0 in range(0, values.shape[1], rows):
            out[y0 : y0 + rows] = _weighted_median(values[:, y0 : y0 + rows], weights[:, y0 : y0 + rows])
        return out
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, axis=0)
    w = np.take_along_axis(weights, order, axis=0)
    cw = np.cumsum(w, axis=0)
    tot = cw[-1]
    idx = np.argmax(cw >= 0.5 * tot, axis=0)
    return np.take_along_axis(v, idx[None], axis=0)[0]
