"""Photometry, shape and analytic quality flags of difference-image detections.

PSF flux choice: ``flux = S / F_S`` at the (sub-pixel interpolated) peak of S, error
``sqrt(V_S) * renorm / F_S``. Under ZOGY's model S is the matched filter of D with P_D, so S/F_S is the
maximum-likelihood flux of a point source at that position (identical to a PSF fit on D with P_D), it is
already computed, and its error comes from the same variance maps (source noise of both images, astrometric
and flux-ratio terms, correlated-noise renormalisation) that make S_corr, so ``snr == |S_corr|`` at the
peak. Pulls on injected sources are verified in ``tests/unit/test_measure.py`` and on real data in
``seechange.evaluation.real``.

Near bright stars (flag ``QF_NEAR_BRIGHT``): a star of flux F leaves residuals in D of order F times the
PSF models' error and, when it varies, its change (``a F P_D``) reaches into its wing, where S_corr sits
on a plateau and noise peaks cross 5 sigma. The residual level is measured on each nearby star itself:
``eps`` = the rms of D in rings around the star, in excess of D's noise, over the star's wing ``F prof(r)``
(decam-sfft: 0.02 to 0.07 within a night, 0.15 to 0.8 across epochs two years apart with 0.3 px of
registration noise; no fixed fraction fits both). The star's reach grows with its flux: the largest radius
where the residual's contribution to the matched-filter score, ``eps F prof(r) sqrt(NEA_D) / sigma_local``,
is still ``bright_wing_sigma`` (1) times the local noise. A detection within that reach, fainter than the
star, not on the star itself (more than half a FWHM of P_D from its peak: the star's own change is real),
not brighter than the residual's peaks there (|SNR| <= ``bright_peak_factor`` x the residual's score) and
whose noise budget the star dominates (``bright_var_factor``) is flagged; so is one within the wing
of a saturated star or bleed trail (whose flux cannot be measured). Flags, not deletions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from seechange.improc.types import FLAG_BLEED, FLAG_EDGE, FLAG_SATURATED, ImageData
from seechange.improc.zogy import ZogyResult
from seechange.parameters import StepParameters
from seechange.units import FWHM_PER_SIGMA, electrons_to_njy

__all__ = [
    "QF_BAD_PIXELS",
    "QF_DIPOLE",
    "QF_DUPLICATE",
    "QF_EDGE",
    "QF_ELONGATED",
    "QF_NEAR_BRIGHT",
    "QF_NEG_FRACTION",
    "QF_PSF_CHI2",
    "QF_WIDTH",
    "MeasureParams",
    "measure_sightings",
]

QF_DIPOLE = 1
QF_NEG_FRACTION = 2
QF_BAD_PIXELS = 4
QF_WIDTH = 8
QF_ELONGATED = 16
QF_EDGE = 32
QF_NEAR_BRIGHT = 64
QF_PSF_CHI2 = 128
QF_DUPLICATE = 256


@dataclass(frozen=True)
class MeasureParams(StepParameters):
    """Options of :func:`measure_sightings` (all critical).

    Attributes
    ----------
    aper_radii_fwhm : tuple of float
        Aperture radii in units of the FWHM of P_D.
    shape_min_snr : float
        The width cut applies only at |SNR| >= this (widths are noise at lower SNR; the sharpness and
        elongation cuts apply at every SNR).
    max_sharpness : float
        At every SNR: a detection whose D at the peak pixel exceeds this many times what a point source of
        its PSF flux would have there (``|flux| * max(P_D)``) is flagged ``QF_WIDTH`` (cosmic rays, hot
        pixels: not convolved by the PSF). A point source gives 1 with a noise of about
        ``sqrt(pi) sigma_PSF / SNR`` (0.5 at SNR 5 for FWHM 3.5 px); a one-pixel hit gives about
        ``pi sigma_PSF^2`` (7 at FWHM 3.5 px). Applied only where that exceeds twice the cut (FWHM >= 2.8 px
        for the default 3); 0 disables it.
    width_range : tuple of float
        Allowed FWHM / FWHM(P_D).
    max_elongation : float
        Largest allowed axis ratio at |SNR| >= ``elongation_ref_snr``.
    elongation_ref_snr : float
        Below this |SNR| the allowed excess of the axis ratio over 1 grows as ``elongation_ref_snr / |SNR|``
        (3 at SNR 10 and 5 at SNR 5 for the defaults); the cut applies at every SNR.
    max_psf_chi2 : float
        At every SNR: a detection whose reduced chi^2 of D against ``flux x P_D`` within 1.5 FWHM exceeds
        this, times ``(|SNR| / 10)^2`` above SNR 10 (PSF-model errors grow with flux), is flagged
        ``QF_PSF_CHI2``. Measured on point sources injected into real decam-sfft frames at SNR 5 to 12:
        median 0.77, 99 % below 1.33, largest 2.5; a cosmic-ray remainder there: 19.6. 0 disables it.
    max_neg_fraction : float
        Largest allowed fraction of opposite-sign pixels of D within 1 FWHM.
    bright_stars : bool
        Flag ``QF_NEAR_BRIGHT`` (see the module docstring); False disables it.
    bright_wing_sigma : float
        A star's reach ends where its measured wing residual, turned into matched-filter score
        (``eps F prof(r) sqrt(NEA_D)``), falls below this many times the local noise of D.
    bright_peak_factor : float
        ... or below the detection's |SNR| over this factor: peaks of a residual pattern reach about this
        many times its rms (3, as for Gaussian noise), so a detection brighter than that is not one of them.
    bright_var_factor : float
        ... and only when the score variance at the detection exceeds this factor times its median over the
        frame (the star, not the sky, sets the noise there).
    """

    aper_radii_fwhm: tuple[float, ...] = (1.0, 2.0, 3.0)
    shape_min_snr: float = 10.0
    max_sharpness: float = 3.0
    max_psf_chi2: float = 4.0
    width_range: tuple[float, float] = (0.5, 2.0)
    max_elongation: float = 2.0
    elongation_ref_snr: float = 20.0
    max_neg_fraction: float = 0.55
    bright_stars: bool = True
    bright_wing_sigma: float = 1.0
    bright_peak_factor: float = 3.0
    bright_var_factor: float = 1.5


def _peak_value(a: np.ndarray, y: int, x: int, sign: float = 1.0) -> float:
    """Value at the sub-pixel maximum of ``sign * a`` from parabolas through the peak and its neighbours
    (both axes); ``sign`` -1 reads a minimum without a negated copy of the frame."""
    ny, nx = a.shape
    v = sign * float(a[y, x])
    corr = 0.0
    for lo, hi in (((y, x - 1), (y, x + 1)), ((y - 1, x), (y + 1, x))):
        if min(lo) < 0 or hi[0] >= ny or hi[1] >= nx:
            continue
        m, p = sign * float(a[lo]), sign * float(a[hi])
        den = m - 2 * v + p
        if den < 0:
            d = float(np.clip(0.5 * (m - p) / den, -0.5, 0.5))
            corr += -0.25 * (m - p) * d
    return v + corr


def _windowed_cov(img: np.ndarray, x: float, y: float, sigw: float, sign: float = 1.0) -> np.ndarray | None:
    """Second-moment matrix of ``sign * img`` around (x, y) with a Gaussian window of sigma ``sigw``,
    with the window deconvolved (exact for a Gaussian profile); None if unmeasurable."""
    r = int(np.ceil(4 * sigw))
    ny, nx = img.shape
    ix, iy = round(x), round(y)
    y0, y1, x0, x1 = max(iy - r, 0), min(iy + r + 1, ny), max(ix - r, 0), min(ix + r + 1, nx)
    gy, gx = np.mgrid[y0:y1, x0:x1]
    dx, dy = gx - x, gy - y
    box = img[y0:y1, x0:x1]
    w = np.exp(-(dx * dx + dy * dy) / (2 * sigw * sigw)) * (box if sign > 0 else -box)
    s = w.sum()
    if not s > 0:
        return None
    m = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]]) / s
    try:
        inv = np.linalg.inv(m) - np.eye(2) / sigw**2
        if np.any(np.linalg.eigvalsh(inv) <= 0):
            return None
        return np.linalg.inv(inv)
    except np.linalg.LinAlgError:
        return None


def _shape(cov: np.ndarray | None) -> tuple[float, float]:
    if cov is None:
        return float("nan"), float("nan")
    ev = np.linalg.eigvalsh(cov)
    if ev[0] <= 0:
        return float("nan"), float("nan")
    return float(FWHM_PER_SIGMA * (ev[0] * ev[1]) ** 0.25), float(np.sqrt(ev[1] / ev[0]))


def _duplicates(
    xc: np.ndarray, yc: np.ndarray, sign: np.ndarray, strength: np.ndarray, radius: float
) -> np.ndarray:
    """True for every detection whose centroid lies within ``radius`` of a stronger one of the same sign.

    Two local maxima of S_corr on one source (a broad or structured residual) converge to one windowed
    centroid; without this they made two good sightings of one thing (measured on real decam-sfft frames).
    """
    n = len(xc)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    pairs = cKDTree(np.column_stack([xc, yc])).query_pairs(radius, output_type="ndarray")
    for i, j in pairs:
        if sign[i] != sign[j]:
            continue
        weaker = j if (strength[i], -i) > (strength[j], -j) else i
        out[weaker] = True
    return out


def _too_sharp(
    diff: np.ndarray,
    xp: np.ndarray,
    yp: np.ndarray,
    sign: np.ndarray,
    flux: np.ndarray,
    psf_d: np.ndarray,
    fwhm: float,
    max_sharpness: float,
) -> np.ndarray:
    """True where D at the peak pixel is more than ``max_sharpness`` x a point source's (see MeasureParams)."""
    n = len(xp)
    sigma = fwhm / FWHM_PER_SIGMA
    if max_sharpness <= 0 or n == 0 or not np.pi * sigma**2 >= 2.0 * max_sharpness:
        return np.zeros(n, dtype=bool)
    p = np.asarray(psf_d, np.float64)
    peak = float(p.max() / p.sum())
    expected = np.abs(flux) * peak
    with np.errstate(divide="ignore", invalid="ignore"):
        sharp = sign * diff[yp, xp] / expected
    return np.asarray((expected > 0) & (sharp > max_sharpness))


def _psf_chi2(
    diff: np.ndarray,
    dvar: np.ndarray,
    bad: np.ndarray,
    xc: np.ndarray,
    yc: np.ndarray,
    flux: np.ndarray,
    psf_d: np.ndarray,
    fwhm: float,
) -> np.ndarray:
    """Reduced chi^2 of D against ``flux x P_D`` centred on (xc, yc), within 1.5 FWHM (NaN: < 5 pixels).

    A point source gives about 1 at any SNR below where PSF-model errors matter; a cosmic-ray track or a
    hot-pixel cluster that the masks missed is not shaped like P_D and gives several (measured on the real
    decam-sfft frames: 4 to 8 sigma worm tracks of SNR 5 to 9 in S_corr).
    """
    p = np.asarray(psf_d, np.float64)
    p = p / p.sum()
    k = p.shape[0] // 2
    rad = 1.5 * fwhm
    r = int(np.ceil(rad))
    ny, nx = diff.shape
    out = np.full(len(xc), np.nan)
    for i in range(len(xc)):
        ix, iy = round(float(xc[i])), round(float(yc[i]))
        if not (r <= ix < nx - r and r <= iy < ny - r) or r > k:
            continue
        # a linear interpolation reaches one pixel: shifting the central (2 r + 3)^2 of P_D gives the fitted
        # (2 r + 1)^2 to rounding (the whole 101 x 101 stamp per sighting was 0.1 s of a detect stage)
        m0 = k - r - 1 if r < k else 0
        sh = ndimage.shift(
            p[m0 : p.shape[0] - m0, m0 : p.shape[1] - m0], (yc[i] - iy, xc[i] - ix), order=1, mode="constant"
        )
        sl = (slice(iy - r, iy + r + 1), slice(ix - r, ix + r + 1))
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        m = (
            (np.hypot(xx + ix - xc[i], yy + iy - yc[i]) <= rad)
            & ~bad[sl]
            & (dvar[sl] > 0)
            & np.isfinite(dvar[sl])
        )
        if m.sum() < 5:
            continue
        c = k - m0
        model = flux[i] * sh[c - r : c + r + 1, c - r : c + r + 1]
        chi = (diff[sl] - model)[m] ** 2 / dvar[sl][m]
        out[i] = float(chi.sum() / (m.sum() - 1))
    return out


def _radial_profile(psf: np.ndarray) -> np.ndarray:
    """Azimuthal mean of a centred stamp at integer radii 0..half (fraction of the flux per pixel)."""
    p = np.asarray(psf, np.float64) / float(np.sum(psf))
    k = p.shape[0] // 2
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    r = np.rint(np.hypot(xx, yy)).astype(int).ravel()
    prof = np.bincount(r, weights=p.ravel()) / np.maximum(np.bincount(r), 1)
    return prof[: k + 1]


def _wing_residual(
    diff: np.ndarray,
    dvar: np.ndarray,
    flags: np.ndarray,
    x_s: float,
    y_s: float,
    f_s: float,
    prof: np.ndarray,
    avoid: tuple[float, float],
    fwhm: float,
) -> float:
    """Residual of a star in D as a fraction of its wing: median over rings of rms excess / (F prof(r)).

    Rings of one pixel width from half a FWHM out to where the wing ``f_s * prof(r)`` drops below 3 sigma
    of D (measurable rings only); unflagged pixels, and none within one FWHM of ``avoid`` (the detection
    itself: a real transient there must not raise its neighbour's residual). 0 when no ring is measurable.
    """
    rmax = len(prof) - 1
    ny, nx = diff.shape
    ix, iy = round(x_s), round(y_s)
    y0, y1, x0, x1 = max(iy - rmax, 0), min(iy + rmax + 1, ny), max(ix - rmax, 0), min(ix + rmax + 1, nx)
    gy, gx = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(gx - x_s, gy - y_s)
    ok = (flags[y0:y1, x0:x1] == 0) & (np.hypot(gx - avoid[0], gy - avoid[1]) > fwhm)
    d, v = diff[y0:y1, x0:x1], dvar[y0:y1, x0:x1]
    fracs = []
    for k in range(max(1, int(np.ceil(0.5 * fwhm))), rmax + 1):
        ring = ok & (np.abs(r - k) < 0.5)
        if ring.sum() < 5:
            continue
        noise2 = float(np.mean(v[ring]))
        wing = f_s * float(prof[k])
        if not wing >= 3.0 * np.sqrt(noise2):
            break
        fracs.append(np.sqrt(max(float(np.mean(d[ring] ** 2)) - noise2, 0.0)) / wing)
    return float(np.median(fracs)) if fracs else 0.0


def _near_bright(
    images: Sequence[np.ndarray],
    flags: np.ndarray,
    xc: np.ndarray,
    yc: np.ndarray,
    flux: np.ndarray,
    psf: np.ndarray,
    fwhm: float,
    sigma: float,
    *,
    diff: np.ndarray,
    dvar: np.ndarray,
    snr: np.ndarray,
    wing_sigma: float,
    peak_factor: float,
    dominated: np.ndarray,
) -> np.ndarray:
    """True where a detection lies within the measured residual reach of a brighter star, or of saturation.

    Stars are the local maxima above 10 sigma in each image within ``len(profile)`` pixels of the
    detection; a star's flux is its aperture sum (radius 2.5 FWHM) over the PSF's aperture fraction; its
    residual fraction ``eps`` is measured on D around it (`_wing_residual`); the residual's score there is
    ``z_res(r) = eps * flux * profile(r) * sqrt(NEA) / noise`` (noise: the larger of the detection's and the
    frame's ``sigma``) and the star's reach is the largest radius where ``z_res`` is at least
    ``wing_sigma`` and at least ``|snr| / peak_factor`` (a residual's peaks reach a few times its rms: a
    detection much brighter than that is not one of them). A detection within the reach of a star brighter
    than itself, more than half a FWHM from the star's peak, is flagged when it is ``dominated`` (its score
    variance well above the sky's). Saturated pixels (flags) reach twice the radius of their blob plus
    2 FWHM (measured on simulated nights: no false positives remain beyond that once the reference keeps
    every input's saturation flags); bleed pixels 2 FWHM.
    """
    prof = _radial_profile(psf)
    rmax = len(prof) - 1
    ny, nx = flags.shape
    rap = 2.5 * fwhm
    k = psf.shape[0] // 2
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    pn = np.asarray(psf, np.float64) / float(np.sum(psf))
    apfrac = float(pn[np.hypot(xx, yy) <= rap].sum())
    sqrt_nea = 1.0 / float(np.sqrt(np.sum(pn * pn)))  # noise-equivalent area of P_D, sqrt(pixels)
    win = max(3, int(2 * round((fwhm - 1) / 2) + 1))
    sat_bits = np.uint16(FLAG_SATURATED | FLAG_BLEED)
    out = np.zeros(len(xc), dtype=bool)
    for i in range(len(xc)):
        ix, iy = round(float(xc[i])), round(float(yc[i]))
        y0, y1, x0, x1 = max(iy - rmax, 0), min(iy + rmax + 1, ny), max(ix - rmax, 0), min(ix + rmax + 1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        fl = flags[y0:y1, x0:x1]
        if np.any(fl & sat_bits):
            sat = (fl & np.uint16(FLAG_SATURATED)) != 0
            gy, gx = np.nonzero(sat)
            if gy.size:
                lab, nlab = ndimage.label(sat)
                sizes = ndimage.sum_labels(sat, lab, index=np.arange(1, nlab + 1))
                reach = 2.0 * np.sqrt(sizes[lab[gy, gx] - 1] / np.pi) + 2.0 * fwhm
                if np.any(np.hypot(gx + x0 - xc[i], gy + y0 - yc[i]) <= reach):
                    out[i] = True
                    continue
            by, bx = np.nonzero((fl & np.uint16(FLAG_BLEED)) != 0)  # bleed trails: their own width only
            if by.size and np.any(np.hypot(bx + x0 - xc[i], by + y0 - yc[i]) <= 2.0 * fwhm):
                out[i] = True
                continue
        if not dominated[i]:
            continue
        for img in images:
            box = np.asarray(img[y0:y1, x0:x1], dtype=np.float64)  # float64 comparisons, as before
            peaks = (box == ndimage.maximum_filter(box, size=win, mode="nearest")) & (box > 10.0 * sigma)
            py, px = np.nonzero(peaks)
            if py.size == 0:
                continue
            order = np.argsort(-box[py, px])[:20]
            sx, sy = (px[order] + x0).astype(float), (py[order] + y0).astype(float)
            fstar = sep.sum_circle(img, sx, sy, rap)[0] / apfrac  # img: C-contiguous float32 or float64
            d = np.hypot(sx - xc[i], sy - yc[i])
            for f_s, d_s, x_s, y_s in zip(fstar, d, sx, sy, strict=True):
                if not (f_s > abs(float(flux[i])) and d_s > 0.5 * fwhm):
                    continue
                eps = _wing_residual(diff, dvar, flags, x_s, y_s, f_s, prof, (xc[i], yc[i]), fwhm)
                local = float(np.sqrt(dvar[iy, ix])) if 0 <= iy < ny and 0 <= ix < nx else sigma
                z_res = eps * f_s * prof * sqrt_nea / max(local, sigma)  # the residual's score, sigma
                reach = np.nonzero(z_res >= max(wing_sigma, abs(float(snr[i])) / peak_factor))[0]
                if reach.size and d_s <= reach[-1] + 1:
                    out[i] = True
                    break
            if out[i]:
                break
    return out


def measure_sightings(
    zogy_result: ZogyResult,
    new: ImageData,
    ref: ImageData,
    detections: Table,
    *,
    params: MeasureParams = MeasureParams(),
    zp: float | None = None,
) -> Table:
    """Photometry, centroid, shape and quality flags for each detection.

    Parameters
    ----------
    zogy_result : ZogyResult
        Difference products (D in new-image electrons, its variance, S, S_corr, P_D).
    new, ref : ImageData
        The new image and the reference on the same grid (their flags count bad pixels; fluxes in them at
        the first aperture are reported for context).
    detections : astropy.table.Table
        Output of :func:`seechange.improc.detection.detect_transients`.
    params : MeasureParams, optional
        Apertures and quality-cut thresholds.
    zp : float, optional
        Zero point of D (AB mag); default ``zogy_result.zp`` (the new image's).

    Returns
    -------
    astropy.table.Table
        One row per detection: ``index``, ``x``, ``y`` (windowed centroid on D, 0-based px), ``x_peak``,
        ``y_peak``, ``score``, ``is_positive``, ``flux_psf``, ``flux_psf_err`` (electrons, signed),
        ``flux_aper``/``flux_aper_err`` (n_aper columns, electrons), ``aper_radii_px``, ``mag``, ``mag_err``
        (AB, from |flux_psf|), ``flux_njy``, ``flux_njy_err``, ``snr``, ``fwhm_px``, ``elongation``,
        ``background`` (local median of D, electrons/px), ``neg_fraction``, ``n_bad_pix``, ``flux_new_aper``,
        ``flux_ref_aper`` (electrons in the first aperture), ``zp``, ``qflags`` (bit mask: 1 dipole, 2 high
        opposite-sign fraction, 4 bad pixels, 8 width out of range, 16 elongated, 32 near edge, 64 near a
        bright or saturated star, 128 not shaped like P_D: ``psf_chi2``, 256 a stronger detection has
        the same centroid) and
        ``is_good`` (no quality flag). Rows are never removed.
    """
    zp_d = zogy_result.zp if zp is None else float(zp)
    diff = np.ascontiguousarray(zogy_result.diff, dtype=np.float64)
    dvar = np.array(zogy_result.diff_variance, dtype=np.float64)  # one float64 copy, scaled in place
    dvar *= zogy_result.renorm_factor**2
    score, svar, scorr = zogy_result.score, zogy_result.score_var, zogy_result.score_corr
    fwhm_d = zogy_result.fwhm_px
    sigw = fwhm_d / FWHM_PER_SIGMA
    radii = np.asarray(params.aper_radii_fwhm, dtype=float) * fwhm_d
    ny, nx = diff.shape
    n = len(detections)
    out = Table()
    for c in ("index", "x_peak", "y_peak", "score", "is_positive"):
        out[c] = np.asarray(detections[c]) if n else np.zeros(0, dtype=detections[c].dtype)
    if n == 0:
        return out
    sign = np.where(np.asarray(detections["is_positive"]), 1.0, -1.0)
    xp = np.asarray(detections["x_peak"], dtype=int)
    yp = np.asarray(detections["y_peak"], dtype=int)
    x0 = np.asarray(detections["x"], dtype=float)
    y0 = np.asarray(detections["y"], dtype=float)

    # fading detections: S and D are read with their sign flipped at the pixels used; sep's centroid gets a
    # negated float32 D (sep works in float32: the same centroids as from a float64 copy, tested), made once
    # (flipping the whole frame per detection cost ~40 ms each)
    pos = np.asarray(detections["is_positive"], dtype=bool)
    d32 = np.asarray(zogy_result.diff)
    winpos_signed = (diff, -np.ascontiguousarray(d32, dtype=np.float32) if not pos.all() else diff)
    flux = np.array([sign[i] * _peak_value(score, yp[i], xp[i], sign[i]) for i in range(n)]) / zogy_result.f_s
    err = np.sqrt(svar[yp, xp].astype(float)) * zogy_result.renorm_factor / zogy_result.f_s

    xc, yc = np.empty(n), np.empty(n)
    for i in range(n):
        wx, wy, wf = sep.winpos(winpos_signed[0 if pos[i] else 1], x0[i : i + 1], y0[i : i + 1], sigw)
        ok = wf[0] == 0 and abs(wx[0] - x0[i]) < fwhm_d and abs(wy[0] - y0[i]) < fwhm_d
        xc[i], yc[i] = (wx[0], wy[0]) if ok else (x0[i], y0[i])

    fa, fe = np.empty((n, radii.size)), np.empty((n, radii.size))
    for j, r in enumerate(radii):
        f, e, _ = sep.sum_circle(diff, xc, yc, r, var=dvar)
        fa[:, j], fe[:, j] = f, e

    flags_d = zogy_result.flags
    pd_cov = _windowed_cov(
        np.asarray(zogy_result.psf_d, float),
        zogy_result.psf_d.shape[1] // 2,
        zogy_result.psf_d.shape[0] // 2,
        sigw,
    )
    fwhm_ref, _ = _shape(pd_cov)
    fwhm = np.full(n, np.nan)
    elong = np.full(n, np.nan)
    bkg, negf = np.empty(n), np.empty(n)
    nbad = np.zeros(n, dtype=np.int64)
    dip = np.zeros(n, dtype=bool)
    edge = np.zeros(n, dtype=bool)
    fnew, fref = np.empty(n), np.empty(n)
    # sep sums float32 pixels exactly as their float64 copies (tested): no two full-frame float64 copies
    new_img = np.ascontiguousarray(new.image, dtype=np.float32)
    ref_img = np.ascontiguousarray(ref.image, dtype=np.float32)
    fnew[:] = sep.sum_circle(new_img, xc, yc, radii[0])[0]
    fref[:] = sep.sum_circle(ref_img, xc, yc, radii[0])[0]
    for i in range(n):
        r = int(np.ceil(5 * fwhm_d))
        sl = (slice(max(yp[i] - r, 0), yp[i] + r + 1), slice(max(xp[i] - r, 0), xp[i] + r + 1))
        ys, xs = np.ogrid[sl[0].start : min(yp[i] + r + 1, ny), sl[1].start : min(xp[i] + r + 1, nx)]
        d2 = (xs - xc[i]) ** 2 + (ys - yc[i]) ** 2
        core = d2 <= fwhm_d**2
        ann = (d2 >= (3 * fwhm_d) ** 2) & (d2 <= (5 * fwhm_d) ** 2)
        bkg[i] = float(np.median(diff[sl][ann])) if ann.any() else 0.0
        negf[i] = float(np.mean(sign[i] * diff[sl][core] < 0)) if core.any() else 1.0
        fl = flags_d[sl][core] | new.flags[sl][core] | ref.flags[sl][core]
        nbad[i] = int(np.count_nonzero(fl & ~np.uint16(FLAG_EDGE)))
        edge[i] = bool(np.any(fl & FLAG_EDGE)) or not (
            zogy_result.border_px <= xc[i] < nx - zogy_result.border_px
            and zogy_result.border_px <= yc[i] < ny - zogy_result.border_px
        )
        near = d2 <= (2 * fwhm_d) ** 2
        opp = float(np.min(sign[i] * scorr[sl][near]))
        dip[i] = opp < -max(3.5, 0.5 * abs(float(detections["score"][i])))
        cov = _windowed_cov(diff, xc[i], yc[i], sigw, sign[i])
        fwhm[i], elong[i] = _shape(cov)

    snr = flux / err
    chi2 = _psf_chi2(
        diff,
        dvar,
        (flags_d & ~np.uint16(FLAG_EDGE)) != 0,
        xc,
        yc,
        flux,
        np.asarray(zogy_result.psf_d),
        fwhm_d,
    )
    meas = np.abs(snr) >= params.shape_min_snr
    ratio = fwhm / fwhm_ref if np.isfinite(fwhm_ref) and fwhm_ref > 0 else np.full(n, np.nan)
    q = np.zeros(n, dtype=np.uint16)
    q[dip] |= QF_DIPOLE
    q[negf > params.max_neg_fraction] |= QF_NEG_FRACTION
    q[nbad > 0] |= QF_BAD_PIXELS
    bad_w = meas & ~((ratio >= params.width_range[0]) & (ratio <= params.width_range[1]))
    q[bad_w] |= QF_WIDTH
    # elongation at every SNR, the allowed excess over 1 growing as 1/SNR below elongation_ref_snr (moment
    # noise; measured on point sources injected into real decam-sfft frames at SNR 5 to 12: 90 % below 2.4,
    # 99 % below 4.9), so that cosmic-ray tracks of SNR 5 to 9 (elongation 19 to 23) are flagged too
    el_lim = 1.0 + (params.max_elongation - 1.0) * np.maximum(1.0, params.elongation_ref_snr / np.abs(snr))
    q[np.isfinite(elong) & ~(elong <= el_lim)] |= QF_ELONGATED
    if params.max_psf_chi2 > 0:
        chi_lim = params.max_psf_chi2 * np.maximum(1.0, (np.abs(snr) / 10.0) ** 2)
        q[np.isfinite(chi2) & (chi2 > chi_lim)] |= QF_PSF_CHI2
    q[_duplicates(xc, yc, sign, np.abs(snr), 0.5 * fwhm_d)] |= QF_DUPLICATE
    q[_too_sharp(diff, xp, yp, sign, flux, np.asarray(zogy_result.psf_d), fwhm_d, params.max_sharpness)] |= (
        QF_WIDTH
    )
    q[edge] |= QF_EDGE
    if params.bright_stars:
        step = max(1, int(np.sqrt(dvar.size / 250_000)))
        sigma = float(np.sqrt(np.median(dvar[::step, ::step][np.isfinite(dvar[::step, ::step])])))
        sv = svar[::step, ::step]
        sv_bg = float(np.median(sv[np.isfinite(sv) & (sv > 0)])) if np.any(sv > 0) else 0.0
        # the local noise budget is a star's, not the sky's
        dominated = svar[yp, xp] > params.bright_var_factor * sv_bg
        near_b = _near_bright(
            (ref_img, new_img),
            flags_d | new.flags | ref.flags,
            xc,
            yc,
            flux,
            np.asarray(zogy_result.psf_d),
            fwhm_d,
            sigma,
            diff=diff,
            dvar=dvar,
            snr=snr,
            wing_sigma=params.bright_wing_sigma,
            peak_factor=params.bright_peak_factor,
            dominated=dominated,
        )
        q[near_b] |= QF_NEAR_BRIGHT

    absf = np.abs(flux)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(absf > 0, -2.5 * np.log10(absf) + zp_d, np.nan)
        mag_err = np.where(absf > 0, 2.5 / np.log(10) * err / absf, np.nan)
    out["x"], out["y"] = xc, yc
    out["flux_psf"], out["flux_psf_err"] = flux, err
    out["flux_aper"], out["flux_aper_err"] = fa, fe
    out["aper_radii_px"] = np.tile(radii, (n, 1))
    out["mag"], out["mag_err"] = mag, mag_err
    out["flux_njy"], out["flux_njy_err"] = electrons_to_njy(flux, zp_d), electrons_to_njy(err, zp_d)
    out["snr"] = snr
    out["fwhm_px"], out["elongation"] = fwhm, elong
    out["psf_chi2"] = chi2
    out["background"], out["neg_fraction"], out["n_bad_pix"] = bkg, negf, nbad
    out["flux_new_aper"], out["flux_ref_aper"] = fnew, fref
    out["zp"] = np.full(n, zp_d)
    out["qflags"] = q
    out["is_good"] = q == 0
    return out
