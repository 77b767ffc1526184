"""The detection step: positive and negative peaks of a ZOGY score image, then their measurement."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Table, hstack
from scipy import ndimage

from seechange.improc.forced import ForcedParams
from seechange.improc.measure import MeasureParams, measure_sightings
from seechange.improc.types import ImageData
from seechange.improc.zogy import ZogyResult
from seechange.parameters import CRITICAL, StepParameters

__all__ = ["DETECTION_COLUMNS", "DetectParams", "detect_and_measure", "detect_transients"]

DETECTION_COLUMNS = ("index", "x", "y", "x_peak", "y_peak", "score", "is_positive", "npix", "flags")


_DTYPES = (np.int64, np.float64, np.float64, np.int64, np.int64, np.float64, bool, np.int64, np.uint16)


def _empty() -> Table:
    return Table(names=DETECTION_COLUMNS, dtype=_DTYPES)


def _parabolic(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of a peak ``b`` from a parabola through it and its two neighbours ``a``, ``c``."""
    den = a - 2 * b + c
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def _threshold_in(dtype: np.dtype, threshold: float) -> float:
    """The threshold in ``dtype`` that selects the same pixels ``value >= threshold`` selects in float64:
    the smallest ``dtype`` number not below it."""
    t = np.asarray(threshold, dtype)
    if float(t) < threshold:
        t = np.nextafter(t, np.asarray(np.inf, dtype))
    return t  # type: ignore[return-value]


def _regions(above: np.ndarray) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """The 8-connected regions of a 2-D mask: each one's bounding box (rows, columns) and its mask there.

    The mask is labelled on its rows that hold a pixel only, with one blank row kept wherever two of them
    are not adjacent (so no region joins across a gap): the same regions as ``ndimage.label`` of the whole
    frame, at a fraction of its cost when the mask is sparse (peaks of S_corr: about a quarter of the rows).
    """
    rows = np.flatnonzero(above.any(axis=1))
    if rows.size == 0:
        return []
    gaps = np.flatnonzero(np.diff(rows) > 1)  # a blank row after rows[g] for every g here
    pos = np.arange(rows.size) + np.searchsorted(gaps, np.arange(rows.size), side="left")
    packed = np.zeros((rows.size + gaps.size, above.shape[1]), bool)
    packed[pos] = above[rows]
    orig = np.full(packed.shape[0], -1)
    orig[pos] = rows
    labels, _ = ndimage.label(packed, structure=np.ones((3, 3), dtype=bool))
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        # a connected region never spans a blank row: its packed rows are consecutive rows of the frame
        r0, r1 = int(orig[sl[0].start]), int(orig[sl[0].stop - 1]) + 1
        out.append(((slice(r0, r1), sl[1]), labels[sl] == lab))
    return out


def _peaks(
    score: np.ndarray, threshold: float, min_area: int, window: int, *, sign: float = 1.0
) -> list[tuple]:
    """Local maxima of ``sign * score`` above ``threshold`` (simple deblending: one detection per local max).

    ``sign`` -1 finds the minima of ``score`` below ``-threshold`` without a negated full-frame copy.
    """
    thr = _threshold_in(score.dtype, threshold)
    above = score >= thr if sign > 0 else score <= -thr
    if not above.any():
        return []
    # the maximum filter on each region's box padded by half the window only: the same values there as on
    # the whole frame, in a fraction of the time (two full-frame float64 filters took ~0.6 s on 2048x4096)
    ny, nx = score.shape
    h = window // 2

    def value(y: int, x: int) -> float:
        return sign * float(score[y, x])

    out = []
    for sl, region in _regions(above):
        area = int(np.count_nonzero(region))  # pixels above threshold in the connected region
        if area < min_area:
            continue
        y0, x0 = max(sl[0].start - h, 0), max(sl[1].start - h, 0)
        box = score[y0 : min(sl[0].stop + h, ny), x0 : min(sl[1].stop + h, nx)]
        if sign < 0:
            box = -box
        mf = ndimage.maximum_filter(box, size=window, mode="constant", cval=-np.inf)
        inner = (slice(sl[0].start - y0, sl[0].stop - y0), slice(sl[1].start - x0, sl[1].stop - x0))
        for dy, dx in zip(*np.nonzero((box[inner] == mf[inner]) & region), strict=True):
            y, x = int(sl[0].start + dy), int(sl[1].start + dx)
            b = value(y, x)
            ox = _parabolic(value(y, x - 1), b, value(y, x + 1)) if 0 < x < nx - 1 else 0.0
            oy = _parabolic(value(y - 1, x), b, value(y + 1, x)) if 0 < y < ny - 1 else 0.0
            out.append((float(x) + ox, float(y) + oy, x, y, b, area))
    return out


def detect_transients(
    zogy_result: ZogyResult,
    *,
    threshold: float = 5.0,
    min_area: int = 1,
    peak_window: int | None = None,
    negative: bool = True,
) -> Table:
    """Positive (brightening) and negative (fading) peaks of S_corr above a threshold.

    Parameters
    ----------
    zogy_result : ZogyResult
        Output of :func:`seechange.improc.zogy.zogy`; its ``score_corr`` is in units of sigma.
    threshold : float, optional
        Detection threshold on |S_corr|, sigma.
    min_area : int, optional
        Minimum number of connected pixels above threshold, pixels.
    peak_window : int, optional
        Size of the local-maximum window (peaks closer than about half of it merge), pixels; default the
        odd integer nearest to the FWHM of P_D, at least 3.
    negative : bool, optional
        Also search -S_corr for fading sources.

    Returns
    -------
    astropy.table.Table
        Columns ``index`` (0.., sorted by y_peak then x_peak), ``x``, ``y`` (sub-pixel peak from a parabola
        through the peak and its neighbours, 0-based pixels), ``x_peak``, ``y_peak`` (integer peak pixel), ``score`` (signed peak S_corr),
        ``is_positive``, ``npix`` (pixels above threshold in the connected region), ``flags`` (difference
        flags at the peak). Empty table when nothing is found.
    """
    if threshold <= 0:
        raise ValueError("threshold must be > 0")
    score = np.asarray(zogy_result.score_corr)  # float32 as ZOGY gives it: no float64 copy (same peaks)
    if score.dtype.kind != "f":
        score = score.astype(np.float64)
    if peak_window is None:
        peak_window = max(3, int(2 * round((zogy_result.fwhm_px - 1) / 2) + 1))
    rows = [(*p, True) for p in _peaks(score, threshold, min_area, peak_window)]
    if negative:
        for cx, cy, x, y, s, a in _peaks(score, threshold, min_area, peak_window, sign=-1.0):
            rows.append((cx, cy, x, y, -s, a, False))
    if not rows:
        return _empty()
    rows.sort(key=lambda r: (r[3], r[2]))
    cx, cy, x, y, s, a, pos = (np.array(c) for c in zip(*rows, strict=True))
    cols = (np.arange(len(rows)), cx, cy, x, y, s, pos, a, np.asarray(zogy_result.flags)[y, x])
    return Table(
        [np.asarray(c, dtype=d) for c, d in zip(cols, _DTYPES, strict=True)], names=DETECTION_COLUMNS
    )


@dataclass(frozen=True)
class DetectParams(StepParameters):
    """Parameters of :func:`detect_and_measure` (all critical).

    Attributes
    ----------
    threshold : float
        |S_corr| detection threshold, sigma.
    min_area : int
        Minimum connected pixels above threshold.
    negative : bool
        Also detect fading (negative) sources.
    measure : MeasureParams
        Apertures and quality cuts of :func:`~seechange.improc.measure.measure_sightings`.
    forced : ForcedParams
        Forced photometry of the Objects on the image, done by the detect stage after association; not
        critical here (it has its own ``forced`` provenance, so changing it leaves the sightings alone).
        Use :attr:`forced_params` (its limit significance defaults to ``threshold``).
    """

    threshold: float = 5.0
    min_area: int = 1
    negative: bool = True
    measure: MeasureParams = field(default_factory=MeasureParams)
    forced: ForcedParams = field(default_factory=ForcedParams, metadata={CRITICAL: False})

    @property
    def forced_params(self) -> ForcedParams:
        """``forced`` with its limit's significance filled in from ``threshold`` when not set: the
        non-detection limits then quote the depth this detection threshold reaches."""
        if self.forced.limit_sigma is not None:
            return self.forced
        return dataclasses.replace(self.forced, limit_sigma=float(self.threshold))


def detect_and_measure(
    result: ZogyResult, new: ImageData, ref_resampled: ImageData, *, params: DetectParams = DetectParams()
) -> Table:
    """Detect peaks of S_corr and measure them (photometry, shape, quality flags).

    Parameters
    ----------
    result : ZogyResult
        Output of :func:`~seechange.improc.subtraction.subtract`.
    new, ref_resampled : ImageData
        The new image and the reference on the new image's grid.
    params : DetectParams
        Threshold and quality-cut options.

    Returns
    -------
    astropy.table.Table
        One row per detection (columns of :func:`~seechange.improc.measure.measure_sightings` plus
        ``x_centroid_score``, ``y_centroid_score``, ``npix``, ``diff_flags``), ordered by ``index``
        (y then x of the peak). Quality cuts flag rows (``qflags``, ``is_good``); nothing is removed.
    """
    det = detect_transients(
        result, threshold=params.threshold, min_area=params.min_area, negative=params.negative
    )
    meas = measure_sightings(result, new, ref_resampled, det, params=params.measure)
    if len(det) == 0:
        for c, dt in (
            ("x_centroid_score", float),
            ("y_centroid_score", float),
            ("npix", np.int64),
            ("diff_flags", np.uint16),
        ):
            meas[c] = np.zeros(0, dtype=dt)
        return meas
    extra = Table(
        {
            "x_centroid_score": det["x"],
            "y_centroid_score": det["y"],
            "npix": det["npix"],
            "diff_flags": det["flags"],
        }
    )
    return hstack([meas, extra], join_type="exact")
