"""The same night processed twice gives the same Objects, names and alert packets, field by field.

One simulated field of 6 epochs (512x1024 CCDs; the first 3 build the reference) goes through the in-process
chain into two fresh databases with two copies of the data root. The runs differ on purpose in what should
not matter:

- run A alerts each subtraction's sightings right after detecting them (as the services do when nothing
  lags); run B detects every epoch first and builds all packets at the end, as a lagging alert service
  would (so the Objects already hold the later epochs when the packets are built);
- run B's database holds an unrelated Object before the night starts, so its Object ids are shifted.

Packets are then compared field by field; the only fields allowed to differ are the database-assigned
``objectId`` (compared through the Object's name instead).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.localservices.postgres import create_database, drop_database
from seechange.models import Object, Sighting
from seechange.models.migrate import upgrade
from seechange.models.session import make_engine, make_session_factory
from seechange.pipeline.alert import build_alert
from seechange.pipeline.outbox import alert_to_send
from seechange.streaming.framing import decode, encode
from seechange.streaming.registry import SchemaRegistry
from tests.integration._chain_night import run_chain, simulate


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("repro-night")
    return root, simulate(root)


@pytest.fixture
def two_databases(endpoints: Settings) -> Iterator[tuple[sessionmaker[Session], sessionmaker[Session]]]:
    names = [f"repro_{tag}_{uuid.uuid4().hex[:6]}" for tag in "ab"]
    engines = []
    try:
        for name in names:
            url = create_database(endpoints.database_url, name)
            upgrade(url)
            engines.append(make_engine(url))
        yield make_session_factory(engines[0]), make_session_factory(engines[1])
    finally:
        for engine in engines:
            engine.dispose()
        for name in names:
            drop_database(endpoints.database_url, name)


def _copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _run(sessions: sessionmaker[Session], root: Path, raw: list[str], *, alert_late: bool) -> dict[int, Any]:
    """The night through the chain; the packets staged (alert id -> record decoded from the outbox bytes)."""
    pending: list[int] = []
    packets: dict[int, Any] = {}
    registry = SchemaRegistry.load()

    def alert(ids: list[int]) -> None:  # as the alert service does: build, encode and stage (one transaction)
        with sessions() as s, s.begin():
            for sid in ids:
                sighting = s.get(Sighting, sid)
                assert sighting is not None

                def packet(sighting: Sighting = sighting) -> bytes:
                    return encode(registry, "alert", build_alert(s, root, sighting))

                row = alert_to_send(s, sighting, topic="alerts", make_packet=packet)
                assert row is not None and row.packet is not None  # each staged once
                packets[sid] = decode(registry, row.packet, expect="alert")[1]

    def detected(sightings: list[Sighting]) -> None:
        good = [x.id for x in sightings if x.is_good]
        if alert_late:
            pending.extend(good)
        else:
            alert(good)

    run_chain(sessions, root, raw, on_detected=detected)
    if alert_late:
        alert(pending)
    return packets


def _normalised(packet: dict[str, Any]) -> dict[str, Any]:
    out = dict(packet)
    out["object"] = {k: v for k, v in packet["object"].items() if k != "objectId"}
    out["sighting"] = {k: v for k, v in packet["sighting"].items() if k != "objectId"}
    return out


def _objects(sessions: sessionmaker[Session]) -> list[tuple[Any, ...]]:
    with sessions() as s:
        rows = s.scalars(select(Object).where(Object.is_test.is_(False)).order_by(Object.name)).all()
        return [
            (
                o.name,
                o.ra,
                o.dec,
                o.healpix,
                o.n_sightings,
                o.first_mjd,
                o.last_mjd,
                o.band_latest,
                o.mag_latest,
            )
            for o in rows
        ]


def test_same_night_twice_gives_same_objects_names_and_packets(
    night: tuple[Path, list[str]],
    two_databases: tuple[sessionmaker[Session], sessionmaker[Session]],
    tmp_path: Path,
) -> None:
    src, raw = night
    db_a, db_b = two_databases
    with db_b() as s, s.begin():  # shifts run B's Object ids
        s.add(
            Object(
                name="SC99unrelated", ra=200.0, dec=40.0, healpix=1, first_mjd=1.0, last_mjd=1.0, is_test=True
            )
        )

    packets_a = _run(db_a, _copy_root(src, tmp_path / "a"), raw, alert_late=False)
    packets_b = _run(db_b, _copy_root(src, tmp_path / "b"), raw, alert_late=True)

    # the same Objects with the same names, positions and counts
    objects_a, objects_b = _objects(db_a), _objects(db_b)
    assert objects_a == objects_b
    assert len(objects_a) > 0 and any(o[4] > 1 for o in objects_a), "the night must give repeated Objects"

    # the same alerts (ids are the sighting ids: the same order of work gives the same ids), field by field
    assert sorted(packets_a) == sorted(packets_b) and len(packets_a) > 0
    for alert_id in packets_a:
        a, b = _normalised(packets_a[alert_id]), _normalised(packets_b[alert_id])
        assert a.keys() == b.keys()
        for field in a:
            assert a[field] == b[field], f"alert {alert_id}: {field} differs: {a[field]!r} != {b[field]!r}"

    # and each packet describes its Object as of its sighting: no later epoch
    with db_b() as s:
        ids_by_name = {o.name: o.id for o in s.scalars(select(Object))}
        for packet in packets_b.values():
            obj, sg = packet["object"], packet["sighting"]
            assert obj["lastMjd"] == sg["mjd"]
            earlier = [p["mjd"] for p in packet["prvSightings"] or []]
            assert all(m < sg["mjd"] for m in earlier)
            n_before = s.scalar(
                select(func.count(Sighting.id)).where(
                    Sighting.object_id == ids_by_name[obj["name"]], Sighting.mjd < sg["mjd"]
                )
            )
            assert obj["nSightings"] == n_before + 1
