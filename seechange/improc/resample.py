"""Resample an :class:`~seechange.improc.types.ImageData` onto another pixel grid.

The pixel map (target pixel -> source pixel) is computed through the two WCSs on a coarse grid (every
``grid_step`` pixels) and interpolated to full resolution with a bicubic spline; distortions are smooth on
that scale. Measured on 2048x4096 (2 cores): the full per-pixel WCS transform costs about 1.3 s, the coarse
map plus interpolation about 0.1 s; see ``resample_image`` for the end-to-end figure.
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy.wcs import WCS
from scipy import ndimage

from seechange.improc.types import FLAG_EDGE, ImageData
from seechange.parameters import default_threads

__all__ = [
    "combine_noise_covariance",
    "interpolation_weights",
    "pixel_map",
    "resample_image",
    "resampling_kernels",
]


def pixel_map(
    source_wcs: WCS, target_wcs: WCS, target_shape: tuple[int, int], *, grid_step: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Source-image pixel coordinates of every target pixel.

    Parameters
    ----------
    source_wcs, target_wcs : astropy.wcs.WCS
        Celestial WCSs of the source image and of the target grid.
    target_shape : tuple of int
        ``(ny, nx)`` of the target grid, pixels.
    grid_step : int, optional
        Spacing of the coarse grid on which the WCS transform is evaluated, pixels.

    Returns
    -------
    sx, sy : ndarray, float64, shape ``target_shape``
        0-based source column and row of each target pixel, pixels.
    """
    ny, nx = (int(target_shape[0]), int(target_shape[1]))
    if ny < 2 or nx < 2:
        raise ValueError(f"target_shape must be at least 2x2, got {target_shape}")
    if grid_step < 1:
        raise ValueError("grid_step must be >= 1")
    gy, gx, csx, csy = _coarse_map(source_wcs, target_wcs, ny, nx, grid_step)
    return _upsample(csx, gy, gx, ny, nx), _upsample(csy, gy, gx, ny, nx)


def _coarse_map(
    source_wcs: WCS, target_wcs: WCS, ny: int, nx: int, grid_step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nodes ``gy``, ``gx`` of the coarse grid and the source column / row at each node, pixels."""
    gx = np.unique(np.r_[np.arange(0, nx, grid_step), nx - 1]).astype(float)
    gy = np.unique(np.r_[np.arange(0, ny, grid_step), ny - 1]).astype(float)
    cx, cy = np.meshgrid(gx, gy)
    world = target_wcs.celestial.pixel_to_world_values(cx, cy)
    csx, csy = source_wcs.celestial.world_to_pixel_values(*world)
    return gy, gx, np.asarray(csx, dtype=float), np.asarray(csy, dtype=float)


def _upsample(
    coarse: np.ndarray,
    gy: np.ndarray,
    gx: np.ndarray,
    ny: int,
    nx: int,
    rows: slice | None = None,
    out: np.ndarray | None = None,
    cols: np.ndarray | None = None,
) -> np.ndarray:
    """Separable linear interpolation of a coarse grid (nodes gy, gx) to the full ny x nx grid (or to the
    target rows ``rows`` of it only, into ``out`` if given).

    Measured on 2048x4096: about 0.05 s per map, against 0.5 s for a bicubic spline evaluated on the full
    grid; the map is smooth, so linear interpolation on 32 px cells is exact to far below 0.01 px. Rows are
    filled one coarse cell at a time (outer products, no gathered full-size temporaries): 3x faster than
    indexing the node rows per pixel row. ``cols`` (``_upsample_cols(coarse, gx, nx)``, optional) lets the
    callers that fill one map in row blocks interpolate along x once instead of once per block.
    """
    if cols is None:
        cols = _upsample_cols(coarse, gx, nx)
    y = np.arange(ny, dtype=float) if rows is None else np.arange(ny, dtype=float)[rows]
    j = np.clip(np.searchsorted(gy, y, side="right") - 1, 0, gy.size - 2)
    t = (y - gy[j]) / (gy[j + 1] - gy[j])
    if out is None:
        out = np.empty((y.size, nx))
    tmp = np.empty((0, nx))
    starts = np.r_[0, np.flatnonzero(np.diff(j)) + 1, y.size]
    for a, b in itertools.pairwise(starts.tolist()):
        k = j[a]
        np.multiply.outer(1.0 - t[a:b], cols[k], out=out[a:b])  # the same products and sum as
        if tmp.shape[0] < b - a:  # cols[j] * (1 - t) + cols[j + 1] * t
            tmp = np.empty((b - a, nx))
        np.multiply.outer(t[a:b], cols[k + 1], out=tmp[: b - a])
        out[a:b] += tmp[: b - a]
    return out


def _upsample_cols(coarse: np.ndarray, gx: np.ndarray, nx: int) -> np.ndarray:
    """The coarse grid interpolated along x to every column: (len(gy), nx)."""
    return coarse @ _linear_weights(gx, nx).T


def _linear_weights(nodes: np.ndarray, n: int) -> np.ndarray:
    """(n, len(nodes)) matrix of linear-interpolation weights from the nodes to 0..n-1."""
    x = np.arange(n, dtype=float)
    j = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
    t = (x - nodes[j]) / (nodes[j + 1] - nodes[j])
    w = np.zeros((n, nodes.size))
    w[np.arange(n), j] = 1.0 - t
    w[np.arange(n), j + 1] = t
    return w


# --- what the interpolation does to a PSF and to the noise ---------------------------------------------------
#
# Resampling with ``map_coordinates`` at a target pixel whose source coordinate is ``n + f`` (n integer,
# 0 <= f < 1) takes sum_m w_m(f) I(n + m): for order 1, w_0 = 1 - f and w_1 = f; for splines the weights of
# the prefiltered (cardinal) spline, which reach a few pixels. A star of continuous profile P then appears
# on the target grid as P_eff(d) = sum_m w_m(f) P(d + m - f), i.e. convolved with a kernel of zero mean and,
# for order 1, variance f (1 - f) per axis (0.25 px^2 at f = 0.5: +35 % on the PSF variance of an LS4 star of
# FWHM 2 px, +4 % for DECam's 5 px). White noise of variance v becomes correlated with covariance
# v * sum_m w_m w_{m+l} at lag l (per pixel (1-f)^2 + f^2 times v, not v), and with the same density v at
# low spatial frequency (sum_m w_m = 1), which is what the linear interpolation of the variance map gives.


def interpolation_weights(frac: float, order: int, *, support: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the source samples ``n + m`` that resampling with ``order`` gives at source coordinate ``n + frac``.

    Parameters
    ----------
    frac : float
        Fractional part of the source coordinate, in [0, 1).
    order : int
        Spline order of ``scipy.ndimage.map_coordinates`` (0..5), with its spline prefilter for order > 1
        (as :func:`resample_image` does).
    support : int, optional
        Largest |m| kept for the splines (their cardinal weights fall by about 3.7 per sample for order 3).

    Returns
    -------
    (ndarray of int, ndarray of float)
        Offsets ``m`` and weights ``w_m`` (sum 1).
    """
    f = float(frac) - np.floor(float(frac))
    if order == 0:
        return np.array([0, 1]), (np.array([0.0, 1.0]) if f >= 0.5 else np.array([1.0, 0.0]))
    if order == 1:
        return np.array([0, 1]), np.array([1.0 - f, f])
    coeff = _cardinal_coefficients(order, support)
    c = coeff.size // 2
    m = np.arange(-support, support + 1)
    # the weight of sample n + m at n + f is the interpolant of a delta at n + m, evaluated at n + f
    w = ndimage.map_coordinates(coeff, [c - m + f], order=order, prefilter=False, mode="mirror")
    return m, w / w.sum()


@functools.lru_cache(maxsize=8)
def _cardinal_coefficients(order: int, support: int) -> np.ndarray:
    """Spline coefficients of a unit sample in the middle of a zero array of 8 x ``support`` + 5 samples."""
    delta = np.zeros(8 * support + 5)
    delta[delta.size // 2] = 1.0
    return ndimage.spline_filter1d(delta, order=order, mode="mirror")


def _fraction_histogram(
    gy: np.ndarray, gx: np.ndarray, csx: np.ndarray, csy: np.ndarray, ny: int, nx: int, *, bins: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distribution of the fractional source coordinates (f_x, f_y) over the target pixels.

    Sampled on every 13th row and column (about 50,000 pixels of a 2048x4096 CCD, a few ms; 13 is prime, so
    no regular pattern of the map is aliased), binned ``bins x bins`` over [0, 1)^2. Returns the mean f_x
    and f_y of the samples in each non-empty bin and the bins' fractions of the samples.
    """
    step = 13 if min(ny, nx) >= 13 * 16 else 1
    rows = slice(0, ny, step)
    sx = _upsample(csx, gy, gx, ny, nx, rows)[:, ::step].ravel()
    sy = _upsample(csy, gy, gx, ny, nx, rows)[:, ::step].ravel()
    fx, fy = sx - np.floor(sx), sy - np.floor(sy)
    b = np.minimum((fx * bins).astype(np.intp), bins - 1) * bins + np.minimum(
        (fy * bins).astype(np.intp), bins - 1
    )
    count = np.bincount(b, minlength=bins * bins).astype(float)
    keep = count > 0
    mfx = np.bincount(b, weights=fx, minlength=bins * bins)[keep] / count[keep]
    mfy = np.bincount(b, weights=fy, minlength=bins * bins)[keep] / count[keep]
    return mfx, mfy, count[keep] / count.sum()


def _transfer(frac: float, order: int, k: np.ndarray) -> np.ndarray:
    """H(k) = sum_m w_m exp(i k (m - f)): the interpolation's effect on a centred PSF, per axis."""
    m, w = interpolation_weights(frac, order)
    return np.exp(1j * np.multiply.outer(k, m - (frac - np.floor(frac)))) @ w


def _lag_covariance(frac: float, order: int) -> np.ndarray:
    """sum_m w_m w_{m+l} for lags l = -L..L (odd length, sum 1): the interpolated noise's covariance per axis."""
    _, w = interpolation_weights(frac, order)
    return np.convolve(w, w[::-1])


def resampling_kernels(
    fx: np.ndarray, fy: np.ndarray, prob: np.ndarray, order: int, psf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The PSF and the noise covariance of an image resampled with ``order`` at fractional offsets (fx, fy).

    Parameters
    ----------
    fx, fy, prob : ndarray
        Fractional source coordinates and the fraction of the target pixels at each (see
        :func:`_fraction_histogram`).
    order : int
        Spline order of the image interpolation.
    psf : ndarray
        The source image's PSF stamp (odd, centred).

    Returns
    -------
    (ndarray, ndarray)
        The PSF stamp of the resampled image (same shape, sum 1): the source stamp convolved, in Fourier space
        (as ZOGY uses it: the stamp's own band-limited interpolation, so exact at any sub-pixel offset), with
        the interpolation kernel averaged over the target pixels, ``mean(H_x(f_x) H_y(f_y))``; and the
        normalised noise covariance ``mean(C_x(f_x) C_y(f_y))`` (odd, centred, sum 1: lag 0 holds the
        per-pixel variance as a fraction of the low-frequency noise density).

    Notes
    -----
    The mean kernel is the best single one in the least-squares sense (a star at offset f leaves a residual
    ``P (K_f - K_mean)``, whose mean square over the stars is smallest for the mean); on a nearly aligned pair
    (f almost constant) it is the kernel at that f. The signal kernel is the mean of H, the noise spectrum the
    mean of |H|^2: they differ when f varies (for order 1 and f spread over [0, 1): the tent kernel, |sinc|^4
    against (2 + cos k) / 3). The axes are the source image's; the pairs subtracted here differ in rotation
    by well under a degree.
    """
    p = np.asarray(psf, dtype=np.float64)
    ky, kx = p.shape
    pad = 16
    ly, lx = ky + 2 * pad, kx + 2 * pad  # odd: no Nyquist term, the product stays real
    big = np.zeros((ly, lx))
    big[pad : pad + ky, pad : pad + kx] = p
    big = np.roll(big, (-(ly // 2), -(lx // 2)), axis=(0, 1))
    ky_f = 2 * np.pi * np.fft.fftfreq(ly)
    kx_f = 2 * np.pi * np.fft.rfftfreq(lx)
    h = np.zeros((ly, kx_f.size), dtype=complex)
    covs = []
    for a, b, q in zip(fx, fy, prob):
        h += q * np.multiply.outer(_transfer(b, order, ky_f), _transfer(a, order, kx_f))
        covs.append((q, np.outer(_lag_covariance(b, order), _lag_covariance(a, order))))
    out = np.fft.irfft2(np.fft.rfft2(big) * h, s=(ly, lx))
    out = np.roll(out, (ly // 2, lx // 2), axis=(0, 1))[pad : pad + ky, pad : pad + kx]
    size = max(c.shape[0] for _, c in covs)
    cov = np.zeros((size, size))
    for q, c in covs:
        o = (size - c.shape[0]) // 2
        cov[o : o + c.shape[0], o : o + c.shape[1]] += q * c
    cov = _trim(cov)
    return (out / out.sum()).astype(np.float32), cov / cov.sum()


def _trim(cov: np.ndarray, rel: float = 1e-5) -> np.ndarray:
    """Crop a centred covariance stamp to the smallest odd square holding every |value| > rel x its centre."""
    c = cov.shape[0] // 2
    big = np.argwhere(np.abs(cov) > rel * abs(cov[c, c]))
    r = int(np.max(np.abs(big - c))) if big.size else 0
    return cov[c - r : c + r + 1, c - r : c + r + 1]


def combine_noise_covariance(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Covariance of noise of covariance ``a`` passed through a filter whose own covariance is ``b``: a * b.

    Either may be None (white noise); stamps are odd, centred and of sum 1."""
    if a is None:
        return b
    if b is None:
        return a
    from scipy.signal import fftconvolve

    return _trim(fftconvolve(np.asarray(a, float), np.asarray(b, float)))


def _or_dilate(flags: np.ndarray) -> np.ndarray:
    """Bitwise OR of each pixel's 3x3 neighbourhood (flags spread by one pixel)."""
    padded = np.pad(flags, 1, mode="edge")
    ny, nx = flags.shape
    out = np.zeros_like(flags)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + ny, dx : dx + nx]
    return out


def _coarse_jacobian_det(
    gy: np.ndarray, gx: np.ndarray, csx: np.ndarray, csy: np.ndarray
) -> np.ndarray | None:
    """|d(sx, sy)/d(x, y)| (source pixels per target pixel) on the coarse grid, or None if it is 1 everywhere
    to 1e-4 (same pixel scale); interpolated linearly to the pixels by the caller."""
    if gy.size < 2 or gx.size < 2:
        return None
    dxx = np.gradient(csx, gx, axis=1)
    dxy = np.gradient(csx, gy, axis=0)
    dyx = np.gradient(csy, gx, axis=1)
    dyy = np.gradient(csy, gy, axis=0)
    det = np.abs(dxx * dyy - dxy * dyx)
    if np.max(np.abs(det - 1.0)) < 1e-4:
        return None
    return det


def resample_image(
    data: ImageData,
    target_wcs: WCS,
    target_shape: tuple[int, int],
    *,
    order: int = 3,
    grid_step: int = 32,
    identity_tol_px: float = 1e-3,
    threads: int | None = None,
) -> ImageData:
    """Resample an image, its variance and its flags onto a target WCS grid.

    Parameters
    ----------
    data : ImageData
        Source image (electrons, inverse-variance weight, flags, PSF, WCS).
    target_wcs : astropy.wcs.WCS
        WCS of the target grid.
    target_shape : tuple of int
        ``(ny, nx)`` of the target grid, pixels.
    order : int, optional
        Spline order for the image pixels (``scipy.ndimage.map_coordinates``); 3 (bicubic B-spline) keeps
        the PSF sharpest, 1 is faster and never rings. The variance is always interpolated linearly.
    grid_step : int, optional
        Spacing of the coarse WCS grid, pixels.
    identity_tol_px : float, optional
        If the map differs from the identity by less than this everywhere (same grid), the image is copied
        unchanged so that it is not smoothed by a no-op interpolation, pixels.
    threads : int, optional
        Threads interpolating row blocks in parallel; default every core of the machine.

    Returns
    -------
    ImageData
        New object on the target grid. Image values are multiplied by the pixel-area ratio so that total
        flux (electrons) is conserved when the pixel scales differ. The weight is the inverse of the
        linearly interpolated variance (times the area ratio squared); it ignores the noise correlation
        that interpolation creates between neighbouring pixels (the pixel-to-pixel rms of the resampled
        noise is lower than the weight says, the noise of sums over a PSF is about right). Flags are
        OR-propagated from every source pixel within one pixel of the nearest source pixel; target pixels
        that map outside the source get ``FLAG_EDGE`` and weight 0. The PSF stamp is the source stamp
        convolved with the interpolation kernel averaged over the target pixels' fractional source
        offsets (:func:`resampling_kernels`): order 1 adds f (1 - f) px^2 per axis to the PSF's variance
        (0.25 at half a pixel, +35 % for an LS4 star of FWHM 2 px; the unchanged stamp left a residual at
        every bright star), order 3 keeps the second moments and damps only near the Nyquist frequency.
        ``meta['noise_cov']`` is the normalised covariance of the resampled noise (the input's, if any,
        convolved with the interpolation's), which :func:`seechange.improc.zogy.zogy` models; the
        variance map stays the linear interpolation of the input's, the noise density that goes with that
        covariance. ``meta['resample_order']`` and ``meta['resample_mean_frac']`` record the order and the
        mean fractional offsets (x, y).

    Notes
    -----
    Input arrays are never modified.
    """
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"order must be 0..5, got {order}")
    ny, nx = (int(target_shape[0]), int(target_shape[1]))
    if ny < 2 or nx < 2:
        raise ValueError(f"target_shape must be at least 2x2, got {target_shape}")
    if grid_step < 1:
        raise ValueError("grid_step must be >= 1")
    gy, gx, csx, csy = _coarse_map(data.wcs, target_wcs, ny, nx, grid_step)
    meta = dict(data.meta)
    if data.shape == (ny, nx):
        dev = max(np.max(np.abs(csx - gx[None, :])), np.max(np.abs(csy - gy[:, None])))
        if dev < identity_tol_px:
            meta["resample_order"] = None
            return ImageData(
                image=data.image.astype(np.float32, copy=True),
                weight=data.weight.astype(np.float32, copy=True),
                flags=data.flags.astype(np.uint16, copy=True),
                psf=data.psf.copy(),
                wcs=target_wcs.deepcopy(),
                zp=data.zp,
                fwhm_px=data.fwhm_px,
                bkg_level=data.bkg_level,
                bkg_rms=data.bkg_rms,
                astrom_rms_arcsec=data.astrom_rms_arcsec,
                mjd=data.mjd,
                band=data.band,
                meta=meta,
            )

    # the PSF and noise covariance the interpolation leaves, from the map's own fractional offsets
    fx, fy, prob = _fraction_histogram(gy, gx, csx, csy, ny, nx)
    psf_out, cov = resampling_kernels(fx, fy, prob, order, data.psf)
    cov_in = meta.get("noise_cov")
    meta["noise_cov"] = combine_noise_covariance(None if cov_in is None else np.asarray(cov_in, float), cov)
    meta["resample_mean_frac"] = [float(np.sum(prob * fx)), float(np.sum(prob * fy))]

    sny, snx = data.shape
    flags_in = np.asarray(data.flags, dtype=np.uint16)
    weight_in = np.asarray(data.weight, dtype=np.float32)
    bad_in = (flags_in != 0) | ~(weight_in > 0)
    img = np.where(bad_in, np.float32(0.0), np.asarray(data.image, dtype=np.float32))
    var = np.zeros(img.shape, dtype=np.float32)
    np.divide(np.float32(1.0), weight_in, out=var, where=~bad_in)
    del bad_in
    flags_grown = _or_dilate(flags_in)
    area = _coarse_jacobian_det(gy, gx, csx, csy)
    if order > 1:  # prefilter in float32 (0.3 s instead of about 0.55 s in float64 on 2048x4096)
        img = ndimage.spline_filter(img, order=order, output=np.float32, mode="nearest")
    out_img = np.empty((ny, nx), dtype=np.float32)
    out_weight = np.empty((ny, nx), dtype=np.float32)
    out_flags = np.empty((ny, nx), dtype=np.uint16)
    # interpolated along x once per map here, not once per row block (the small matrix product was
    # repeated 8 times per map, about 0.25 s of CPU in all on 2048x4096)
    cols_y, cols_x = _upsample_cols(csy, gx, nx), _upsample_cols(csx, gx, nx)
    cols_a = None if area is None else _upsample_cols(area, gx, nx)

    def block(rows: slice) -> None:
        # the pixel map of these target rows only (float64, as map_coordinates wants): never a full-frame
        # pair of coordinate maps, and the two blocks run in parallel (map_coordinates releases the GIL)
        coords = np.empty((2, rows.stop - rows.start, nx))
        _upsample(csy, gy, gx, ny, nx, rows, out=coords[0], cols=cols_y)
        _upsample(csx, gy, gx, ny, nx, rows, out=coords[1], cols=cols_x)
        sy, sx = coords[0], coords[1]
        o_img, o_var = out_img[rows], np.empty((rows.stop - rows.start, nx), np.float32)
        ndimage.map_coordinates(img, coords, order=order, mode="nearest", output=o_img, prefilter=False)
        ndimage.map_coordinates(var, coords, order=1, mode="nearest", output=o_var, prefilter=False)
        inside = (sx >= -0.5) & (sx <= snx - 0.5) & (sy >= -0.5) & (sy <= sny - 0.5)
        iy = np.rint(sy).astype(np.intp)
        ix = np.rint(sx).astype(np.intp)
        del coords, sx, sy
        np.clip(iy, 0, sny - 1, out=iy)
        np.clip(ix, 0, snx - 1, out=ix)
        o_flags = out_flags[rows]
        o_flags[...] = flags_grown[iy, ix]
        del iy, ix
        o_flags[~inside] |= FLAG_EDGE
        if area is not None:
            a = _upsample(area, gy, gx, ny, nx, rows, cols=cols_a).astype(np.float32)
            o_img *= a
            a *= a
            o_var *= a
            del a
        o_img[~inside] = 0.0
        bad_out = (o_flags != 0) | ~(o_var > 0)
        o_w = out_weight[rows]
        o_w[...] = 0.0
        np.divide(np.float32(1.0), o_var, out=o_w, where=~bad_out)

    # row blocks in parallel threads: with two, identical pixels in about 0.6 of the time (2048x4096,
    # order 3: 0.57 s -> 0.35 s measured here); smaller blocks keep the per-block coordinate maps small
    step = max(1, -(-ny // 8))
    blocks = [slice(y0, min(y0 + step, ny)) for y0 in range(0, ny, step)]
    with ThreadPoolExecutor(max_workers=default_threads() if threads is None else max(1, threads)) as pool:
        for f in [pool.submit(block, r) for r in blocks]:
            f.result()

    meta["resample_order"] = order
    return ImageData(
        image=out_img,
        weight=out_weight,
        flags=out_flags,
        psf=psf_out,
        wcs=target_wcs.deepcopy(),
        zp=data.zp,
        fwhm_px=data.fwhm_px,
        bkg_level=data.bkg_level,
        bkg_rms=data.bkg_rms,
        astrom_rms_arcsec=data.astrom_rms_arcsec,
        mjd=data.mjd,
        band=data.band,
        meta=meta,
    )
