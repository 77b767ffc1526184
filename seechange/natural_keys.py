"""Products by what identifies them outside one database: paths, names, and packets with ids replaced.

Two runs of the same night into two databases (the fault harness's disturbed and undisturbed runs, or two
replays) get different row ids (a sequence burns the ids of every rolled-back transaction), so they are
compared through natural keys: an Exposure by its raw path, a Sighting by ``(raw path of the new exposure,
index in the image)``, a SubtractionImage by its new exposure's raw path, an Object by its name.
:func:`natural_keys` lists every table that way; :func:`stored_packets` decodes every alert packet of the
outbox with its ids so replaced; :func:`packet_differences` names the fields in which two packets differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.models import (
    AlertLog,
    CoaddImage,
    Exposure,
    ForcedPhotometry,
    Image,
    Object,
    Sighting,
    SubtractionImage,
)
from seechange.streaming.framing import decode
from seechange.streaming.registry import SchemaRegistry

__all__ = ["natural_keys", "normalise_packet", "normalise_packets", "packet_differences", "stored_packets"]

SightingKey = tuple[str, int]


def _sighting_keys(session: Session) -> dict[int, SightingKey]:
    return {
        int(sid): (str(path), int(index))
        for sid, path, index in session.execute(
            select(Sighting.id, Exposure.filepath, Sighting.index_in_image)
            .join(SubtractionImage, Sighting.subtraction_id == SubtractionImage.id)
            .join(Image, SubtractionImage.new_image_id == Image.id)
            .join(Exposure, Image.exposure_id == Exposure.id)
        )
    }


def _subtraction_keys(session: Session) -> dict[int, str]:
    return {
        int(i): str(path)
        for i, path in session.execute(
            select(SubtractionImage.id, Exposure.filepath)
            .join(Image, SubtractionImage.new_image_id == Image.id)
            .join(Exposure, Image.exposure_id == Exposure.id)
        )
    }


def natural_keys(session: Session) -> dict[str, list[Any]]:
    """Every product by what identifies it outside the database (paths, names), sorted; ids never appear.

    Sightings are ``(raw path of the new exposure, index in the image)``; alerts, Object memberships and
    forced points refer to sightings, subtractions and Objects by their keys. ``object_rows`` holds each
    Object's name, position, count, first/last MJD and latest band and magnitude (exact floats: the same
    sightings associated in the same order give the same bits).
    """
    sighting_key = _sighting_keys(session)
    sub_key = _subtraction_keys(session)
    object_name = {int(i): str(n) for i, n in session.execute(select(Object.id, Object.name))}
    objects = session.scalars(select(Object)).all()
    return {
        "exposures": sorted(session.scalars(select(Exposure.filepath))),
        "images": sorted(
            session.scalars(select(Exposure.filepath).join(Image, Image.exposure_id == Exposure.id))
        ),
        "coadd_images": sorted(session.scalars(select(CoaddImage.reference_key))),
        "subtraction_images": sorted(sub_key.values()),
        "sightings": sorted(sighting_key.values()),
        "objects": sorted(object_name.values()),
        "object_rows": sorted(
            (o.name, o.ra, o.dec, o.n_sightings, o.first_mjd, o.last_mjd, o.band_latest, o.mag_latest)
            for o in objects
        ),
        "memberships": sorted(
            (object_name[int(o)], *sighting_key[int(s)])
            for s, o in session.execute(select(Sighting.id, Sighting.object_id))
            if o is not None
        ),
        "forced_photometry": sorted(
            (object_name[int(o)], sub_key[int(sub)], bool(det))
            for o, sub, det in session.execute(
                select(ForcedPhotometry.object_id, ForcedPhotometry.subtraction_id, ForcedPhotometry.detected)
            )
        ),
        "alert_log": sorted(sighting_key[int(a)] for a in session.scalars(select(AlertLog.sighting_id))),
    }


def _plain(value: Any) -> Any:
    """``value`` with NaN spelt ``"nan"`` (so that equal packets compare equal) and tuples as lists."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def normalise_packet(
    record: dict[str, Any],
    sighting_key: dict[int, SightingKey],
    sub_key: dict[int, str],
    object_name: dict[int, str],
) -> dict[str, Any]:
    """An alert record with every database id replaced by its natural key (and NaN as ``"nan"``)."""
    out = _plain(record)
    out["alertId"] = list(sighting_key[int(record["alertId"])])
    sg = out["sighting"]
    sg["sightingId"] = list(sighting_key[int(sg["sightingId"])])
    sg["subtractionId"] = sub_key[int(sg["subtractionId"])]
    sg["objectId"] = object_name[int(sg["objectId"])]
    out["object"]["objectId"] = object_name[int(record["object"]["objectId"])]
    for p in out.get("prvSightings") or []:
        p["sightingId"] = list(sighting_key[int(p["sightingId"])])
    for name in ("prvForcedPhotometry", "prvNonDetections"):
        for p in out.get(name) or []:
            p["subtractionId"] = sub_key[int(p["subtractionId"])]
    return dict(out)


def normalise_packets(session: Session, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alert records (e.g. received from the topic) normalised with the ids of ``session``'s database."""
    sighting_key, sub_key = _sighting_keys(session), _subtraction_keys(session)
    object_name = {int(i): str(n) for i, n in session.execute(select(Object.id, Object.name))}
    return [normalise_packet(r, sighting_key, sub_key, object_name) for r in records]


def stored_packets(
    session: Session, registry: SchemaRegistry | None = None
) -> dict[SightingKey, dict[str, Any]]:
    """Every packet stored in the alert outbox, decoded and normalised (:func:`normalise_packet`), by the
    natural key of its sighting."""
    registry = registry or SchemaRegistry.load()
    sighting_key, sub_key = _sighting_keys(session), _subtraction_keys(session)
    object_name = {int(i): str(n) for i, n in session.execute(select(Object.id, Object.name))}
    out = {}
    for sid, packet in session.execute(select(AlertLog.sighting_id, AlertLog.packet)):
        if packet is None:
            continue
        record = decode(registry, packet, expect="alert")[1]
        out[sighting_key[int(sid)]] = normalise_packet(record, sighting_key, sub_key, object_name)
    return out


def packet_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields in which two packets differ: top-level names, ``sighting.<name>`` and ``object.<name>``."""
    a, b = _plain(a), _plain(b)
    out = [k for k in sorted(set(a) | set(b)) if k not in ("sighting", "object") and a.get(k) != b.get(k)]
    for part in ("sighting", "object"):
        pa, pb = a.get(part) or {}, b.get(part) or {}
        out += [f"{part}.{k}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return out
