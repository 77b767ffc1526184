"""Empirical PSF: a sub-pixel-registered median stack of isolated bright stars."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = [
    "PSFModel",
    "aperture_fraction",
    "build_psf",
    "gaussian_psf",
    "measure_fwhm",
    "noise_equivalent_area",
    "stamp_size_for",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSFModel:
    """Result of `build_psf`.

    Attributes
    ----------
    stamp : ndarray, float32
        Odd-sized, centred PSF stamp normalised to sum 1.
    fwhm_px : float
        FWHM of the model, pixels.
    n_stars : int
        Number of stars stacked (0 when the Gaussian fallback was used).
    """

    stamp: np.ndarray
    fwhm_px: float
    n_stars: int


def stamp_size_for(fwhm_px: float, *, factor: float = 4.0, min_size: int = 15, max_size: int = 41) -> int:
    """Odd stamp size ``ceil(factor * fwhm)`` made odd, clipped to ``[min_size, max_size]`` (pixels)."""
    n = int(np.ceil(factor * fwhm_px))
    n = min(max(n, min_size), max_size)
    return n if n % 2 else n + 1 if n + 1 <= max_size else n - 1


def gaussian_psf(fwhm_px: float, size: int) -> np.ndarray:
    """Circular Gaussian PSF sampled at pixel centres.

    Parameters
    ----------
    fwhm_px : float
        FWHM, pixels.
    size : int
        Odd stamp size, pixels.

    Returns
    -------
    ndarray, float32
        ``(size, size)`` stamp, peak at the centre, sum 1.
    """
    if size % 2 == 0 or size < 3:
        raise ValueError(f"size must be odd and >= 3, got {size}")
    if not fwhm_px > 0:
        raise ValueError(f"fwhm_px must be > 0, got {fwhm_px}")
    s = fwhm_px / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s * s))
    return (g / g.sum()).astype(np.float32)


def measure_fwhm(psf: np.ndarray) -> float:
    """FWHM (pixels) of a PSF stamp: mean radius where the spline-interpolated profile falls to half its peak.

    The profile is sampled along 8 directions from the centroid of the core, at 0.02-pixel steps; the result
    is the FWHM of the sampled profile (as SExtractor and the DECam FWHM card report it).
    """
    p = np.asarray(psf, dtype=np.float64)
    c = p.shape[0] // 2
    core = p[c - 2 : c + 3, c - 2 : c + 3]
    tot = core.sum()
    yy, xx = np.mgrid[-2:3, -2:3]
    cy, cx = c + (core * yy).sum() / tot, c + (core * xx).sum() / tot
    coeffs = ndimage.spline_filter(p, order=3)
    peak = float(ndimage.map_coordinates(coeffs, [[cy], [cx]], order=3, prefilter=False)[0])
    radii = np.arange(0, c, 0.02)
    out = []
    for ang in np.arange(8) * np.pi / 4:
        ys, xs = cy + radii * np.sin(ang), cx + radii * np.cos(ang)
        prof = ndimage.map_coordinates(coeffs, [ys, xs], order=3, prefilter=False)
        below = np.nonzero(prof < peak / 2)[0]
        if below.size == 0 or below[0] == 0:
            continue
        i = below[0]
        r = radii[i - 1] + (prof[i - 1] - peak / 2) / (prof[i - 1] - prof[i]) * (radii[i] - radii[i - 1])
        out.append(r)
    if not out:
        return float("nan")
    return float(2.0 * np.mean(out))


def noise_equivalent_area(psf: np.ndarray) -> float:
    """Noise-equivalent area ``1 / sum(psf**2)`` of a normalised PSF, pixels."""
    p = np.asarray(psf, dtype=np.float64)
    p = p / p.sum()
    return float(1.0 / np.sum(p * p))


def aperture_fraction(psf: np.ndarray, radius: float) -> float:
    """Fraction of the PSF stamp's flux within a circular aperture of ``radius`` pixels about its centre.

    Pixels are split 5x5 so partial pixels at the aperture edge count by area, as ``sep.sum_circle`` does.
    """
    p = np.asarray(psf, dtype=np.float64)
    n = p.shape[0]
    sub = 5
    o = (np.arange(n * sub) + 0.5) / sub - 0.5 - n // 2
    inside = (o[:, None] ** 2 + o[None, :] ** 2) <= radius * radius
    frac = inside.reshape(n, sub, n, sub).mean(axis=(1, 3))
    return float((p * frac).sum() / p.sum())


def _select_stars(
    sources: Table, shape: tuple[int, int], half: int, *, min_snr: float, max_stars: int, isolation: float
) -> Table:
    ok = (np.asarray(sources["flag"]) == 0) & (np.asarray(sources["snr"]) >= min_snr)
    if "pixflags" in sources.colnames:
        ok &= np.asarray(sources["pixflags"]) == 0
    x, y = np.asarray(sources["x"]), np.asarray(sources["y"])
    ok &= (x > half + 3) & (x < shape[1] - half - 4) & (y > half + 3) & (y < shape[0] - half - 4)
    if len(sources) > 1:
        tree = cKDTree(np.column_stack([x, y]))
        d, _ = tree.query(np.column_stack([x, y]), k=2)
        ok &= d[:, 1] > isolation
    cand = sources[ok]
    if len(cand) == 0:
        return cand
    # point-like: FWHM and elongation near the bright-star locus
    fw = np.asarray(cand["fwhm"])
    med = np.median(fw)
    ell = np.asarray(cand["b"]) / np.maximum(np.asarray(cand["a"]), 1e-6)
    cand = cand[(np.abs(fw - med) < 0.2 * med) & (ell > 0.6)]
    order = np.argsort(-np.asarray(cand["snr"]))
    return cand[order[:max_stars]]


def build_psf(
    image: np.ndarray,
    sources: Table,
    *,
    size: int | None = None,
    size_factor: float = 4.0,
    min_snr: float = 50.0,
    max_stars: int = 200,
    min_stars: int = 5,
) -> PSFModel:
    """Build an empirical PSF from isolated, unflagged, high-SNR point-like stars.

    Each star is cut out, shifted by spline interpolation so its windowed centroid lands on the stamp centre,
    normalised to unit flux, and the stack is median-combined, re-centred and normalised to sum 1.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image, electrons (not modified).
    sources : astropy.table.Table
        Output of `seechange.improc.extract.extract_sources` (x, y 0-based, snr, fwhm, a, b, flag, pixflags).
    size : int, optional
        Odd stamp size, pixels; default `stamp_size_for` the median star FWHM (4 x FWHM, 15 to 41).
    size_factor : float, optional
        Multiplier of the FWHM for the default stamp size.
    min_snr : float, optional
        Minimum aperture SNR of a PSF star.
    max_stars : int, optional
        Use at most this many of the highest-SNR candidates.
    min_stars : int, optional
        With fewer candidates a Gaussian of the median source FWHM is returned, with a warning.

    Returns
    -------
    PSFModel
    """
    data = np.asarray(image, dtype=np.float32)
    good = sources[(np.asarray(sources["flag"]) == 0)] if len(sources) else sources
    fwhm_guess = float(np.median(good["fwhm"])) if len(good) else 4.0
    if size is None:
        size = stamp_size_for(fwhm_guess, factor=size_factor)
    if size % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    half = size // 2
    stars = sources
    # relax isolation, then SNR, until enough stars qualify (small or crowded images)
    for iso, snr in ((1.5 * size, min_snr), (1.0 * size, min_snr), (0.75 * size, min_snr / 2)):
        stars = _select_stars(
            sources, data.shape, half, min_snr=snr, max_stars=max_stars, isolation=iso
        ) if len(sources) else sources
        if len(stars) >= min_stars:
            break
    if len(stars) < min_stars:
        warnings.warn(
            f"build_psf: only {len(stars)} PSF stars; using a Gaussian of FWHM {fwhm_guess:.2f} px",
            RuntimeWarning, stacklevel=2,
        )
        g = gaussian_psf(fwhm_guess, size)
        return PSFModel(stamp=g, fwhm_px=measure_fwhm(g), n_stars=0)
    pad = half + 3
    stack = np.empty((len(stars), size, size), np.float32)
    for k, (x, y) in enumerate(zip(np.asarray(stars["x"]), np.asarray(stars["y"]))):
        xi, yi = int(np.rint(x)), int(np.rint(y))
        cut = data[yi - pad : yi + pad + 1, xi - pad : xi + pad + 1].astype(np.float64)
        shifted = ndimage.shift(cut, (yi - y, xi - x), order=3, mode="nearest")
        st = shifted[3:-3, 3:-3]
        stack[k] = st / st.sum()
    model = np.median(stack, axis=0).astype(np.float64)
    # re-centre on the core's centroid (median stacking of noisy stamps can leave a tiny offset)
    c = half
    core = model[c - 2 : c + 3, c - 2 : c + 3]
    yy, xx = np.mgrid[-2:3, -2:3]
    dy, dx = (core * yy).sum() / core.sum(), (core * xx).sum() / core.sum()
    if abs(dx) > 0.01 or abs(dy) > 0.01:
        model = ndimage.shift(model, (-dy, -dx), order=3, mode="constant")
    model = model / model.sum()
    stamp = model.astype(np.float32)
    return PSFModel(stamp=stamp, fwhm_px=measure_fwhm(stamp), n_stars=len(stars))
