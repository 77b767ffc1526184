"""Forced photometry of Objects on difference images, and their non-detection limits.

Called by the detect stage right after association, for every Object whose position the difference image
covers (:func:`force_on_subtraction`); on request also backwards over earlier difference images
(:func:`force_objects`, ``seechange forced``). One :class:`~seechange.models.ForcedPhotometry` row per
Object, difference image and ``forced`` provenance (whose upstream is the subtraction's): inserting again
does nothing, so forward and backward runs meet without duplicates.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from seechange.improc.forced import ForcedParams, forced_on_zogy, limiting_magnitude
from seechange.improc.zogy import ZogyResult
from seechange.models import ForcedPhotometry, Image, Object, Provenance, Sighting, SubtractionImage
from seechange.provenance import get_or_create_provenance
from seechange.units import electrons_to_njy

__all__ = ["force_objects", "force_on_subtraction", "objects_in_footprint", "subtractions_covering"]

log = logging.getLogger(__name__)

_MARGIN_DEG = 1.0 / 60.0  # the corner box is widened by this before the exact pixel test


def _ra_box(ras: Sequence[float]) -> tuple[float, float]:
    """(lo, hi) of RAs (deg) about their first one, so a box across 0/360 has lo < 0 or hi > 360."""
    ra0 = float(ras[0])
    d = [((float(r) - ra0 + 180.0) % 360.0) - 180.0 for r in ras]
    return ra0 + min(d), ra0 + max(d)


def _ra_in(col: Any, lo: float, hi: float) -> Any:
    """SQL condition: RA column ``col`` in [lo, hi] (deg), either side of 0/360."""
    if lo < 0:
        return or_(col >= lo + 360.0, col <= hi)
    if hi >= 360.0:
        return or_(col >= lo, col <= hi - 360.0)
    return and_(col >= lo, col <= hi)


def _corners(sub: SubtractionImage) -> tuple[list[float], list[float]]:
    ras = [sub.ra_corner_00, sub.ra_corner_01, sub.ra_corner_10, sub.ra_corner_11]
    decs = [sub.dec_corner_00, sub.dec_corner_01, sub.dec_corner_10, sub.dec_corner_11]
    return ras, decs


def objects_in_footprint(
    session: Session, sub: SubtractionImage, result: ZogyResult
) -> list[tuple[Object, float, float]]:
    """The Objects whose position falls on ``sub`` outside its flagged border, with their pixel position."""
    ras, decs = _corners(sub)
    lo, hi = _ra_box(ras)
    pad = _MARGIN_DEG / max(float(np.cos(np.radians(max(abs(d) for d in decs)))), 0.05)
    cand = list(
        session.scalars(
            select(Object)
            .where(
                Object.dec.between(min(decs) - _MARGIN_DEG, max(decs) + _MARGIN_DEG),
                _ra_in(Object.ra, lo - pad, hi + pad),
            )
            .order_by(Object.id)
        )
    )
    if not cand:
        return []
    xy = result.wcs.all_world2pix(np.array([[o.ra, o.dec] for o in cand]), 0)
    ny, nx = result.diff.shape
    b = result.border_px
    return [
        (o, float(x), float(y))
        for o, (x, y) in zip(cand, xy, strict=True)
        if np.isfinite(x) and np.isfinite(y) and b <= x < nx - b and b <= y < ny - b
    ]


def force_on_subtraction(
    session: Session,
    sub: SubtractionImage,
    result: ZogyResult,
    *,
    params: ForcedParams,
    object_ids: Iterable[int] | None = None,
) -> int:
    """Forced PSF photometry of the Objects on one difference image; how many rows are new.

    Parameters
    ----------
    session : Session
        Open session (not committed here).
    sub : SubtractionImage
        The difference image's row.
    result : ZogyResult
        Its products (D, its variance, flags, P_D, WCS, zero point).
    params : ForcedParams
        Fit radius and limit significance (set: ``DetectParams.forced_params``).
    object_ids : iterable of int, optional
        Only these Objects (default every Object on the image).

    Returns
    -------
    int
        Rows inserted (0 when all were there already).
    """
    if params.limit_sigma is None:
        raise ValueError("forced photometry needs limit_sigma set (DetectParams.forced_params sets it)")
    upstream = session.get(Provenance, sub.provenance_id)
    assert upstream is not None
    prov = get_or_create_provenance(session, "forced", params.critical(), [upstream])
    on_image = objects_in_footprint(session, sub, result)
    if object_ids is not None:
        wanted = set(object_ids)
        on_image = [t for t in on_image if t[0].id in wanted]
    if not on_image:
        return 0
    x = np.array([t[1] for t in on_image])
    y = np.array([t[2] for t in on_image])
    fr = forced_on_zogy(result, x, y, params=params)
    zp = float(result.zp)
    lim = limiting_magnitude(fr.flux_err, zp, params.limit_sigma)
    seen: dict[int, int] = {}
    for oid, sid in session.execute(
        select(Sighting.object_id, Sighting.id)
        .where(Sighting.subtraction_id == sub.id, Sighting.object_id.in_([t[0].id for t in on_image]))
        .order_by(Sighting.id)
    ):
        seen.setdefault(int(oid or 0), int(sid))
    new = session.get(Image, sub.new_image_id)
    image_lim = new.lim_mag if new is not None else None
    rows: list[dict[str, Any]] = []
    for i, (obj, xi, yi) in enumerate(on_image):
        if not np.isfinite(fr.flux[i]):
            continue
        rows.append(
            {
                "object_id": obj.id,
                "subtraction_id": sub.id,
                "provenance_id": prov.id,
                "sighting_id": seen.get(obj.id),
                "detected": obj.id in seen,
                "mjd": sub.mjd,
                "band": sub.band,
                "ra": obj.ra,
                "dec": obj.dec,
                "x": xi,
                "y": yi,
                "flux": float(fr.flux[i]),
                "flux_err": float(fr.flux_err[i]),
                "flux_njy": float(electrons_to_njy(fr.flux[i], zp)),
                "flux_njy_err": float(electrons_to_njy(fr.flux_err[i], zp)),
                "zero_point": zp,
                "lim_mag": float(lim[i]) if np.isfinite(lim[i]) else None,
                "image_lim_mag": image_lim,
                "n_bad_pixels": int(fr.n_bad[i]),
            }
        )
    if not rows:
        return 0
    done = session.execute(  # executemany: one cached statement (not a fresh VALUES clause per image)
        insert(ForcedPhotometry)
        .on_conflict_do_nothing(index_elements=["object_id", "subtraction_id", "provenance_id"])
        .returning(ForcedPhotometry.id)
        .execution_options(render_nulls=True),  # None as NULL: every row in one batch
        rows,
    ).all()
    log.info("subtraction %d: forced photometry of %d objects (%d new)", sub.id, len(rows), len(done))
    return len(done)


def subtractions_covering(
    session: Session, obj: Object, *, max_size_deg: float = 2.0
) -> list[SubtractionImage]:
    """Every SubtractionImage whose corner box contains ``obj`` (the exact test, in pixels, comes later).

    ``max_size_deg`` bounds the images' extent for the SQL pre-selection on their centre's declination.
    """
    subs = session.scalars(
        select(SubtractionImage)
        .where(SubtractionImage.dec.between(obj.dec - max_size_deg, obj.dec + max_size_deg))
        .order_by(SubtractionImage.mjd, SubtractionImage.id)
    )
    pad = _MARGIN_DEG / max(float(np.cos(np.radians(obj.dec))), 0.05)
    out = []
    for sub in subs:
        ras, decs = _corners(sub)
        lo, hi = _ra_box(ras)
        dra = ((obj.ra - lo + 180.0) % 360.0) - 180.0
        if min(decs) - _MARGIN_DEG <= obj.dec <= max(decs) + _MARGIN_DEG and -pad <= dra <= hi - lo + pad:
            out.append(sub)
    return out


def force_objects(
    session: Session, data_root: Path, object_ids: Iterable[int] | None, *, params: ForcedParams
) -> int:
    """Forced photometry of Objects (default all) on every difference image covering them; rows inserted.

    Each difference image's files are read once, for all the requested Objects on it.
    """
    from seechange.pipeline.subtract import read_zogy  # heavy: only when forcing backwards

    q = select(Object).order_by(Object.id)
    if object_ids is not None:
        q = q.where(Object.id.in_(list(object_ids)))
    objs = list(session.scalars(q))
    per_sub: dict[int, set[int]] = defaultdict(set)
    subs: dict[int, SubtractionImage] = {}
    for obj in objs:
        for sub in subtractions_covering(session, obj):
            per_sub[sub.id].add(obj.id)
            subs[sub.id] = sub
    total = 0
    for sid in sorted(per_sub, key=lambda k: (subs[k].mjd, k)):
        result, _ = read_zogy(data_root, subs[sid].filepath)
        total += force_on_subtraction(session, subs[sid], result, params=params, object_ids=per_sub[sid])
    return total
