"""Source extraction with sep: detection, windowed centroids, aperture fluxes, shape and flags."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import sep
from astropy.table import Table

from seechange.units import FWHM_PER_SIGMA

__all__ = ["extract_sources", "noise_from_weight"]

log = logging.getLogger(__name__)

_COLUMNS = (
    "x",
    "y",
    "flux",
    "flux_err",
    "a",
    "b",
    "theta",
    "fwhm",
    "flag",
    "pixflags",
    "snr",
    "peak",
    "npix",
)


def noise_from_weight(weight: np.ndarray, *, fill: float) -> np.ndarray:
    """Per-pixel 1-sigma noise (electrons) from an inverse-variance weight; ``fill`` where weight <= 0."""
    w = np.asarray(weight, dtype=np.float32)
    # in place (same float32 operations): one full-frame array instead of four
    noise = np.maximum(w, np.float32(1e-30))
    np.sqrt(noise, out=noise)
    np.divide(np.float32(1.0), noise, out=noise)
    noise[~(w > 0)] = np.float32(fill)
    return noise


def _typical(err: np.ndarray, ok: np.ndarray, step: int = 4) -> float:
    """Median of ``err`` over ``ok`` pixels, from every ``step``-th pixel in each direction when that leaves
    enough (the value only fills masked pixels, which sep ignores; a full-frame median costs 0.2 s)."""
    sub = err[::step, ::step][ok[::step, ::step]]
    if sub.size >= 1000:
        return float(np.median(sub))
    return float(np.median(err[ok])) if ok.any() else 1.0


def _empty_table() -> Table:
    t = Table(names=_COLUMNS, dtype=["f8"] * 8 + ["i4", "i4", "f8", "f8", "i4"])
    return t


def extract_sources(
    image: np.ndarray,
    *,
    noise: np.ndarray | float,
    flags: np.ndarray | None = None,
    thresh: float = 5.0,
    minarea: int = 5,
    aper_radius: float = 5.0,
    deblend_cont: float = 0.005,
    filter_kernel: np.ndarray | None = None,
) -> Table:
    """Detect sources and measure them.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image, electrons (any float dtype or byte order; not modified).
    noise : ndarray or float
        1-sigma noise per pixel (or one value), electrons.
    flags : ndarray, optional
        uint16 flag mask; non-zero pixels are masked for detection, and each source reports the OR of the flag
        bits within its aperture in ``pixflags``.
    thresh : float, optional
        Detection threshold in units of ``noise``.
    minarea : int, optional
        Minimum connected pixels above threshold.
    aper_radius : float, optional
        Radius of the circular flux aperture, pixels.
    deblend_cont : float, optional
        sep deblending contrast.
    filter_kernel : ndarray, optional
        Detection filter; sep's default 3x3 kernel when None.

    Returns
    -------
    astropy.table.Table
        One row per source: ``x``, ``y`` (0-based windowed centroid, pixels), ``flux``, ``flux_err``
        (aperture, electrons), ``a``, ``b`` (pixels), ``theta`` (radians), ``fwhm`` (2 x half-light radius,
        pixels), ``flag`` (sep extraction and photometry flags), ``pixflags`` (image flag bits in the
        aperture), ``snr`` (flux / flux_err), ``peak`` (electrons), ``npix``. Empty, with a warning, when
        nothing is found.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    data = np.ascontiguousarray(image, dtype=np.float32)
    if np.ndim(noise) == 0:
        err = np.full(data.shape, float(noise), np.float32)  # type: ignore[arg-type]
    else:
        err = np.ascontiguousarray(noise, dtype=np.float32)
        if err.shape != data.shape:
            raise ValueError(f"noise shape {err.shape} differs from image shape {data.shape}")
    mask = np.zeros(data.shape, bool) if flags is None else np.asarray(flags) != 0
    # ~isfinite(data) | ~isfinite(err) | (err <= 0) with one full-frame temporary instead of five
    # (NaN and -inf fail err > 0, so ~isfinite(err) | (err <= 0) is ~(err > 0) | isinf(err))
    bad = ~np.isfinite(data)
    mask |= bad
    np.logical_not(np.greater(err, 0, out=bad), out=bad)
    mask |= bad
    mask |= np.isinf(err, out=bad)
    del bad
    if mask.any():
        # copies (the caller's arrays are not modified), then the few masked pixels are filled: cheaper
        # than np.where over the full frame; the same values
        fill = np.float32(_typical(err, ~mask))
        data = data.copy() if np.may_share_memory(data, image) else data
        data[mask] = np.float32(0)
        err = err.copy() if np.may_share_memory(err, noise) else err
        err[mask] = fill
    sep.set_extract_pixstack(max(300_000, data.size // 10))
    sep.set_sub_object_limit(4096)
    kwargs = {} if filter_kernel is None else {"filter_kernel": np.asarray(filter_kernel, np.float32)}
    objs = sep.extract(data, thresh, err=err, mask=mask, minarea=minarea, deblend_cont=deblend_cont, **kwargs)
    if len(objs) == 0:
        warnings.warn("extract_sources: no sources found", RuntimeWarning, stacklevel=2)
        return _empty_table()
    x0, y0 = objs["x"].astype(np.float64), objs["y"].astype(np.float64)
    rhalf, rflag = sep.flux_radius(data, x0, y0, 6.0 * objs["a"], 0.5, mask=mask, normflux=None, subpix=5)
    rhalf = np.where(np.isfinite(rhalf) & (rhalf > 0), rhalf, 1.0)
    sig = np.clip(2.0 * rhalf / FWHM_PER_SIGMA, 0.5, 20.0)
    x, y, wflag = sep.winpos(data, x0, y0, sig, mask=mask)
    bad = ~np.isfinite(x) | ~np.isfinite(y) | (np.hypot(x - x0, y - y0) > 2.0)
    x, y = np.where(bad, x0, x), np.where(bad, y0, y)
    flux, ferr, fflag = sep.sum_circle(data, x, y, aper_radius, err=err, mask=mask, subpix=5)
    pixflags = _flags_in_aperture(flags, x, y, aper_radius)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(ferr > 0, flux / ferr, 0.0)
    t = Table()
    t["x"], t["y"] = x, y
    t["flux"], t["flux_err"] = flux, ferr
    t["a"], t["b"], t["theta"] = objs["a"], objs["b"], objs["theta"]
    t["fwhm"] = 2.0 * rhalf
    t["flag"] = (
        objs["flag"].astype(np.int32)
        | fflag.astype(np.int32)
        | rflag.astype(np.int32)
        | wflag.astype(np.int32)
    )
    t["pixflags"] = pixflags
    t["snr"] = snr
    t["peak"] = objs["peak"]
    t["npix"] = objs["npix"].astype(np.int32)
    return t


def _flags_in_aperture(flags: np.ndarray | None, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """OR of flag bits within a circle of radius r around each (x, y)."""
    if flags is None or len(x) == 0:
        return np.zeros(len(x), np.int32)
    f = np.asarray(flags)  # gathered in its own dtype and cast after: no full-frame int32 copy
    k = int(np.ceil(r))
    off = np.arange(-k, k + 1)
    disk = (off[:, None] ** 2 + off[None, :] ** 2) <= r * r
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    yy = np.clip(yi[:, None, None] + off[None, :, None], 0, f.shape[0] - 1)
    xx = np.clip(xi[:, None, None] + off[None, None, :], 0, f.shape[1] - 1)
    boxes = np.where(disk[None], f[yy, xx].astype(np.int32), 0)
    return np.bitwise_or.reduce(boxes.reshape(len(x), -1), axis=1).astype(np.int32)
