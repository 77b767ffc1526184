"""Inject artificial point sources into an image (for completeness and photometry tests)."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from seechange.improc.types import ImageData

__all__ = ["inject_point_sources", "shifted_psf"]


def shifted_psf(psf: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The PSF stamp shifted by a sub-pixel offset, renormalised to sum 1.

    Parameters
    ----------
    psf : ndarray
        Odd-sized, centred, normalised PSF stamp.
    dx, dy : float
        Shift along x (columns) and y (rows), pixels, |shift| <= 0.5 expected.

    Returns
    -------
    ndarray, float64
        Shifted stamp (cubic-spline shift; negative ringing clipped), sum 1.
    """
    out = ndimage.shift(np.asarray(psf, dtype=np.float64), (dy, dx), order=3, mode="constant", cval=0.0)
    out = np.clip(out, 0.0, None)
    return out / out.sum()


def inject_point_sources(
    image: ImageData,
    positions: ArrayLike,
    fluxes_e: ArrayLike,
    *,
    psf: np.ndarray | None = None,
    rng: np.random.Generator,
    poisson: bool = True,
) -> ImageData:
    """Add PSF-shaped point sources with Poisson noise, updating the weight map.

    Parameters
    ----------
    image : ImageData
        Image to copy and inject into (electrons).
    positions : array_like, shape (n, 2)
        0-based (x, y) pixel positions of the sources.
    fluxes_e : array_like, shape (n,)
        Total fluxes, electrons. Negative fluxes are subtracted without Poisson noise (a fading source
        in the reference sense) and leave the weight unchanged.
    psf : ndarray, optional
        PSF stamp to use; defaults to ``image.psf``.
    rng : numpy.random.Generator
        Random generator for the Poisson noise.
    poisson : bool, optional
        Add Poisson noise of the injected electrons (and their variance to the weight map).

    Returns
    -------
    ImageData
        A copy with the sources added; ``meta['injected']`` lists (x, y, flux_e). Sources falling off the
        frame are truncated.
    """
    pos = np.atleast_2d(np.asarray(positions, dtype=float))
    flux = np.atleast_1d(np.asarray(fluxes_e, dtype=float))
    if pos.shape[1] != 2 or pos.shape[0] != flux.size:
        raise ValueError("positions must be (n, 2) and match fluxes_e")
    stamp = np.asarray(image.psf if psf is None else psf, dtype=np.float64)
    ky, kx = stamp.shape
    hy, hx = ky // 2, kx // 2
    ny, nx = image.shape
    model = np.zeros((ny, nx), dtype=np.float64)
    for (x, y), f in zip(pos, flux):
        ix, iy = int(np.rint(x)), int(np.rint(y))
        p = shifted_psf(stamp, x - ix, y - iy) * f
        y0, y1 = iy - hy, iy + hy + 1
        x0, x1 = ix - hx, ix + hx + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        sy1, sx1 = ky - max(0, y1 - ny), kx - max(0, x1 - nx)
        if sy1 <= sy0 or sx1 <= sx0:
            continue
        model[max(y0, 0) : min(y1, ny), max(x0, 0) : min(x1, nx)] += p[sy0:sy1, sx0:sx1]
    pos_part = np.clip(model, 0.0, None)
    noisy = model.copy()
    if poisson:
        noisy += rng.poisson(pos_part) - pos_part
    new_img = (np.asarray(image.image, dtype=np.float64) + noisy).astype(np.float32)
    w = np.asarray(image.weight, dtype=np.float64)
    new_w = w.copy()
    if poisson:
        good = w > 0
        new_w[good] = 1.0 / (1.0 / w[good] + pos_part[good])
    meta = dict(image.meta)
    meta["injected"] = [(float(x), float(y), float(f)) for (x, y), f in zip(pos, flux)]
    return dataclasses.replace(
        image, image=new_img, weight=new_w.astype(np.float32), flags=image.flags.copy(), meta=meta
    )
