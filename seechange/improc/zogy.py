"""ZOGY image subtraction (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27) with its noise corrections.

Both images must already be on one pixel grid. Conventions: ``F_n = 1`` and
``F_r = 10**(0.4 * (zp_ref - zp_new))`` (reference electrons per new-image electron), so fluxes measured in
the difference image and score are electrons of the *new* image, on its zero point.

What matters in practice (measured on real DECam pairs, see docs/ARCHITECTURE.md "Subtraction"): the source-noise variance terms, the astrometric-noise
term (removes bright-star dipoles), a small fractional flux-error term (removes most remaining bright-star
residuals), and renormalising S_corr by its robust spread when the input noise is correlated (stacks,
resampled images); white-noise inputs are left alone so that they are not over-corrected.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from astropy.stats import mad_std
from astropy.wcs import WCS
from scipy import fft as sfft
from scipy import ndimage

from seechange.errors import UnusableImage
from seechange.improc.types import FLAG_EDGE, ImageData
from seechange.parameters import StepParameters, default_threads
from seechange.units import FWHM_PER_SIGMA

__all__ = ["ZogyParams", "ZogyResult", "encircled_radius", "noise_correlation", "pad_psf", "zogy"]


@dataclass(frozen=True)
class ZogyParams(StepParameters):
    """Options of :func:`zogy`.

    Attributes
    ----------
    astrometric_sigma_x, astrometric_sigma_y : float
        Per-axis registration noise between the two images, pixels.
    flux_error_fraction : float
        Fractional error of the flux ratio F_r/F_n (0.005 to 0.01), dimensionless.
    renormalize : {'auto', 'always', 'never'}
        Renormalise S_corr by its robust spread: 'auto' when the measured neighbour-pixel noise correlation
        of either input exceeds ``correlation_threshold``.
    correlation_threshold : float
        Neighbour-pixel correlation coefficient above which noise is treated as correlated.
    min_empty_px : int
        Fewest valid pixels outside the inputs' light for the S_corr spread to be measured ('auto' does not
        renormalise below it).
    min_renorm, renorm_margin : float
        With 'auto', the renormalisation factor is kept within ``min_renorm`` and
        ``renorm_margin * (1 + 2 rho)``, rho the larger measured correlation.
    border_px : int or None
        Width of the frame border to flag (FFT wrap-around, truncated sources), pixels; None: the radius
        enclosing 99.5% of the flux of the broader PSF, at least 2 x FWHM (not the stamp half-width: stamps
        carry the PSF's faint wing far beyond that).
    float32 : bool
        Compute in single precision (measured: 1.5 s vs 2.3 s on 2048x4096; on the bench pair S_corr is
        within 4e-4 of the float64 result, rms 9e-6; the kernels of P_D and of the variances are made in
        float64 either way, on a small grid).
    """

    astrometric_sigma_x: float = 0.0
    astrometric_sigma_y: float = 0.0
    flux_error_fraction: float = 0.005
    renormalize: str = "auto"
    correlation_threshold: float = 0.1
    min_renorm: float = 0.8
    min_empty_px: int = 200
    renorm_margin: float = 1.1
    border_px: int | None = None
    float32: bool = True

    def __post_init__(self) -> None:
        if self.renormalize not in ("auto", "always", "never"):
            raise ValueError(f"renormalize must be 'auto', 'always' or 'never', got {self.renormalize!r}")
        if self.astrometric_sigma_x < 0 or self.astrometric_sigma_y < 0 or self.flux_error_fraction < 0:
            raise ValueError("astrometric sigmas and flux_error_fraction must be >= 0")


@dataclass
class ZogyResult:
    """Products of :func:`zogy` (all arrays on the new image's grid).

    Attributes
    ----------
    diff : ndarray, float32
        Difference image D / F_D, electrons of the new image: a transient of flux f (new electrons) appears
        as ``f * psf_d`` in it.
    diff_variance : ndarray, float32
        Variance of ``diff`` per pixel including source noise of both images, electrons^2.
    psf_d : ndarray, float32
        PSF of the difference image P_D (odd, centred, sum 1).
    f_d : float
        ZOGY flux zero point of the whitened D (``diff = D / f_d``).
    f_s : float
        Peak of S for a unit point source: PSF flux = S / f_s, electrons.
    score : ndarray, float32
        Matched-filter score S (units of f_s * electrons).
    score_var : ndarray, float32
        V_Sn + V_Sr + V_ast + V_flux, variance of S.
    score_corr : ndarray, float32
        S_corr = S / sqrt(score_var) / renorm_factor; 0 on the flagged border and no-data pixels.
    score_std : float
        Robust std (mad_std over source-free valid pixels) of S_corr before renormalisation.
    renorm_factor : float
        Factor S_corr was divided by (1.0 when not renormalised).
    flags : ndarray, uint16
        OR of both inputs' flags plus FLAG_EDGE on the border.
    noise_corr_new, noise_corr_ref : float
        Measured neighbour-pixel noise correlation of the inputs.
    zp : float
        Zero point of ``diff`` (the new image's), AB mag.
    fwhm_px : float
        FWHM of ``psf_d``, pixels.
    wcs : astropy.wcs.WCS
        WCS of the grid.
    border_px : int
        Flagged border width, pixels.
    """

    diff: np.ndarray
    diff_variance: np.ndarray
    psf_d: np.ndarray
    f_d: float
    f_s: float
    score: np.ndarray
    score_var: np.ndarray
    score_corr: np.ndarray
    score_std: float
    renorm_factor: float
    flags: np.ndarray
    noise_corr_new: float
    noise_corr_ref: float
    zp: float
    fwhm_px: float
    wcs: WCS
    border_px: int
    meta: dict = field(default_factory=dict)


def pad_psf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad a centred PSF stamp to ``shape`` with its centre moved to pixel (0, 0) (FFT origin)."""
    ky, kx = psf.shape
    if ky % 2 == 0 or kx % 2 == 0:
        raise ValueError(f"PSF stamp must be odd-sized, got {psf.shape}")
    if ky > shape[0] or kx > shape[1]:
        raise UnusableImage(f"PSF stamp {psf.shape} larger than image {shape}")
    out = np.zeros(shape, dtype=psf.dtype)
    out[:ky, :kx] = psf / psf.sum()
    return np.roll(out, (-(ky // 2), -(kx // 2)), axis=(0, 1))


def _central_block(ny: int, nx: int) -> tuple[slice, slice]:
    """The central 1024x1024 block of an ny x nx frame (all of it when that has at most 1 Mpx)."""
    if ny * nx <= 1024 * 1024:
        return slice(None), slice(None)
    y0, x0 = max(0, ny // 2 - 512), max(0, nx // 2 - 512)
    return slice(y0, y0 + 1024), slice(x0, x0 + 1024)


def noise_correlation(
    image: np.ndarray,
    valid: np.ndarray,
    *,
    clip: float = 3.0,
    fwhm: float | None = None,
    min_pixels: int = 2000,
    variance: np.ndarray | None = None,
    max_excess: float = 1.5,
) -> float:
    """Mean neighbour-pixel correlation coefficient of the noise (x and y neighbours), on empty sky only.

    Source light is not noise: measured on real CP cut-outs of a galaxy and of a star's halo, the plain
    neighbour correlation of all unclipped pixels was 0.6 to 0.96 (smooth light), switched the S_corr
    renormalisation on and divided S_corr by 1.7 to 7. So the light is removed first, as a background: a
    smooth map on boxes of about three FWHM (sep; halos and galaxies vary on that scale, pixel noise does
    not), and only background-dominated pixels are used: not within two pixels of a pixel beyond ``clip``
    robust sigma, nor where the 5 x 5 mean of the residual is beyond ``clip`` times its own robust spread
    (faint sources, wings).

    Parameters
    ----------
    image : ndarray
        Background-subtracted image, any units.
    valid : ndarray of bool
        Pixels to use.
    clip : float, optional
        Pixels beyond ``clip`` robust sigma (and their neighbours) are treated as sources and skipped.
    fwhm : float, optional
        PSF FWHM, pixels (sets the box of the light model; default 4).
    min_pixels : int, optional
        With fewer usable pixel pairs the correlation is not measurable and 0 is returned.
    variance : ndarray, optional
        Per-pixel noise variance the weights predict (same block as ``image``). When the pixels used
        scatter by more than ``max_excess`` times its square root, the frame is light-dominated everywhere
        (measured: 2 to 3.5 times on the CP cut-outs of a saturated star's halo) and 0 is returned: what
        could be measured there is the light, not the noise.
    max_excess : float, optional
        See ``variance``.

    Returns
    -------
    float
        Correlation coefficient in [-1, 1]; 0 where it cannot be measured.
    """
    import sep

    cb = _central_block(*np.shape(image))  # 1 Mpx is plenty (saves about 2 s on 2048x4096)
    img = np.ascontiguousarray(image[cb], dtype=np.float32)
    valid = np.asarray(valid[cb], dtype=bool)
    if np.count_nonzero(valid) < min_pixels:
        return 0.0
    box = int(max(8, round(3.0 * (fwhm if fwhm and np.isfinite(fwhm) else 4.0))))
    box = min(box, max(4, min(img.shape) // 2))
    try:
        light = sep.Background(img, mask=~valid, bw=box, bh=box, fw=3, fh=3).back()
    except Exception:  # noqa: BLE001 - sep refuses pathological frames: keep the plain (unfiltered) image
        light = np.zeros_like(img)
    x = (img - light).astype(np.float64)
    st = _stat_step(x.shape, min_pixels=250_000)  # clip level and offset: 1/4 of the 1 Mpx block
    sub = x[::st, ::st][valid[::st, ::st]]
    if sub.size < 10_000:
        sub = x[valid]
    sig = mad_std(sub)
    med = np.median(sub)
    del sub
    x -= med
    ok = valid & (np.abs(x) < clip * sig)
    ok = ndimage.binary_erosion(ok, iterations=2, border_value=0)
    mean5 = _box_mean(np.where(valid, x, 0.0), 5)
    # the two spreads below are thresholds, taken on the same every-st-th-pixel subsample as the clip level
    # (262,144 nodes of the 1 Mpx block: a MAD from N values is good to about 1.2 / sqrt(N), 0.25% here,
    # which moves a 3-sigma cut by less than 1e-4 of the pixels; 0.1 s less per frame)
    ss = (slice(None, None, st), slice(None, None, st))
    if np.count_nonzero(ok[ss]) < 10_000:
        ss = (slice(None), slice(None))
    if np.any(ok):
        ok &= np.abs(mean5) < clip * mad_std(mean5[ss][ok[ss]])
    if variance is not None and np.count_nonzero(ok) >= min_pixels:
        var = np.asarray(variance[cb][ss], dtype=np.float64)
        oks = ok[ss]
        if np.count_nonzero(oks) < 10_000:
            var, oks, xs = np.asarray(variance[cb], dtype=np.float64), ok, x
        else:
            xs = x[ss]
        excess = float(mad_std(xs[oks] / np.sqrt(np.maximum(var[oks], 1e-30))))
        if not excess <= max_excess:
            return 0.0
    vals = []
    for a, b, oa, ob in ((x[:, :-1], x[:, 1:], ok[:, :-1], ok[:, 1:]), (x[:-1], x[1:], ok[:-1], ok[1:])):
        m = oa & ob
        if m.sum() < min_pixels:
            continue
        u, v = a[m], b[m]
        vals.append(float(np.mean(u * v) / np.sqrt(np.mean(u * u) * np.mean(v * v))))
    return float(np.mean(vals)) if vals else 0.0


def _fwhm_of_stamp(psf: np.ndarray) -> float:
    """FWHM from second moments of a centred stamp (Gaussian equivalent), pixels."""
    ky, kx = psf.shape
    y, x = np.mgrid[0:ky, 0:kx]
    p = np.clip(psf, 0, None)
    s = p.sum()
    cx, cy = (p * x).sum() / s, (p * y).sum() / s
    var = (p * ((x - cx) ** 2 + (y - cy) ** 2)).sum() / s / 2.0
    return float(FWHM_PER_SIGMA * np.sqrt(max(var, 1e-6)))


def encircled_radius(psf: np.ndarray, fraction: float = 0.995) -> float:
    """Radius about the stamp centre enclosing ``fraction`` of a PSF stamp's (positive) flux, pixels."""
    p = np.clip(np.asarray(psf, dtype=np.float64), 0, None)
    ky, kx = p.shape
    y, x = np.mgrid[0:ky, 0:kx]
    r = np.hypot(x - kx // 2, y - ky // 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(p.ravel()[order])
    i = int(np.searchsorted(cum, fraction * cum[-1]))
    return float(r[order][min(i, r.size - 1)])


def _stat_step(shape: tuple[int, ...], min_pixels: int = 400_000) -> int:
    """Subsampling step (4, 2 or 1 in each direction) for a global robust statistic over a frame: the
    largest that still leaves ``min_pixels`` pixels (4 on a 2048x4096 CCD, 1 below 1.6 Mpx)."""
    n = int(np.prod(shape))
    for step in (4, 2):
        if n // (step * step) >= min_pixels:
            return step
    return 1


def _robust_spread(
    score_corr: np.ndarray,
    valid: np.ndarray,
    fwhm: float,
    score_var: np.ndarray | None = None,
    *,
    step: int | None = None,
    lit: np.ndarray | None = None,
) -> float:
    """mad_std of S_corr over background-limited valid pixels away from significant peaks.

    Pixels whose score variance exceeds the median by more than 10% (source noise, flux-error and
    astrometric terms: near stars and galaxies), pixels under light of either input (``lit``, see
    :func:`_lit`, full-frame or at the subsample's nodes only; weights without the sources' own noise do
    not show them) and pixels near |S_corr| > 4 sigma are left out.

    The statistics use every ``step``-th pixel in each direction (default :func:`_stat_step`: 4 on
    2048x4096, where this takes 0.06 s instead of 0.44 s and the result moves by 4e-5; S_corr is correlated
    over the PSF, so the subsample loses little information); the exclusion zones around peaks are found
    from *all* pixels, exactly as a full-frame box filter would mark them.
    """
    step = _stat_step(score_corr.shape) if step is None else max(1, int(step))
    sub = (slice(None, None, step), slice(None, None, step))
    if step > 1 and np.count_nonzero(valid[sub]) < 10_000:
        step, sub = 1, (slice(None), slice(None))  # small images: use every pixel
    v = valid[sub]
    if lit is not None:
        v = v & ~(lit if lit.shape == v.shape else lit[sub])  # given full-frame or at the subsample only
    if score_var is not None and np.any(v):
        sv = score_var[sub]
        bg = sv <= 1.1 * np.median(sv[v])
        if np.count_nonzero(v & bg) * step * step >= 1000:
            v = v & bg
    if not np.any(v):
        return 1.0
    sc = score_corr[sub]
    s0 = float(mad_std(sc[v]))
    half = max(1, round(2 * fwhm))  # box of 2 * half + 1 pixels around each peak pixel
    ys, xs = np.nonzero(np.abs(score_corr) > 4.0 * s0)
    peaks = np.zeros(v.shape, dtype=bool)
    if ys.size:
        # subsample nodes j (full-frame index j * step) within half of a peak pixel: ceil((y - half) / step)
        # .. floor((y + half) / step); the same pixels as ndimage.maximum_filter(size=2 * half + 1) marks
        ny_s, nx_s = v.shape
        lo_y, hi_y = -((half - ys) // step), (ys + half) // step
        lo_x, hi_x = -((half - xs) // step), (xs + half) // step
        for dy in range(2 * half // step + 1):
            jy = lo_y + dy
            oky = (jy <= hi_y) & (jy >= 0) & (jy < ny_s)
            for dx in range(2 * half // step + 1):
                jx = lo_x + dx
                ok = oky & (jx <= hi_x) & (jx >= 0) & (jx < nx_s)
                peaks[jy[ok], jx[ok]] = True
    quiet = v & ~peaks
    if quiet.sum() * step * step < 100:
        return s0
    return float(mad_std(sc[quiet]))


def _lit(img: np.ndarray, sigma: float, fwhm: float, nsigma: float = 4.0, *, step: int = 1) -> np.ndarray:
    """Pixels under an input's light: where its mean over a box of about 2 FWHM exceeds ``nsigma`` x the
    white-noise spread of that mean (faint galaxies, halos and wings that no threshold per pixel sees).

    Evaluated at every ``step``-th pixel in each direction only (``img[::step, ::step]``'s shape; the box
    means there are those of the full frame): :func:`_robust_spread` uses no other pixels. On 2048x4096
    with step 4 that is one row filter and a few strided sums instead of a full-frame box filter.
    """
    b = int(max(5, 2 * round(fwhm if np.isfinite(fwhm) else 2.0) + 1))
    a = np.asarray(img, dtype=np.float32)
    if step <= 1:
        mean = _box_mean(a, b)
    else:
        rows = ndimage.uniform_filter1d(a, b, axis=1, mode="constant")[:, ::step]
        lo = b // 2  # the box of uniform_filter (origin 0): y - b // 2 .. y + b - 1 - b // 2
        ny = a.shape[0]
        padded = np.zeros((ny + b - 1, rows.shape[1]), dtype=rows.dtype)
        padded[lo : lo + ny] = rows
        mean = padded[0:ny:step].copy()
        for d in range(1, b):
            mean += padded[d : d + ny : step]
        mean *= mean.dtype.type(1.0 / b)
    return np.asarray(mean > nsigma * sigma / b)


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.uniform_filter(a, size, mode="constant")`` of a 2-D array (the same values to float rounding).

    The filter along axis 0 is a sum of ``size`` shifted rows instead: scipy's walks the columns with a
    stride, 0.15 of the 0.17 s its box of 11 takes on 2048x4096 float32; this takes 0.04 s.
    """
    y = ndimage.uniform_filter1d(a, size, axis=1, mode="constant")
    lo = size // 2  # the window of uniform_filter1d (origin 0): i - size // 2 .. i + size - 1 - size // 2
    hi = size - 1 - lo
    out = y.copy()
    for d in range(1, min(lo, y.shape[0] - 1) + 1):
        out[d:] += y[:-d]
    for d in range(1, min(hi, y.shape[0] - 1) + 1):
        out[:-d] += y[d:]
    out *= out.dtype.type(1.0 / size)
    return out


def _lit_either(
    images: tuple[np.ndarray, np.ndarray],
    sigmas: tuple[float, float],
    fwhms: tuple[float, float],
    step: int,
) -> np.ndarray:
    """Pixels under the light of either prepared input, at every ``step``-th pixel (:func:`_lit`)."""
    return _lit(images[0], sigmas[0], fwhms[0], step=step) | _lit(images[1], sigmas[1], fwhms[1], step=step)


def _prepare(img: ImageData, bad: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray, float]:
    """Image with bad pixels zeroed, variance map with bad pixels at the median, background sigma."""
    # in ``dtype`` throughout (float64 temporaries here cost 0.35 s and 200 MB on 2048x4096)
    w: np.ndarray = np.asarray(img.weight, dtype=dtype)
    var: np.ndarray = np.zeros(w.shape, dtype=dtype)
    np.divide(dtype(1.0), w, out=var, where=~bad)
    # the median (a global scalar) from a regular subsample on large frames (:func:`_stat_step`, every 4th
    # pixel on 2048x4096: 0.02 s instead of 0.15 s, the same to ~1e-4; the variance map is smooth)
    st = _stat_step(var.shape)
    good_var = var[::st, ::st][~bad[::st, ::st]]
    if good_var.size < 10_000:
        good_var = var[~bad]
    if good_var.size == 0:
        raise UnusableImage("no valid pixels in image (every pixel flagged or of zero weight)")
    sigma2 = float(np.median(good_var))
    del good_var
    var[bad] = sigma2
    data = np.where(bad, dtype(0.0), np.asarray(img.image, dtype=dtype))
    return data, var, float(np.sqrt(sigma2))


def _gradient_sq(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.gradient(a, axis=axis) ** 2`` (unit spacing, same values) without its full-frame temporaries."""
    g = np.empty_like(a)
    av, gv = np.moveaxis(a, axis, 0), np.moveaxis(g, axis, 0)
    np.subtract(av[2:], av[:-2], out=gv[1:-1])
    gv[1:-1] *= a.dtype.type(0.5)
    gv[0] = av[1] - av[0]
    gv[-1] = av[-1] - av[-2]
    g *= g
    return g


def _noise_cov(img: ImageData) -> np.ndarray | None:
    """``img.meta['noise_cov']`` as an array (None: white noise); see :func:`zogy`, Notes."""
    c = (img.meta or {}).get("noise_cov")
    return None if c is None else np.asarray(c, dtype=np.float64)


def _noise_spectrum(
    cov: np.ndarray | None, shape: tuple[int, int], workers: int = 1, *, dtype: type = np.float64
) -> np.ndarray | None:
    """A = FFT(C) on the rfft half-plane of ``shape`` (real, > 0 for interpolation kernels); None if white."""
    if cov is None:
        return None
    c = pad_psf(np.asarray(cov, dtype=dtype), cov.shape)
    a = _rfft2_compact(c, shape, workers).real if shape != cov.shape else sfft.rfft2(c).real
    return np.maximum(a, 1e-6)


def _model_correlation(cov: np.ndarray | None) -> float:
    """Neighbour-pixel correlation (mean of x and y) that a normalised noise covariance stamp implies."""
    if cov is None or cov.shape[0] < 3:
        return 0.0
    c = cov.shape[0] // 2
    return float((cov[c, c + 1] + cov[c, c - 1] + cov[c + 1, c] + cov[c - 1, c]) / (4.0 * cov[c, c]))


def _spectra_rows(
    rows: slice,
    *,
    pn_hat: np.ndarray,
    pr_hat: np.ndarray,
    n_hat: np.ndarray,
    r_hat: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray],
    f_s_parts: dict[int, float],
    sig_n: float,
    sig_r: float,
    f_n: float,
    f_r: float,
    nx: int,
    nse_n: np.ndarray | None = None,
    nse_r: np.ndarray | None = None,
) -> None:
    """On ``rows`` of the rfft half-plane: the spectra of D (times F_D), S_n and S_r into ``out``, and
    this block's sum of |P_n|^2 |P_r|^2 / den (half-plane weights; the sum over the full spectrum, for F_S)
    into ``f_s_parts[rows.start]``.

    den = sigma_n^2 F_r^2 |P_r|^2 A_n + sigma_r^2 F_n^2 |P_n|^2 A_r (at least a tiny floor; A the noise
    spectra ``nse_n``, ``nse_r`` of correlated inputs, 1 when None: :func:`zogy`, Notes);
    D_hat = (F_r P_r N - F_n P_n R) / sqrt(den), S_n_hat = conj(P_n) F_n F_r^2 |P_r|^2 / den N and S_r_hat
    = conj(P_r) F_r F_n^2 |P_n|^2 / den R. Products are taken into fresh arrays (x * y, never in place into
    y): numpy's SIMD complex product is not symmetric in its operands to the last bit.
    """
    pn, pr = pn_hat[rows], pr_hat[rows]
    dt = pn.real.dtype.type
    pn2 = np.square(pn.real) + np.square(pn.imag)  # |P|^2, contiguous (no complex product)
    pr2 = np.square(pr.real) + np.square(pr.imag)
    denom = sig_n**2 * f_r**2 * pr2
    if nse_n is not None:
        denom *= nse_n[rows]
    if nse_r is None:
        denom += sig_r**2 * f_n**2 * pn2
    else:
        denom += sig_r**2 * f_n**2 * pn2 * nse_r[rows]
    np.maximum(denom, dt(np.finfo(dt).tiny * 1e6), out=denom)
    herm = np.full(pn2.shape[1], 2.0)
    herm[0] = 1.0
    if nx % 2 == 0:
        herm[-1] = 1.0
    q = pn2 * pr2
    q /= denom
    f_s_parts[rows.start] = float(q.sum(axis=0, dtype=np.float64) @ herm)
    del q
    a_n = f_n * f_r**2 * pr2 / denom  # real factors of the score kernels
    a_r = f_r * f_n**2 * pn2 / denom
    del pn2, pr2
    sq = np.sqrt(denom, out=denom)
    d_hat, sn_hat, sr_hat = (o[rows] for o in out)
    n, r = n_hat[rows], r_hat[rows]
    np.multiply(f_r, pr, out=d_hat)
    d_hat *= n
    t_hat = f_n * pn
    t_hat *= r
    d_hat -= t_hat
    del t_hat
    d_hat /= sq
    k_hat = np.conjugate(pn)
    k_hat *= a_n
    np.multiply(k_hat, n, out=sn_hat)
    np.conjugate(pr, out=k_hat)
    k_hat *= a_r
    np.multiply(k_hat, r, out=sr_hat)


def _weighted_sum_rows(
    rows: slice, *, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], out: np.ndarray
) -> None:
    """``out[rows] = a0 * a1 + b0 * b1`` on ``rows`` (the same values as on the whole frame)."""
    t = a[0][rows] * a[1][rows]
    t += b[0][rows] * b[1][rows]
    out[rows] = t


def _by_rows(fn: Callable[[slice], None], ny: int, threads: int, block: int = 256) -> None:
    """``fn(rows)`` on blocks of ``block`` rows covering ``ny``, by ``threads`` threads (numpy releases the
    GIL); a chain of full-frame operations run block by block stays in the cache."""
    blocks = [slice(y, min(y + block, ny)) for y in range(0, ny, block)]
    if threads <= 1 or len(blocks) == 1:
        for b in blocks:
            fn(b)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for f in [pool.submit(fn, b) for b in blocks]:
            f.result()


def _score_variance_rows(
    rows: slice,
    *,
    score: np.ndarray,
    score_var: np.ndarray,
    s_n: np.ndarray,
    s_r: np.ndarray,
    score_corr: np.ndarray,
    sig_xy: tuple[float, float],
    flux_error_fraction: float,
) -> None:
    """On ``rows``: V_S (``score_var``, in place) gets its astrometric and flux-error terms and S_corr =
    S / sqrt(V_S) goes into ``score_corr``. The same operations in the same order as on the whole frame;
    the y gradient reads one row beyond the block on either side (none at the frame's edges, where
    np.gradient takes one-sided differences)."""
    dt = score_var.dtype.type
    ny = score_var.shape[0]
    sv = score_var[rows]
    np.maximum(sv, 0, out=sv)
    for sig, axis in ((sig_xy[0], 1), (sig_xy[1], 0)):
        if sig > 0:
            if axis == 1:
                g2 = _gradient_sq(s_n[rows], axis)
                g2 += _gradient_sq(s_r[rows], axis)
            else:
                lo, hi = max(rows.start - 1, 0), min(rows.stop + 1, ny)
                inner = slice(rows.start - lo, rows.stop - lo)
                g2 = _gradient_sq(s_n[lo:hi], axis)[inner]
                g2 += _gradient_sq(s_r[lo:hi], axis)[inner]
            g2 *= dt(sig**2)
            sv += g2
            del g2
    v_flux = s_n[rows] * s_n[rows]
    v_flux += s_r[rows] * s_r[rows]
    v_flux *= dt(flux_error_fraction**2)
    sv += v_flux
    del v_flux
    np.maximum(sv, np.finfo(dt).tiny * 1e6, out=sv)
    sc = score_corr[rows]
    np.sqrt(sv, out=sc)
    np.divide(score[rows], sc, out=sc)


def _kernel_grid(n: int, stamp: int) -> int:
    """Length of the small grid of :func:`_kernels` along an axis of ``n`` pixels: 4 x the largest stamp (a
    fast FFT length), or ``n`` when that is not smaller."""
    m = int(sfft.next_fast_len(max(4 * stamp, 64), real=True))
    return min(n, m)


def _kernels(
    psf_n: np.ndarray,
    psf_r: np.ndarray,
    shape: tuple[int, int],
    *,
    sig_n: float,
    sig_r: float,
    f_n: float,
    f_r: float,
    f_d: float,
    floor: float,
    dtype: type,
    cov_n: np.ndarray | None = None,
    cov_r: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stamp of P_D and the squared real-space kernels of S_n, S_r and of D, per unit input variance.

    With a noise covariance C of an input (``cov_n``, ``cov_r``; :func:`zogy`, Notes) its noise spectrum A
    enters the denominator and its two "squared" kernels are ``k * (k conv C)`` (the variance of ``k conv
    noise`` per unit noise density, for a variance map that is smooth on the kernel's scale).

    Each depends on the two PSFs only, so it is computed (float64) on a grid of 4 x the largest stamp
    (:func:`_kernel_grid`) instead of the frame: the kernels are the convolution of the two stamps with a
    whitening factor, about two stamp widths across, so the periodic images of a grid four stamps wide do
    not overlap them (measured on 2048x4096 with stamps of 81 and 101 px: S_corr differs from the
    full-frame kernels by < 1e-5 of its spread). Kernels are returned on that grid, origin at (0, 0)
    (:func:`_rfft2_compact` transforms them as if on the frame); P_D as a centred stamp of the larger input stamp's size, sum 1.
    ``floor`` is the smallest denominator (as in :func:`zogy`); the squared kernels are returned in ``dtype``.

    Returns
    -------
    psf_d, kn2, kr2, kdn2, kdr2 : ndarray
        kn2, kr2: the squares of the kernels of S_n, S_r (conj(P_n) F_n F_r^2 |P_r|^2 / den and its mirror);
        kdn2, kdr2: of D / F_D (F_r P_r / sqrt(den) / F_D and F_n P_n / sqrt(den) / F_D).
    """
    ky = max(psf_n.shape[0], psf_r.shape[0])
    kx = max(psf_n.shape[1], psf_r.shape[1])
    grid = (_kernel_grid(shape[0], ky), _kernel_grid(shape[1], kx))
    pn_hat = sfft.rfft2(pad_psf(np.asarray(psf_n, dtype=np.float64), grid))
    pr_hat = sfft.rfft2(pad_psf(np.asarray(psf_r, dtype=np.float64), grid))
    pn2 = (pn_hat * pn_hat.conj()).real
    pr2 = (pr_hat * pr_hat.conj()).real
    a_n, a_r = _noise_spectrum(cov_n, grid), _noise_spectrum(cov_r, grid)
    denom = np.maximum(
        sig_n**2 * f_r**2 * pr2 * (1.0 if a_n is None else a_n)
        + sig_r**2 * f_n**2 * pn2 * (1.0 if a_r is None else a_r),
        floor,
    )
    sq = np.sqrt(denom)

    def irfft(a: np.ndarray) -> np.ndarray:
        return sfft.irfft2(a, s=grid)

    half_y, half_x = ky // 2, kx // 2
    pd = irfft(f_r * f_n * pr_hat * pn_hat / (f_d * sq))
    psf_d = pd[np.ix_(np.arange(-half_y, half_y + 1) % grid[0], np.arange(-half_x, half_x + 1) % grid[1])]
    psf_d = psf_d.astype(np.float32)
    psf_d /= psf_d.sum()
    k_hats = (
        (pn_hat.conj() * (f_n * f_r**2 * pr2 / denom), a_n),
        (pr_hat.conj() * (f_r * f_n**2 * pn2 / denom), a_r),
        (f_r * pr_hat / sq / f_d, a_n),
        (f_n * pn_hat / sq / f_d, a_r),
    )
    sq_k: list[np.ndarray] = [
        (irfft(k_hat) * irfft(k_hat if a is None else k_hat * a)).astype(dtype) for k_hat, a in k_hats
    ]
    return psf_d, sq_k[0], sq_k[1], sq_k[2], sq_k[3]


def _rfft2_compact(k: np.ndarray, shape: tuple[int, int], workers: int) -> np.ndarray:
    """``rfft2`` of a frame of ``shape`` that is zero but for the periodic kernel ``k`` (origin at (0, 0)).

    The same values as transforming the whole frame (pocketfft's rfft2 is this: the rows, then the
    columns), but only the kernel's rows are transformed along x (measured on 2048x4096 with a 405 px
    kernel: 0.040 s instead of 0.060 s).
    """
    ny, nx = shape
    if k.shape[0] > ny or k.shape[1] > nx:
        raise UnusableImage(f"PSF stamp {k.shape} larger than image {shape}")
    if k.shape == shape:
        return sfft.rfft2(k, workers=workers)
    iy = np.fft.fftfreq(k.shape[0], 1.0 / k.shape[0]).astype(int) % ny
    ix = np.fft.fftfreq(k.shape[1], 1.0 / k.shape[1]).astype(int) % nx
    rows = np.zeros((k.shape[0], nx), dtype=k.dtype)
    rows[:, ix] = k
    row_hat = sfft.rfft(rows, axis=1, workers=workers)
    spec = np.zeros((ny, nx // 2 + 1), dtype=row_hat.dtype)
    spec[iy] = row_hat
    return sfft.fft(spec, axis=0, workers=workers, overwrite_x=True)


def zogy(
    new: ImageData, ref: ImageData, *, params: ZogyParams = ZogyParams(), threads: int | None = None
) -> ZogyResult:
    """Proper image subtraction of ``ref`` from ``new`` (ZOGY) with a corrected score image.

    Parameters
    ----------
    new, ref : ImageData
        Images on the same pixel grid (electrons, inverse-variance weights, flags, PSF stamps, zero
        points). Pixels flagged (or with weight 0) in either image are set to 0 in both and flagged.
    params : ZogyParams
        Astrometric and flux-error terms, renormalisation policy, border, precision.
    threads : int, optional
        Threads of the FFTs (``scipy.fft`` workers); default every core of the machine. With more than
        one, the reference's preparation, the light masks and the noise correlations run in one more
        thread meanwhile (the results are the same).

    Returns
    -------
    ZogyResult
        D (in new-image electrons), its variance and PSF, S, S_corr, F_D, F_S, flags, noise diagnostics.

    Notes
    -----
    Correlated noise. An input resampled onto the grid (``resample_image``) carries in
    ``meta['noise_cov']`` the covariance C of its noise between pixels at each lag, normalised to sum 1
    (odd, centred stamp): its noise is white noise of the weight map's variance v passed through the
    interpolation kernel, with spectrum v A(k), A = FFT(C), A(0) = 1. The weight map is the inverse of v, the
    noise density (exact at low frequencies: sums over many pixels), not of the per-pixel variance v C[0, 0]
    (0.25 v at a half-pixel offset in both axes, order 1); and v is what the linear interpolation of the
    variance map gives ((1 - f) v_1 + f v_2: the density at the source point), while (1 - f)^2 v_1 + f^2 v_2
    is that per-pixel variance. Here A enters where ZOGY assumes white noise: the denominator
    ``sigma_n^2 F_r^2 |P_r|^2 A_n + sigma_r^2 F_n^2 |P_n|^2 A_r`` (so D stays white and S optimal), and the
    variance of S and of D, ``v conv (k * (k conv C))`` instead of ``v conv k^2`` for each kernel k
    (on :func:`_kernels`' small grid; A on the frame is one compact transform of the small stamp). The neighbour correlation that C implies
    is subtracted from the measured one before the renormalisation decision and its bound: that correlation
    is modelled, only the rest (stacks, the CP's own resampling) calls for the empirical correction. Without
    ``noise_cov`` (white inputs) nothing changes.
    """
    if new.shape != ref.shape:
        raise ValueError(f"new {new.shape} and ref {ref.shape} are not on the same grid")
    dt = np.float32 if params.float32 else np.float64
    w = default_threads() if threads is None else threads
    bad = (
        ((np.asarray(new.flags) | np.asarray(ref.flags)) != 0)
        | ~(np.asarray(new.weight) > 0)
        | ~(np.asarray(ref.weight) > 0)
    )
    # the steps that numpy runs on one core (preparing the inputs, the light masks, the noise correlations)
    # go to a second thread while this one runs the FFTs (issue 11: 2 cores); results do not depend on it
    pool = ThreadPoolExecutor(max_workers=1) if w > 1 else None
    try:
        return _zogy(new, ref, bad, params, dt, w, pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _zogy(
    new: ImageData,
    ref: ImageData,
    bad: np.ndarray,
    params: ZogyParams,
    dt: type,
    w: int,
    pool: ThreadPoolExecutor | None,
) -> ZogyResult:
    """:func:`zogy` after its checks; ``pool`` (or None: everything here) runs the side statistics."""

    def later(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
        if pool is None:
            value = fn(*args, **kwargs)
            return lambda: value
        return pool.submit(fn, *args, **kwargs).result

    ny, nx = new.shape
    ref_prepared = later(_prepare, ref, bad, dt)
    n_img, v_n, sig_n = _prepare(new, bad, dt)
    r_img, v_r, sig_r = ref_prepared()
    f_n = 1.0
    f_r = float(10 ** (0.4 * (ref.zp - new.zp)))
    f_d = float(
        f_r * f_n / np.sqrt(sig_n**2 * f_r**2 + sig_r**2 * f_n**2)
    )  # python float: keeps FFTs in float32
    # P_D and the real-space kernels whose squares weight the variance maps depend on the PSFs only and
    # are compact: made on a small grid (:func:`_kernels`) instead of five full-frame inverse FFTs
    cov_n, cov_r = _noise_cov(new), _noise_cov(ref)
    psf_d, kn_sq, kr_sq, kdn_sq, kdr_sq = _kernels(
        new.psf,
        ref.psf,
        (ny, nx),
        cov_n=cov_n,
        cov_r=cov_r,
        sig_n=sig_n,
        sig_r=sig_r,
        f_n=f_n,
        f_r=f_r,
        f_d=f_d,
        floor=float(np.finfo(dt).tiny) * 1e6,
        dtype=dt,
    )
    fwhm_d = _fwhm_of_stamp(psf_d)
    border = params.border_px
    if border is None:
        border = int(
            np.ceil(
                max(
                    encircled_radius(new.psf),
                    encircled_radius(ref.psf),
                    2 * max(new.fwhm_px, ref.fwhm_px, fwhm_d),
                )
            )
        )
    flags = np.asarray(new.flags, dtype=np.uint16) | np.asarray(ref.flags, dtype=np.uint16)
    if border > 0:
        for strip in (
            np.s_[:border],
            np.s_[max(ny - border, 0) :],
            np.s_[:, :border],
            np.s_[:, max(nx - border, 0) :],
        ):
            flags[strip] |= FLAG_EDGE
    nodata = (flags & FLAG_EDGE) != 0
    valid = ~nodata & ~bad
    # noise_correlation looks at the central 1024x1024 block only
    cb = _central_block(ny, nx)
    fwhms = (float(new.fwhm_px), float(ref.fwhm_px))
    # the spread of S_corr and the light masks use every step-th pixel (:func:`_robust_spread`)
    step = _stat_step((ny, nx))
    if step > 1 and np.count_nonzero(valid[::step, ::step]) < 10_000:
        step = 1
    lit_later = later(_lit_either, (n_img, r_img), (sig_n, sig_r), fwhms, step)
    corr_later = [
        later(noise_correlation, img[cb].copy(), valid[cb], fwhm=fwhm, variance=var[cb].copy())
        for img, var, fwhm in ((n_img, v_n, fwhms[0]), (r_img, v_r, fwhms[1]))
    ]

    def rfft(a: np.ndarray) -> np.ndarray:
        return sfft.rfft2(a, workers=w)

    def irfft(a: np.ndarray) -> np.ndarray:
        """irfft2 of a temporary spectrum (overwritten): the columns, then the rows, as pocketfft's irfft2
        does (the same values) but without its copy of the input (2048x4096: 0.040 s instead of 0.054 s)."""
        a = sfft.ifft(a, axis=0, workers=w, overwrite_x=True)
        return sfft.irfft(a, n=nx, axis=1, workers=w, overwrite_x=True).astype(dt, copy=False)

    # Memory (issue 11): each spectrum is made when it is about to be used and freed after its last use;
    # in-place only where the operands keep their order
    # the PSF stamps centred on pixel (0, 0), transformed as if zero-padded to the frame (pad_psf)
    pn_hat = _rfft2_compact(pad_psf(np.asarray(new.psf, dtype=dt), new.psf.shape), (ny, nx), w)
    pr_hat = _rfft2_compact(pad_psf(np.asarray(ref.psf, dtype=dt), ref.psf.shape), (ny, nx), w)
    n_hat = rfft(n_img)
    r_hat = rfft(r_img)
    del n_img, r_img
    # the spectra of D, S_n and S_r in one pass by blocks of rows on the threads (a chain of operations on
    # the whole frame goes through memory once per operation); F_S is summed on the way
    d_hat, sn_hat, sr_hat = (np.empty_like(n_hat) for _ in range(3))
    f_s_parts: dict[int, float] = {}
    spectra = partial(
        _spectra_rows,
        pn_hat=pn_hat,
        pr_hat=pr_hat,
        n_hat=n_hat,
        r_hat=r_hat,
        out=(d_hat, sn_hat, sr_hat),
        f_s_parts=f_s_parts,
        sig_n=sig_n,
        sig_r=sig_r,
        f_n=f_n,
        f_r=f_r,
        nx=nx,
        nse_n=_noise_spectrum(cov_n, (ny, nx), w, dtype=dt),
        nse_r=_noise_spectrum(cov_r, (ny, nx), w, dtype=dt),
    )
    _by_rows(spectra, ny, w)
    del spectra, pn_hat, pr_hat, n_hat, r_hat
    # F_S: peak of S for a point source of 1 electron (new-image units) in either image
    f_s = float(f_n**2 * f_r**2 * sum(f_s_parts[k] for k in sorted(f_s_parts)) / (ny * nx))
    diff = irfft(d_hat)
    del d_hat
    diff /= dt(f_d)
    s_n = irfft(sn_hat)
    del sn_hat
    s_r = irfft(sr_hat)
    del sr_hat
    score = s_n - s_r
    # V_Sn + V_Sr and the variance of D, each in one inverse FFT (the transform is linear; only the sums
    # are used)
    vn_hat = rfft(v_n)
    vr_hat = rfft(v_r)
    del v_n, v_r
    variances = []
    for k_n, k_r in ((kn_sq, kr_sq), (kdn_sq, kdr_sq)):
        # V_hat * K_n_hat + V_r_hat * K_r_hat by blocks of rows on the threads, into K_n_hat's memory
        kn_hat, kr_hat = _rfft2_compact(k_n, (ny, nx), w), _rfft2_compact(k_r, (ny, nx), w)
        _by_rows(partial(_weighted_sum_rows, a=(vn_hat, kn_hat), b=(vr_hat, kr_hat), out=kn_hat), ny, w)
        del kr_hat
        variances.append(irfft(kn_hat))
        del kn_hat
    score_var, diff_var = variances
    del variances, vn_hat, vr_hat
    np.maximum(diff_var, 0, out=diff_var)
    score_corr = np.empty_like(score_var)
    fill = partial(
        _score_variance_rows,
        score=score,
        score_var=score_var,
        s_n=s_n,
        s_r=s_r,
        score_corr=score_corr,
        sig_xy=(params.astrometric_sigma_x, params.astrometric_sigma_y),
        flux_error_fraction=params.flux_error_fraction,
    )
    _by_rows(fill, ny, w)
    del fill, s_n, s_r

    corr_new, corr_ref = (c() for c in corr_later)
    lit = lit_later()
    # the spread is measured on empty sky only; with too little of it (a frame filled by a galaxy or a
    # halo) it is not measurable there and 'auto' leaves S_corr alone
    # (counted at every step-th pixel, times step^2)
    empty = int(np.count_nonzero(valid[::step, ::step] & ~lit)) * step * step
    measurable = empty >= params.min_empty_px
    score_std = _robust_spread(
        score_corr, valid, fwhm_d, score_var, step=step, lit=lit if measurable else None
    )
    del lit
    # only the correlation the noise model does not hold calls for the empirical correction (Notes)
    excess = max(corr_new - _model_correlation(cov_n), corr_ref - _model_correlation(cov_r))
    do_renorm = params.renormalize == "always" or (
        params.renormalize == "auto" and measurable and excess > params.correlation_threshold
    )
    renorm = score_std if (do_renorm and np.isfinite(score_std) and score_std > 0) else 1.0
    if do_renorm and params.renormalize == "auto":
        # bounded by what the measured correlation can do: white noise filtered to a neighbour correlation
        # rho raises the spread of a PSF-filtered sum by about 1 + 2 rho (measured on the real stacks:
        # rho 0.35 to 0.46, spread 1.13 to 1.62); more than that is light or residuals, not noise
        rho = max(excess, 0.0)
        renorm = float(np.clip(renorm, params.min_renorm, params.renorm_margin * (1.0 + 2.0 * rho)))
    score_corr /= dt(renorm)
    score_corr = score_corr.astype(np.float32, copy=False)
    score_corr[nodata] = 0.0

    return ZogyResult(
        diff=diff.astype(np.float32, copy=False),
        diff_variance=diff_var.astype(np.float32, copy=False),
        psf_d=psf_d,
        f_d=float(f_d),
        f_s=f_s,
        score=score.astype(np.float32, copy=False),
        score_var=score_var.astype(np.float32, copy=False),
        score_corr=score_corr,
        score_std=score_std,
        renorm_factor=float(renorm),
        flags=flags,
        noise_corr_new=corr_new,
        noise_corr_ref=corr_ref,
        zp=float(new.zp),
        fwhm_px=fwhm_d,
        wcs=new.wcs.deepcopy(),
        border_px=int(border),
        meta={"sigma_n": sig_n, "sigma_r": sig_r, "f_r": f_r, "n_bad": int(bad.sum())},
    )
