"""Forced PSF photometry on a difference image: the flux at a fixed position, whatever is there.

A PSF fit of D at a position given in advance (no centroiding): with P the difference image's PSF P_D
shifted to the position, V the per-pixel variance of D (sky and source noise of both images) and w = 1/V on
unflagged pixels within ``fit_radius_fwhm`` of the position,

    flux = sum(w P D) / sum(w P^2),    err = renorm / sqrt(sum(w P^2)),

the minimum-variance unbiased estimator for uncorrelated pixel noise (ZOGY's D is whitened). When the
score variance V_S is given, the error is ZOGY's full budget instead, ``renorm sqrt(V_S) / F_S`` at the
position (bilinear in V_S; the detections' error): it adds to the pixel noise the astrometric and
flux-scaling terms that dominate on bright sources. ``renorm`` is the empirical noise correction the
subtraction measured on S_corr (1 when none). The limiting
magnitude at the position is ``zp - 2.5 log10(t err)``, t the detection threshold on S_corr (5): from the
local noise, which is larger near bright stars and on flagged pixels than the image's median.

What the limit means: ``err`` is the flux error of a point source at that position, and S_corr (which
detection thresholds at t) is that flux divided by the same error, so a source of the limiting magnitude
has an expected S_corr peak of exactly t, and is detected about half of the time. Measured by injection
on simulated difference images (:mod:`seechange.evaluation.limits`): 50 % completeness lies 0.0 to 0.1 mag
fainter than the quoted limit on blank sky and 0.16 to 0.26 mag fainter where the local noise is 1.5 to 2
times the median (near stars the astrometric and flux-scaling terms of V_S exceed the random noise, and
the star's residual lifts the highest S_corr pixel near the source: there the limit is conservative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seechange.improc.zogy import ZogyResult
from seechange.parameters import StepParameters

__all__ = ["ForcedParams", "ForcedResult", "forced_on_zogy", "forced_psf_photometry", "limiting_magnitude"]


@dataclass(frozen=True)
class ForcedParams(StepParameters):
    """Parameters of forced photometry (all critical: they feed the ``forced`` provenance).

    Attributes
    ----------
    fit_radius_fwhm : float
        Radius of the fitted pixels around the position, in FWHM of P_D.
    limit_sigma : float or None
        The limiting magnitude is that of a source of ``limit_sigma`` times the flux error. None (the
        default): the detection threshold in use (:attr:`~seechange.improc.detection.DetectParams.forced_params`
        fills it in), so that a source at the quoted limit has an expected S_corr peak equal to the
        threshold. A number decouples the limit from detection (its meaning is then only "n sigma").
    """

    fit_radius_fwhm: float = 2.0
    limit_sigma: float | None = None


@dataclass(frozen=True)
class ForcedResult:
    """Forced fluxes at N positions.

    Attributes
    ----------
    flux, flux_err : ndarray
        PSF flux (signed) and error, electrons; NaN where no unflagged pixel was in reach.
    n_bad : ndarray of int
        Flagged (zero-weight) pixels within one FWHM of each position.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    n_bad: np.ndarray


def _spline_coefficients(psf: np.ndarray) -> np.ndarray:
    """Cubic-spline coefficients of P (mode "constant"): what ``ndimage.shift`` computes from P on every
    call, computed once for all the positions of an image."""
    return ndimage.spline_filter(np.asarray(psf, dtype=np.float64), 3, output=np.float64, mode="constant")


def _fit_template(coeffs: np.ndarray, dx: float, dy: float, half: int | None = None) -> np.ndarray:
    """P shifted by (dx, dy) pixels (cubic spline), renormalised to sum 1, its small negative lobes kept.

    ``coeffs``: `_spline_coefficients` of P; the result is ``ndimage.shift(P, (dy, dx), order=3,
    mode="constant")`` divided by its sum (that call filters P and then interpolates the coefficients).

    ``half``: only the central ``2 half + 1`` pixels square are returned (the fitted pixels), interpolated
    from the coefficients within ``half + 3`` of the centre (the same bits as the full shift there: a cubic
    spline reaches two coefficients out); the normalising sum is that of the full shifted stamp,
    :func:`_shifted_sum` (equal to rounding). On a 101 x 101 P_D the full shift took 1 ms per position, a
    quarter of the detect stage's forced photometry.

    Unlike :func:`seechange.improc.inject.shifted_psf` (an injected source must be non-negative), a fit
    template keeps the spline's lobes: clipping them raised bright transients' forced fluxes by ~0.3 %
    on the simulated night of ``tests/integration/test_forced.py`` (pull mean 0.47 instead of 0.33).
    """
    k = coeffs.shape[0] // 2
    if half is None or half + 3 >= k:
        p = ndimage.shift(coeffs, (dy, dx), order=3, mode="constant", cval=0.0, prefilter=False)
        s = float(p.sum())
        return p / s if s > 0 else p
    m = half + 3
    part = ndimage.shift(
        coeffs[k - m : k + m + 1, k - m : k + m + 1], (dy, dx), order=3, mode="constant", prefilter=False
    )[3:-3, 3:-3]
    s = _shifted_sum(coeffs, dx, dy)
    return part / s if s > 0 else part


def _spline_sums(n: int, d: float) -> np.ndarray:
    """``w[j]``: the total weight coefficient ``j`` of a length-``n`` cubic-spline array gets when shifted
    by ``d`` as ``ndimage.shift(mode="constant", prefilter=False)`` does: output ``i`` samples the
    coefficients at ``i - d``, none outside ``[0, n - 1]``, taps beyond the ends mirrored (-1 -> 1)."""
    u = np.arange(n) - d
    u = u[(u >= 0) & (u <= n - 1)]
    j0 = np.floor(u).astype(np.intp)
    t = u - j0
    w = np.zeros(n)
    taps = ((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)
    for off, wt in zip((-1, 0, 1, 2), taps):
        j = np.abs(j0 + off)
        j = np.where(j > n - 1, 2 * (n - 1) - j, j)
        np.add.at(w, j, wt)
    return w


def _shifted_sum(coeffs: np.ndarray, dx: float, dy: float) -> float:
    """Sum of ``ndimage.shift(coeffs, (dy, dx), order=3, mode="constant", prefilter=False)``: the spline is a
    tensor product, so the sum is ``wy . coeffs . wx`` (`_spline_sums`; equal to rounding)."""
    wy = _spline_sums(coeffs.shape[0], dy)
    wx = _spline_sums(coeffs.shape[1], dx)
    return float(wy @ coeffs @ wx)


def forced_psf_photometry(
    diff: np.ndarray,
    variance: np.ndarray,
    flags: np.ndarray,
    psf: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_px: float,
    renorm: float = 1.0,
    score_var: np.ndarray | None = None,
    f_s: float | None = None,
    params: ForcedParams = ForcedParams(),
) -> ForcedResult:
    """PSF fluxes of D at fixed positions.

    Parameters
    ----------
    diff : ndarray
        Difference image D, electrons of the new image.
    variance : ndarray
        Variance of D per pixel, electrons^2 (inf or non-finite where no data).
    flags : ndarray of uint16
        Flags of D; flagged pixels get zero weight.
    psf : ndarray
        P_D, odd-sized, centred, sum 1.
    x, y : ndarray
        Positions, 0-based pixels (x = column).
    fwhm_px : float
        FWHM of P_D, pixels.
    renorm : float, optional
        Noise correction factor multiplying the error (the subtraction's ``renorm_factor``).
    score_var, f_s : ndarray and float, optional
        ZOGY's V_S (variance of S) and F_S (PSF flux = S / F_S); when given the error is taken from them.
    params : ForcedParams, optional
        Fit radius.

    Returns
    -------
    ForcedResult
        Fluxes and errors in electrons.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    ny, nx = diff.shape
    hy, hx = psf.shape[0] // 2, psf.shape[1] // 2
    r_fit = params.fit_radius_fwhm * fwhm_px
    n = x.size
    flux, err = np.full(n, np.nan), np.full(n, np.nan)
    n_bad = np.zeros(n, dtype=np.int64)
    coeffs = _spline_coefficients(psf) if n else psf
    # every pixel used (fitted, or counted in n_bad) is within max(r_fit, fwhm) of a position |dx|, |dy| <= 0.5
    # from the pixel it is rounded to: the template is needed on that square only
    reach = max(r_fit, fwhm_px)
    half = int(np.ceil(reach)) + 1 if np.isfinite(reach) and hy == hx else None
    if half is not None and half + 3 < hy:
        hy = hx = half
    else:
        half = None
    for i in range(n):
        ix, iy = int(np.rint(x[i])), int(np.rint(y[i]))
        dx, dy = x[i] - ix, y[i] - iy
        p = _fit_template(coeffs, dx, dy, half)
        y0, y1 = max(iy - hy, 0), min(iy + hy + 1, ny)
        x0, x1 = max(ix - hx, 0), min(ix + hx + 1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        p = p[y0 - (iy - hy) : y1 - (iy - hy), x0 - (ix - hx) : x1 - (ix - hx)]
        d = np.asarray(diff[y0:y1, x0:x1], dtype=np.float64)
        v = np.asarray(variance[y0:y1, x0:x1], dtype=np.float64)
        f = flags[y0:y1, x0:x1]
        yy, xx = np.ogrid[y0:y1, x0:x1]  # broadcast: the same r2 as from full grids
        r2 = (xx - x[i]) ** 2 + (yy - y[i]) ** 2
        usable = np.isfinite(v) & (v > 0) & np.isfinite(d) & (f == 0)
        n_bad[i] = int(np.count_nonzero(~usable & (r2 <= fwhm_px**2)))
        sel = usable & (r2 <= r_fit**2)
        if not sel.any():
            continue
        w = 1.0 / v[sel]
        pp = p[sel]
        a = float(np.sum(w * pp * pp))
        if a <= 0:
            continue
        flux[i] = float(np.sum(w * pp * d[sel])) / a
        err[i] = float(renorm) / np.sqrt(a)
    if score_var is not None and f_s:
        # sampled straight from the float32 frame into float64 (the same values as from a float64 copy of it)
        vs = ndimage.map_coordinates(
            np.asarray(score_var), [y, x], order=1, mode="nearest", output=np.float64
        )
        ok = np.isfinite(err) & np.isfinite(vs) & (vs > 0)
        err[ok] = float(renorm) * np.sqrt(vs[ok]) / float(f_s)
    return ForcedResult(flux=flux, flux_err=err, n_bad=n_bad)


def forced_on_zogy(result: ZogyResult, x: np.ndarray, y: np.ndarray, *, params: ForcedParams) -> ForcedResult:
    """:func:`forced_psf_photometry` on a ZOGY result's D, variance, flags, P_D, V_S and F_S (electrons)."""
    return forced_psf_photometry(
        result.diff,
        result.diff_variance,
        result.flags,
        result.psf_d,
        x,
        y,
        fwhm_px=result.fwhm_px,
        renorm=result.renorm_factor,
        score_var=result.score_var,
        f_s=result.f_s,
        params=params,
    )


def limiting_magnitude(flux_err: np.ndarray | float, zp: float, n_sigma: float = 5.0) -> np.ndarray:
    """``n_sigma`` limiting AB magnitude of a flux error (electrons) with zero point ``zp``; NaN if not > 0."""
    e = np.asarray(flux_err, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(e > 0, zp - 2.5 * np.log10(n_sigma * e), np.nan)
