"""Read-only queries behind the web pages and the JSON API: alerts, objects, cone and name search.

Every function takes a :class:`~sqlalchemy.orm.Session` owned by the caller and returns plain dicts and
lists (what the JSON API sends and the templates show). The alert filters mean what the subscriber's
:class:`seechange.client.AlertFilter` means, evaluated in SQL on the rows the packet was built from:

- magnitude: the sighting's latest photometry ``mag`` (an alert without one fails either bound);
- SNR: ``|snr|`` (fading sources have a negative SNR);
- cone: great-circle distance of the sighting (haversine, as :func:`seechange.sphere.angular_sep_arcsec`);
- new objects only: the sighting is its Object's first (no sighting of the Object at an earlier MJD:
  its MJD is the Object's ``first_mjd``), which is the packet's ``object.nSightings == 1``
  (:func:`seechange.pipeline.alert.object_as_of`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session, aliased

from seechange.lightcurve import UnknownObject, lightcurve_table
from seechange.models import (
    AlertLog,
    CoaddImage,
    Cutouts,
    Exposure,
    Image,
    Object,
    Photometry,
    Provenance,
    Sighting,
    SubtractionImage,
)

__all__ = [
    "AlertQuery",
    "UnknownObject",
    "alerts_page",
    "cone_objects",
    "find_objects_by_name",
    "object_detail",
    "object_name_of_sighting",
    "sighting_provenance",
]


@dataclass(frozen=True)
class AlertQuery:
    """Filters and page of the recent-alerts list (``None`` / ``False``: not applied).

    Parameters
    ----------
    bands : tuple of str, optional
        Bands to keep.
    min_mag, max_mag : float, optional
        Magnitude range, AB mag.
    min_snr, max_snr : float, optional
        Range of ``|snr|``.
    cone : tuple of float, optional
        ``(ra, dec, radius)``: deg, deg, arcsec.
    new_only : bool
        Only the first sighting of each Object.
    page : int
        1-based page number, newest first.
    per_page : int
        Alerts per page.
    after_id : int, optional
        Only alerts logged after this ``alert_log`` row id (what a polling page asks for).
    """

    bands: tuple[str, ...] | None = None
    min_mag: float | None = None
    max_mag: float | None = None
    min_snr: float | None = None
    max_snr: float | None = None
    cone: tuple[float, float, float] | None = None
    new_only: bool = False
    page: int = 1
    per_page: int = 50
    after_id: int | None = None


def _sep_arcsec_sql(ra: float, dec: float, ra_col: Any, dec_col: Any) -> ColumnElement[float]:
    """Haversine great-circle distance (arcsec) between a fixed position and two columns, degrees."""
    d1, d2 = math.radians(dec), func.radians(dec_col)
    h = func.power(func.sin((d2 - d1) / 2), 2) + math.cos(d1) * func.cos(d2) * func.power(
        func.sin((func.radians(ra_col) - math.radians(ra)) / 2), 2
    )
    return func.degrees(2 * func.asin(func.least(1.0, func.sqrt(h)))) * 3600.0


def _cone_clause(cone: tuple[float, float, float], ra_col: Any, dec_col: Any) -> ColumnElement[bool]:
    ra, dec, radius = cone
    box = radius / 3600.0
    return and_(
        dec_col >= dec - box, dec_col <= dec + box, _sep_arcsec_sql(ra, dec, ra_col, dec_col) <= radius
    )


def _latest_photometry_id() -> Any:
    """Correlated subquery: the id of a sighting's newest Photometry (the one its packet carries)."""
    p2 = aliased(Photometry)
    return select(func.max(p2.id)).where(p2.sighting_id == Sighting.id).scalar_subquery()


def _filtered(q: AlertQuery) -> Select[Any]:
    # first sighting of its Object: none at an earlier MJD, i.e. at the Object's first MJD (association
    # keeps first_mjd the minimum over its sightings); a join, where NOT EXISTS cost a probe per alert
    first = Sighting.mjd <= Object.first_mjd
    stmt = (
        select(
            AlertLog.id.label("log_id"),
            AlertLog.alert_id,
            AlertLog.sent_at,
            Sighting.id.label("sighting_id"),
            Sighting.mjd,
            Sighting.ra,
            Sighting.dec,
            Sighting.band,
            Sighting.score,
            Sighting.is_good,
            Sighting.is_positive,
            (Sighting.flags.op("|")(func.coalesce(Photometry.flags, 0))).label("flags"),
            Photometry.mag,
            Photometry.mag_err,
            Photometry.snr,
            Photometry.flux_njy,
            Object.id.label("object_id"),
            Object.name.label("object_name"),
            first.label("is_new"),
            (Cutouts.id.is_not(None)).label("has_cutouts"),
        )
        .join(Sighting, Sighting.id == AlertLog.sighting_id)
        .join(Object, Object.id == AlertLog.object_id)
        .outerjoin(Photometry, Photometry.id == _latest_photometry_id())
        .outerjoin(Cutouts, Cutouts.sighting_id == Sighting.id)
    )
    # an alert is shown once delivered: the outbox stages its row (sent_at null) before the send
    conds: list[ColumnElement[bool]] = [AlertLog.sent_at.is_not(None)]
    if q.bands:
        conds.append(Sighting.band.in_(q.bands))
    if q.min_mag is not None:
        conds.append(Photometry.mag >= q.min_mag)
    if q.max_mag is not None:
        conds.append(Photometry.mag <= q.max_mag)
    if q.min_snr is not None:
        conds.append(func.abs(Photometry.snr) >= q.min_snr)
    if q.max_snr is not None:
        conds.append(func.abs(Photometry.snr) <= q.max_snr)
    if q.cone is not None:
        conds.append(_cone_clause(q.cone, Sighting.ra, Sighting.dec))
    if q.new_only:
        conds.append(first)
    if q.after_id is not None:
        conds.append(AlertLog.id > q.after_id)
    out: Select[Any] = stmt.where(*conds)  # type: ignore[assignment]
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def alerts_page(session: Session, q: AlertQuery) -> dict[str, Any]:
    """One page of alerts newest first (by ``alert_log`` row), with the total matching the filters.

    Returns
    -------
    dict
        ``total`` (alerts matching), ``page``, ``per_page``, ``pages``, ``newest_log_id`` (the largest
        ``alert_log`` id in the database, for polling) and ``alerts``: one dict per alert with
        ``log_id``, ``alert_id``, ``sent_at`` (ISO), ``sighting_id``, ``mjd``, ``ra``, ``dec`` (deg),
        ``band``, ``mag``, ``mag_err`` (AB), ``snr``, ``flux_njy``, ``flags``, ``is_good``,
        ``is_positive``, ``score``, ``object_id``, ``object_name``, ``is_new``, ``has_cutouts``.
    """
    newest = int(session.scalar(select(func.max(AlertLog.id)).where(AlertLog.sent_at.is_not(None))) or 0)
    stmt = _filtered(q).where(AlertLog.id <= newest)  # fixed first: a poll after it misses nothing
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    per_page = max(1, min(int(q.per_page), 500))
    page = max(1, int(q.page))
    rows = session.execute(
        stmt.order_by(AlertLog.id.desc()).limit(per_page).offset((page - 1) * per_page)
    ).mappings()
    alerts = []
    for r in rows:
        d = {k: _finite(v) for k, v in r.items()}
        d["sent_at"] = r["sent_at"].isoformat()
        d["flags"] = int(r["flags"])
        alerts.append(d)
    return {
        "total": total,
        "page": page,
        "per_page": per_page,
        "pages": max(1, math.ceil(total / per_page)),
        "newest_log_id": newest,
        "alerts": alerts,
    }


def _object_summary(o: Object) -> dict[str, Any]:
    return {
        "id": o.id,
        "name": o.name,
        "ra": o.ra,
        "dec": o.dec,
        "n_sightings": o.n_sightings,
        "first_mjd": o.first_mjd,
        "last_mjd": o.last_mjd,
        "band_latest": o.band_latest,
        "mag_latest": _finite(o.mag_latest),
    }


def cone_objects(
    session: Session, ra: float, dec: float, radius_arcsec: float, *, limit: int = 200
) -> list[dict[str, Any]]:
    """Objects within ``radius_arcsec`` of (``ra``, ``dec``) (deg), nearest first, with ``sep_arcsec``."""
    sep = _sep_arcsec_sql(ra, dec, Object.ra, Object.dec).label("sep")
    rows = session.execute(
        select(Object, sep)
        .where(_cone_clause((ra, dec, radius_arcsec), Object.ra, Object.dec))
        .order_by(sep, Object.id)
        .limit(limit)
    ).all()
    return [{**_object_summary(o), "sep_arcsec": float(s)} for o, s in rows]


def find_objects_by_name(session: Session, text: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Objects whose name starts with ``text`` (case-insensitive), by name."""
    pattern = text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = session.scalars(
        select(Object).where(Object.name.ilike(pattern, escape="\\")).order_by(Object.name).limit(limit)
    )
    return [_object_summary(o) for o in rows]


def _provenance(session: Session, prov_id: str | None) -> dict[str, Any] | None:
    if prov_id is None:
        return None
    p = session.get(Provenance, prov_id)
    if p is None:
        return {"id": prov_id}
    return {"id": p.id, "process": p.process, "code_version": p.code_version, "parameters": p.parameters}


def sighting_provenance(session: Session, sighting_id: int) -> list[dict[str, Any]]:
    """The products behind one sighting, each with its provenance (process, code version, parameters).

    In pipeline order: exposure, reduced image, reference coadd, difference image, sighting, photometry.
    """
    s = session.get(Sighting, sighting_id)
    if s is None:
        return []
    sub = session.get(SubtractionImage, s.subtraction_id)
    new = session.get(Image, sub.new_image_id) if sub is not None else None
    ref = session.get(CoaddImage, sub.reference_id) if sub is not None else None
    exp = session.get(Exposure, new.exposure_id) if new is not None else None
    phot = session.scalars(
        select(Photometry).where(Photometry.sighting_id == s.id).order_by(Photometry.id.desc())
    ).first()
    items: list[tuple[str, int | None, str | None, str | None]] = [
        (
            "exposure",
            exp.id if exp else None,
            exp.filepath if exp else None,
            exp.provenance_id if exp else None,
        ),
        ("image", new.id if new else None, new.filepath if new else None, new.provenance_id if new else None),
        (
            "reference",
            ref.id if ref else None,
            ref.filepath if ref else None,
            ref.provenance_id if ref else None,
        ),
        (
            "difference",
            sub.id if sub else None,
            sub.filepath if sub else None,
            sub.provenance_id if sub else None,
        ),
        ("sighting", s.id, None, s.provenance_id),
        ("photometry", phot.id if phot else None, None, phot.provenance_id if phot else None),
    ]
    return [
        {"product": name, "id": pid, "filepath": path, "provenance": _provenance(session, prov)}
        for name, pid, path, prov in items
        if pid is not None
    ]


def _row(table_row: Any, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in names:
        v = table_row[n]
        v = v.item() if hasattr(v, "item") else v
        out[n] = _finite(v)
    return out


def object_detail(session: Session, name: str) -> dict[str, Any]:
    """An Object and its lightcurve rows (:func:`seechange.lightcurve.lightcurve_table`) split by kind.

    Returns
    -------
    dict
        The Object's summary, ``bands``, ``detections`` (one per sighting, with ``has_cutouts`` and the
        alert id when one was sent), ``forced`` (forced points) and ``limits`` (non-detection limits).

    Raises
    ------
    UnknownObject
        If no Object has that name.
    """
    table = lightcurve_table(session, name)
    obj = session.get(Object, int(table.meta["object_id"]))
    assert obj is not None
    names = list(table.colnames)
    rows = [_row(r, names) for r in table]
    sighting_ids = [r["sighting_id"] for r in rows if r["kind"] == "detection"]
    with_cutouts = set(
        session.scalars(select(Cutouts.sighting_id).where(Cutouts.sighting_id.in_(sighting_ids)))
    )
    alerted = dict(
        session.execute(
            select(AlertLog.sighting_id, AlertLog.alert_id).where(AlertLog.sighting_id.in_(sighting_ids))
        ).all()
    )
    detections = []
    for r in rows:
        if r["kind"] == "detection":
            sid = r["sighting_id"]
            detections.append({**r, "has_cutouts": sid in with_cutouts, "alert_id": alerted.get(sid)})
    return {
        **_object_summary(obj),
        "bands": sorted({r["band"] for r in rows}),
        "detections": detections,
        "forced": [r for r in rows if r["kind"] == "forced"],
        "limits": [r for r in rows if r["kind"] == "limit"],
    }


def object_name_of_sighting(session: Session, sighting_id: int) -> str | None:
    """The name of the Object a sighting belongs to (None when unknown or unassociated)."""
    return session.scalar(
        select(Object.name).join(Sighting, Sighting.object_id == Object.id).where(Sighting.id == sighting_id)
    )
