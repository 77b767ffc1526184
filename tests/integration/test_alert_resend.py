"""The alert re-send path, with a real ``seechange serve alert`` process killed where a duplicate is allowed.

A small night is run in-process up to detect into an isolated database; its sighting-found events are put on
the topic. The alert service is started with the test-only fault point ``alert:after-delivery`` (SIGKILL
after the broker confirmed the first packet, before its ``alert_log`` outbox row is marked sent), then
restarted without it. The killed one is left staged, its stored bytes those on the topic. Afterwards every
good sighting has exactly one ``alert_log`` row, marked sent, and one alert on the topic, except those
killed in flight (one message, or the batch the service had fetched and delivered together): each is there
twice, with the same alert id and byte-identical content (key, value), the bytes stored in its outbox row.
Nothing is dead-lettered.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import event, func, select

from seechange.config import PROJECT_ROOT, Settings
from seechange.models import AlertLog, Sighting
from seechange.models.session import make_engine, make_session_factory
from seechange.orchestrate import service_env
from seechange.pipeline.alert import build_alerts
from seechange.pipeline.detect import sighting_event
from seechange.streaming.framing import decode, encode
from seechange.streaming.registry import SchemaRegistry
from seechange.timestamps import now_ms
from tests.integration._chain_night import run_chain, simulate
from tests.integration._night import isolated_run, message_count, read_topic
from tests.integration._runloop_worker import produce_values


def _serve_alert(settings: Settings, log: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    with open(log, "ab") as fh:
        return subprocess.run(
            [sys.executable, "-m", "seechange.cli", "serve", "alert", *extra],
            env=service_env(settings),
            cwd=PROJECT_ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=180,
            check=False,
        )


def test_crash_between_delivery_and_alert_log_resends_the_same_alert(
    test_settings: Settings, tmp_path: Path
) -> None:
    registry = SchemaRegistry.load()
    with isolated_run(test_settings, "resend") as settings:
        night = tmp_path / "night"
        raw = simulate(night)
        shutil.copytree(night, settings.data_dir, dirs_exist_ok=True)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        events: list[tuple[str, bytes]] = []

        def detected(sightings: list[Sighting]) -> None:
            for s in sightings:
                record = sighting_event(s, produced_at_ms=now_ms(), ingested_at_ms=now_ms())
                events.append((str(s.object_id), encode(registry, "sighting_found", record)))

        try:
            run_chain(sessions, Path(settings.data_dir), raw, on_detected=detected)
            with sessions() as s:
                good = set(s.scalars(select(Sighting.id).where(Sighting.is_good.is_(True))))
            assert len(good) >= 3, "the night must give a few good sightings"
            produce_values(settings, "sighting-found", events)

            log = tmp_path / "alert.log"
            armed = settings.model_copy(update={"fault_point": "alert:after-delivery"})
            first = _serve_alert(armed, log)
            assert first.returncode == -signal.SIGKILL, log.read_text()
            # killed after its first delivery: one message, or the batch of messages the service had fetched
            # (the run loop's batch path: one transaction, one delivery for them all)
            first_copies = read_topic(settings.kafka_bootstrap, settings.topic("alerts"))
            assert 1 <= len(first_copies) <= len(good)
            in_flight = {
                decode(registry, m.value() or b"", expect="alert")[1]["alertId"]: m.value()
                for m in first_copies
            }
            assert len(in_flight) == len(first_copies)
            with sessions() as s:  # staged (committed before the delivery), not marked sent
                staged = s.scalars(select(AlertLog)).all()
                assert {r.alert_id: r.packet for r in staged} == in_flight
                assert all(r.sent_at is None for r in staged)

            # longer than the group session timeout (10 s): the killed member holds the partitions until then
            second = _serve_alert(settings, log, "--idle-timeout", "20")
            assert second.returncode == 0, log.read_text()
            text = log.read_text()
            assert "test fault point after-delivery: SIGKILL" in text

            msgs = read_topic(settings.kafka_bootstrap, settings.topic("alerts"))
            ids = Counter(decode(registry, m.value() or b"", expect="alert")[1]["alertId"] for m in msgs)
            assert set(ids) == good  # every good sighting alerted
            twice = {i for i, n in ids.items() if n > 1}
            assert twice == set(in_flight) and all(ids[i] == 2 for i in twice), ids  # those killed in flight
            for i in twice:  # re-sent byte for byte: same key, same value, the first copy's bytes
                copies = [
                    m for m in msgs if decode(registry, m.value() or b"", expect="alert")[1]["alertId"] == i
                ]
                assert copies[0].key() == copies[1].key() and copies[0].value() == copies[1].value()
                assert copies[0].value() == in_flight[i]
            assert len(msgs) == len(good) + len(in_flight)
            with sessions() as s:
                logged = list(s.scalars(select(AlertLog.alert_id)))
                assert s.scalar(select(func.count(AlertLog.id)).where(AlertLog.sent_at.is_(None))) == 0
                stored = {int(a): p for a, p in s.execute(select(AlertLog.alert_id, AlertLog.packet))}
            assert sorted(logged) == sorted(good)  # one row each, the re-sent one included
            for m in msgs:  # every packet on the topic is the outbox's bytes
                assert m.value() == stored[decode(registry, m.value() or b"", expect="alert")[1]["alertId"]]
            for stage_input in ("sighting-found",):
                assert message_count(settings.kafka_bootstrap, settings.topic(f"{stage_input}.dlq")) == 0

            # the batch path (the in-process chain: one query per kind for a difference image's packets)
            # gives the bytes the service built one sighting at a time
            queries: list[str] = []
            event.listen(engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
            with sessions() as s:  # a new session: only the sightings' own rows are loaded, as in the chain
                by_sub: dict[int, list[Sighting]] = {}
                for sg in s.scalars(select(Sighting).where(Sighting.id.in_(good)).order_by(Sighting.id)):
                    by_sub.setdefault(sg.subtraction_id, []).append(sg)
                for batch in by_sub.values():
                    queries.clear()
                    records = build_alerts(s, Path(settings.data_dir), batch)
                    assert len(queries) <= 9, queries  # whatever the batch size
                    assert [encode(registry, "alert", r) for r in records] == [stored[x.id] for x in batch]
        finally:
            engine.dispose()
