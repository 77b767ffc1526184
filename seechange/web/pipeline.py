"""The pipeline's state for the web page: rows processed per stage, the night's exposures, latencies.

The broker side (each stage's lag and dead letters) is :func:`seechange.streaming.status.pipeline_status`,
what ``seechange status`` prints; this module adds what the database knows: rows written per stage in the
last hour, each exposure of a night with its state in every stage, and the exposure-to-alert latency (the
first and last ``alert_log.sent_at`` of an exposure's sightings minus its ``ingested_at``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.models import AlertLog, Exposure, Image, Sighting, SubtractionImage
from seechange.streaming.archive import night_of_mjd

__all__ = ["StatusCache", "night_exposures", "night_mjd_range", "processed_since", "recent_latencies"]

log = logging.getLogger(__name__)

_MJD0 = dt.date(1858, 11, 17)


def night_mjd_range(night: dt.date) -> tuple[float, float]:
    """MJD range [start, end) of an observing night (``dayObs``: noon UTC of ``night`` to the next noon)."""
    mjd0 = float((night - _MJD0).days)
    return mjd0 + 0.5, mjd0 + 1.5


def latest_night(session: Session) -> dt.date | None:
    """The observing night of the newest Exposure (None without exposures)."""
    mjd = session.scalar(select(func.max(Exposure.mjd)))
    return night_of_mjd(float(mjd)) if mjd is not None else None


def processed_since(session: Session, since: dt.datetime) -> dict[str, dict[str, Any]]:
    """Rows each stage wrote at or after ``since`` (timezone-aware): per stage ``count`` and ``what``.

    ingest: exposures registered; reduce: images; subtract: difference images; detect: sightings (and
    ``subtractions``: difference images they came from); alert: alerts sent.
    """
    n_exp = session.scalar(select(func.count(Exposure.id)).where(Exposure.ingested_at >= since)) or 0
    n_img = session.scalar(select(func.count(Image.id)).where(Image.created_at >= since)) or 0
    n_sub = (
        session.scalar(select(func.count(SubtractionImage.id)).where(SubtractionImage.created_at >= since))
        or 0
    )
    n_sig, n_sig_sub = session.execute(
        select(func.count(Sighting.id), func.count(func.distinct(Sighting.subtraction_id))).where(
            Sighting.created_at >= since
        )
    ).one()
    n_alert = session.scalar(select(func.count(AlertLog.id)).where(AlertLog.sent_at >= since)) or 0
    return {
        "ingest": {"count": int(n_exp), "what": "exposures"},
        "reduce": {"count": int(n_img), "what": "images"},
        "subtract": {"count": int(n_sub), "what": "difference images"},
        "detect": {"count": int(n_sig or 0), "what": "sightings", "subtractions": int(n_sig_sub or 0)},
        "alert": {"count": int(n_alert), "what": "alerts sent"},
    }


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    return None if a is None or b is None else (a - b).total_seconds()


def night_exposures(session: Session, night: dt.date, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Every Exposure of an observing night in time order, with its state in each stage.

    Each dict: ``id``, ``origin_id``, ``section_id``, ``mjd``, ``band``, ``field``, ``ingested_at``;
    ``reduced`` (bool), ``image_id``; ``subtract``: ``"done"``, ``"pending"`` or why it has no difference
    image (the reduce stage's note, e.g. a member of its reference); ``subtraction_id``; ``detected``
    (bool) and ``n_sightings``; ``alerts`` (sent), ``first_alert_s`` and ``last_alert_s`` (seconds from
    ingestion to the first and last alert sent).
    """
    lo, hi = night_mjd_range(night)
    alerts = (
        select(
            Sighting.subtraction_id.label("sub_id"),
            func.count(AlertLog.id).label("n"),
            func.min(AlertLog.sent_at).label("first"),
            func.max(AlertLog.sent_at).label("last"),
        )
        .join(AlertLog, AlertLog.sighting_id == Sighting.id)
        .group_by(Sighting.subtraction_id)
        .subquery()
    )
    rows = session.execute(
        select(Exposure, Image, SubtractionImage, alerts.c.n, alerts.c.first, alerts.c.last)
        .outerjoin(Image, Image.exposure_id == Exposure.id)
        .outerjoin(SubtractionImage, SubtractionImage.new_image_id == Image.id)
        .outerjoin(alerts, alerts.c.sub_id == SubtractionImage.id)
        .where(Exposure.mjd >= lo, Exposure.mjd < hi)
        .order_by(Exposure.mjd, Exposure.id, Image.id, SubtractionImage.id)
        .limit(limit)
    ).all()
    out = []
    for exp, img, sub, n_alerts, first, last in rows:
        note = (img.extra or {}).get("subtraction") if img is not None else None
        subtract = "done" if sub is not None else (str(note) if note else "pending")
        out.append(
            {
                "id": exp.id,
                "origin_id": exp.origin_id,
                "section_id": exp.section_id,
                "mjd": exp.mjd,
                "band": exp.band,
                "field": exp.field,
                "ingested_at": exp.ingested_at.isoformat(),
                "reduced": img is not None,
                "image_id": img.id if img is not None else None,
                "subtract": subtract,
                "subtraction_id": sub.id if sub is not None else None,
                "detected": sub is not None and sub.n_sightings is not None,
                "n_sightings": sub.n_sightings if sub is not None else None,
                "alerts": int(n_alerts or 0),
                "first_alert_s": _seconds(first, exp.ingested_at),
                "last_alert_s": _seconds(last, exp.ingested_at),
            }
        )
    return out


def recent_latencies(session: Session, n: int) -> list[dict[str, Any]]:
    """Exposure-to-alert latency of the last ``n`` exposures (by ingestion) that sent at least one alert.

    Each dict: ``exposure_id``, ``ingested_at`` (ISO), ``first_s`` and ``last_s`` (seconds from ingestion
    to the first and last alert sent of its sightings), ``alerts``; oldest first.
    """
    rows = session.execute(
        select(
            Exposure.id,
            Exposure.ingested_at,
            func.min(AlertLog.sent_at),
            func.max(AlertLog.sent_at),
            func.count(AlertLog.id),
        )
        .join(Image, Image.exposure_id == Exposure.id)
        .join(SubtractionImage, SubtractionImage.new_image_id == Image.id)
        .join(Sighting, Sighting.subtraction_id == SubtractionImage.id)
        .join(AlertLog, AlertLog.sighting_id == Sighting.id)
        .group_by(Exposure.id, Exposure.ingested_at)
        .order_by(Exposure.ingested_at.desc(), Exposure.id.desc())
        .limit(n)
    ).all()
    return [
        {
            "exposure_id": eid,
            "ingested_at": ing.isoformat(),
            "first_s": _seconds(first, ing),
            "last_s": _seconds(last, ing),
            "alerts": int(k),
        }
        for eid, ing, first, last, k in reversed(rows)
    ]


class StatusCache:
    """The broker's view of every stage (:func:`seechange.streaming.status.pipeline_status`), kept for
    ``ttl_s`` seconds so that page loads and polling do not each ask the broker.

    When the broker cannot be asked, ``get`` returns the error text instead of stages.
    """

    def __init__(self, settings: Settings, *, ttl_s: float = 5.0, last: int = 3) -> None:
        self.settings, self.ttl_s, self.last = settings, ttl_s, last
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        """``{"stages": [...], "error": None}`` or ``{"stages": [], "error": "..."}``; ``asked_at`` ISO."""
        with self._lock:
            if time.monotonic() - self._at < self.ttl_s:
                return self._value
            from seechange.streaming.status import pipeline_status

            try:
                stages = []
                for s in pipeline_status(self.settings, last=self.last):
                    d = asdict(s)
                    d["total_lag"] = s.total_lag
                    d["lag"] = {str(k): v for k, v in sorted(s.lag.items())}
                    stages.append(d)
                value: dict[str, Any] = {"stages": stages, "error": None}
            except Exception as exc:  # noqa: BLE001 - broker down or unreachable: the page says so, not a 500
                log.warning("broker status unavailable: %s", exc)
                value = {"stages": [], "error": f"{type(exc).__name__}: {exc}"}
            value["asked_at"] = dt.datetime.now(dt.UTC).isoformat()
            self._value, self._at = value, time.monotonic()
            return value
