"""Adding point sources and small galaxies to an image, stamp by stamp (no full-frame FFTs)."""

from __future__ import annotations

import math

import numpy as np
from scipy import fft

from seechange.parameters import default_threads
from seechange.sim.psf import MoffatPSF

GALAXY_OVERSAMPLE = 3
"""Sub-samples per pixel per axis used to integrate a galaxy's intrinsic profile over pixels."""


def add_stamps(
    image: np.ndarray, ix0: np.ndarray, iy0: np.ndarray, stamps: np.ndarray, flux: np.ndarray
) -> None:
    """Add ``flux[k] * stamps[k]`` to ``image`` in place, clipping stamps at the image edges.

    Parameters
    ----------
    image : ndarray, float32, shape (ny, nx)
        Image to add to, electrons.
    ix0, iy0 : ndarray of int
        Image column and row of each stamp's pixel (0, 0).
    stamps : ndarray, shape (n, s, s)
        Normalised stamps.
    flux : ndarray, shape (n,)
        Total flux of each source, electrons.
    """
    ny, nx = image.shape
    s = stamps.shape[1]
    for k in range(stamps.shape[0]):
        x0, y0 = int(ix0[k]), int(iy0[k])
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + s, nx), min(y0 + s, ny)
        if xa >= xb or ya >= yb or flux[k] == 0:
            continue
        image[ya:yb, xa:xb] += np.float32(flux[k]) * stamps[k, ya - y0 : yb - y0, xa - x0 : xb - x0]


def add_point_sources(
    image: np.ndarray, psf: MoffatPSF, x: np.ndarray, y: np.ndarray, flux: np.ndarray, sky_sigma_e: float
) -> None:
    """Render point sources with the PSF, in place.

    Parameters
    ----------
    image : ndarray, float32
        Image, electrons.
    psf : MoffatPSF
        The exposure's PSF.
    x, y : ndarray
        Centres, 0-based trimmed pixels.
    flux : ndarray
        Total fluxes, electrons (sources with flux <= 0 are skipped).
    sky_sigma_e : float
        Sky noise per pixel, electrons (sets the stamp size of bright sources).
    """
    x, y, flux = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y, flux))
    keep = flux > 0
    x, y, flux = x[keep], y[keep], flux[keep]
    halves = psf.half_size_for(flux, sky_sigma_e)
    for half in np.unique(halves):
        sel = np.flatnonzero(halves == half)
        ix0, iy0, st = psf.stamps(x[sel], y[sel], int(half))
        add_stamps(image, ix0, iy0, st, flux[sel])


def add_galaxies(
    image: np.ndarray,
    psf: MoffatPSF,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    r_eff_px: np.ndarray,
    axis_ratio: np.ndarray,
    pa: np.ndarray,
    sersic_n: np.ndarray,
    *,
    threads: int | None = None,
) -> None:
    """Render small Sersic galaxies convolved with the PSF, in place.

    The intrinsic profile ``exp(-b_n ((r/r_eff)^(1/n) - 1))`` is integrated over pixels at the galaxy's
    sub-pixel position (``GALAXY_OVERSAMPLE``^2 samples per pixel), normalised, and convolved
    (FFT over the small stamp) with the PSF sampled at pixel centres.

    Parameters
    ----------
    image : ndarray, float32
        Image, electrons.
    psf : MoffatPSF
        The exposure's PSF.
    x, y : ndarray
        Centres, 0-based trimmed pixels.
    flux : ndarray
        Total fluxes, electrons.
    r_eff_px : ndarray
        Half-light radii along the major axis, pixels.
    axis_ratio : ndarray
        Minor/major axis ratios, 0 < q <= 1.
    pa : ndarray
        Major-axis position angles, radians counter-clockwise from +x.
    sersic_n : ndarray
        Sersic indices (1 = exponential disc, 4 = de Vaucouleurs).
    threads : int, optional
        Threads of the FFTs; default every core of the machine.
    """
    if len(x) == 0:
        return
    workers = default_threads() if threads is None else threads
    psf_half = int(min(psf.max_half, math.ceil(4.0 * psf.fwhm_px / math.sqrt(1 - psf.ellipticity))))
    gy, gx = np.mgrid[-psf_half : psf_half + 1, -psf_half : psf_half + 1].astype(np.float64)
    kernel = psf.profile(gx, gy)
    kernel /= kernel.sum()
    # Intrinsic extent 4 r_eff, quantised so that galaxies are rendered in a few batches.
    steps = np.array([2, 3, 4, 5, 6, 8, 10, 12, 15, 19, 24, 30, 40])
    need = np.clip(np.ceil(4.0 * np.asarray(r_eff_px)), 2, 40).astype(np.int64)
    gal_halves = steps[np.searchsorted(steps, need)]
    for gh in np.unique(gal_halves):
        sel = np.flatnonzero(gal_halves == gh)
        size = 2 * int(gh) + 1
        cx, cy = np.rint(x[sel]).astype(np.int64), np.rint(y[sel]).astype(np.int64)
        sub = (np.arange(size * GALAXY_OVERSAMPLE) + 0.5) / GALAXY_OVERSAMPLE - 0.5 - gh
        dx = cx[:, None] + sub[None, :] - x[sel, None]
        dy = cy[:, None] + sub[None, :] - y[sel, None]
        prof = _sersic(dx[:, None, :], dy[:, :, None], r_eff_px[sel], axis_ratio[sel], pa[sel], sersic_n[sel])
        pix = prof.reshape(len(sel), size, GALAXY_OVERSAMPLE, size, GALAXY_OVERSAMPLE).sum(axis=(2, 4))
        pix /= pix.sum(axis=(1, 2), keepdims=True)
        full = size + 2 * psf_half  # linear convolution: the galaxy's light spreads by the PSF
        shape = (fft.next_fast_len(full, real=True),) * 2
        conv = fft.irfft2(
            fft.rfft2(pix, shape, workers=workers) * fft.rfft2(kernel, shape)[None], shape, workers=workers
        )[:, :full, :full]
        conv /= conv.sum(axis=(1, 2), keepdims=True)
        half = int(gh) + psf_half
        add_stamps(image, cx - half, cy - half, conv.astype(np.float32), flux[sel])


def _sersic(
    dx: np.ndarray, dy: np.ndarray, r_eff: np.ndarray, q: np.ndarray, pa: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """Sersic surface brightness on broadcast offset grids, (k, m, m), unnormalised."""
    shape = (-1, 1, 1)
    c, s = np.cos(pa).reshape(shape), np.sin(pa).reshape(shape)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / q.reshape(shape)
    r = np.sqrt(u * u + v * v) / r_eff.reshape(shape)
    nn = n.reshape(shape)
    b = 2.0 * nn - 1.0 / 3.0 + 0.009876 / nn  # Prugniel & Simien (1997) approximation of b_n
    return np.exp(-b * (r ** (1.0 / nn) - 1.0))
