"""The shared run loop against the real broker and PostgreSQL: events out, dead letters, retries, offsets."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import PROJECT_ROOT, Settings
from seechange.errors import ImpossibleValue
from seechange.streaming.framing import decode, encode
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import (
    InfrastructureError,
    MessageContext,
    OutEvent,
    is_infrastructure_error,
    run_service,
)
from seechange.streaming.subscribe import subscribe
from seechange.timestamps import epoch_ms
from tests.integration._runloop_worker import (
    consume_all,
    create_tables,
    drop_tables,
    exposure_record,
    image_event,
    isolated_topics,
    produce_values,
    topic_size,
)


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture()
def settings(test_settings: Settings) -> Iterator[Settings]:
    with isolated_topics(test_settings, "rl") as isolated:
        yield isolated


@pytest.fixture()
def table(db_engine: Engine) -> Iterator[str]:
    name = f"rl_{uuid.uuid4().hex[:8]}"
    create_tables(db_engine, name)
    yield name
    drop_tables(db_engine, name)


def _value(msg: Message) -> bytes:
    value = msg.value()
    assert isinstance(value, bytes)
    return value


def _headers(msg: Message) -> dict[str, str]:
    headers = msg.headers() or []
    assert isinstance(headers, list)
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers}


def _committed(settings: Settings, group: str, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        tp = consumer.committed([TopicPartition(settings.topic("exposure-ready"), partition)], timeout=10)[0]
        return int(tp.offset)
    finally:
        consumer.close()


def test_good_events_flow_and_bad_input_goes_to_the_dlq(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine, table: str
) -> None:
    records = [exposure_record(1), exposure_record(2, field="BAD"), exposure_record(3)]
    values = [encode(registry, "exposure_ready", r) for r in records] + [b"garbage"]
    # One key: one partition, so the order is kept and the handler must go on past the failures.
    where = produce_values(settings, "exposure-ready", [("night-1", v) for v in values])
    partition = where[0][0]
    assert {p for p, _ in where} == {partition}
    seen: list[int] = []

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        seen.append(record["exposure_id"])
        assert ctx.topic == settings.topic("exposure-ready") and ctx.key == b"night-1"
        if record["field"] == "BAD":
            raise ImpossibleValue(f"exposure {record['exposure_id']} has an impossible field")
        image_id = 100 + record["exposure_id"]
        session.execute(
            text(f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (:e, :i, :f)"),
            {"e": record["exposure_id"], "i": image_id, "f": record["field"]},
        )
        return [image_event(record, image_id)]

    stats = run_service(
        settings,
        name="reduce",
        input_topic="exposure-ready",
        input_schema="exposure_ready",
        handler=handler,
        session_factory=sessionmaker(db_engine),
        registry=registry,
        max_messages=4,
        idle_timeout=20,
        install_signal_handlers=False,
    )

    assert (stats.processed, stats.dead_lettered, stats.produced, stats.retried) == (2, 2, 2, 0)
    assert seen == [1, 2, 3]  # the message after the failing one was handled
    with db_engine.connect() as conn:
        rows = conn.execute(text(f"SELECT exposure_id, image_id, field FROM {table}_rows ORDER BY 1")).all()
    assert [tuple(r) for r in rows] == [(1, 101, "COSMOS"), (3, 103, "COSMOS")]

    out = consume_all(settings, "image-reduced", expect=2)
    assert topic_size(settings, "image-reduced") == 2
    decoded = sorted(
        (decode(registry, _value(m), expect="image_reduced")[1] for m in out), key=lambda r: r["image_id"]
    )
    assert [(r["image_id"], r["exposure_id"], r["field"], r["band"], r["section_id"]) for r in decoded] == [
        (101, 1, "COSMOS", "r", "N6"),
        (103, 3, "COSMOS", "r", "N6"),
    ]
    assert decoded[0]["image_path"] == "reduced/abcd1234/c4d_0001_N6"
    assert decoded[1]["mjd"] == pytest.approx(60400.03)
    assert epoch_ms(decoded[0]["ingested_at"]) == records[0]["ingested_at"]
    assert sorted(bytes(m.key() or b"") for m in out) == [b"101", b"103"]

    dlq = consume_all(settings, "exposure-ready.dlq", expect=2)
    assert len(dlq) == 2 and topic_size(settings, "exposure-ready.dlq") == 2
    by_offset = {int(_headers(m)["origin_offset"]): m for m in dlq}
    assert sorted(by_offset) == [where[1][1], where[3][1]]
    for index, error_class, text_part in [
        (1, "ImpossibleValue", "exposure 2 has an impossible field"),
        (3, "DecodeError", "wrong magic byte 0x67"),
    ]:
        msg = by_offset[where[index][1]]
        headers = _headers(msg)
        assert msg.value() == values[index]  # byte-exact
        assert msg.key() == b"night-1"
        assert set(headers) == {
            "error_class",
            "error_message",
            "origin_topic",
            "origin_partition",
            "origin_offset",
            "service",
            "failed_at",
        }
        assert headers["error_class"] == error_class
        assert text_part in headers["error_message"]
        assert headers["origin_topic"] == settings.topic("exposure-ready")
        assert headers["origin_partition"] == str(partition)
        assert headers["service"] == "reduce"
        assert headers["failed_at"].endswith("Z")
    assert _committed(settings, f"{settings.consumer_group_prefix}-reduce", partition) == where[3][1] + 1


def test_an_unexpected_error_stops_the_service_after_n_and_commits_nothing(
    settings: Settings, registry: SchemaRegistry, database_url: str, db_engine: Engine, table: str
) -> None:
    """A bug (``TypeError``) is not bad input: never dead-lettered; N failures in a row stop the service."""
    records = [exposure_record(11), exposure_record(12, field="BUG"), exposure_record(13)]
    where = produce_values(
        settings, "exposure-ready", [("night-2", encode(registry, "exposure_ready", r)) for r in records]
    )
    partition = where[0][0]
    assert {p for p, _ in where} == {partition}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEECHANGE_", "WORKER_"))}
    env.update(
        {
            "SEECHANGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "SEECHANGE_DATABASE_URL": database_url,
            "SEECHANGE_TOPIC_PREFIX": settings.topic_prefix,
            "SEECHANGE_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
            "SEECHANGE_MAX_CONSECUTIVE_ERRORS": "2",
            "WORKER_TABLE": table,
            "WORKER_BUG_FIELD": "BUG",
            "WORKER_IDLE_TIMEOUT": "30",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration._runloop_worker"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert proc.returncode != 0, proc.stderr
    assert "TooManyErrors" in proc.stderr and "2 consecutive unexpected errors" in proc.stderr, proc.stderr
    assert "TypeError" in proc.stderr
    assert proc.stderr.count("unexpected TypeError") == 2  # tried twice, then stopped
    # exposure 11 was handled and committed; 12 (the bug) and so 13 were not: both will be redelivered
    assert _committed(settings, f"{settings.consumer_group_prefix}-worker", partition) == where[1][1]
    with db_engine.connect() as conn:
        assert conn.execute(text(f"SELECT exposure_id FROM {table}_rows")).scalars().all() == [11]
    assert topic_size(settings, "exposure-ready.dlq") == 0
    assert topic_size(settings, "image-reduced") == 1


def test_infrastructure_errors_are_retried_and_nothing_is_dead_lettered(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine, table: str
) -> None:
    where = produce_values(
        settings, "exposure-ready", [("k", encode(registry, "exposure_ready", exposure_record(5)))]
    )
    attempts: list[int] = []

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        attempts.append(ctx.offset)
        session.execute(text(f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (5, 105, 'x')"))
        if len(attempts) <= 2:
            raise InfrastructureError("database is restarting")  # rolls the insert back
        return [image_event(record, 105)]

    stats = run_service(
        settings,
        name="retry",
        input_topic="exposure-ready",
        input_schema="exposure_ready",
        handler=handler,
        session_factory=sessionmaker(db_engine),
        registry=registry,
        max_messages=1,
        idle_timeout=20,
        install_signal_handlers=False,
    )

    assert (stats.processed, stats.dead_lettered, stats.retried, stats.produced) == (1, 0, 2, 1)
    assert attempts == [where[0][1]] * 3
    with db_engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}_rows")).scalar_one() == 1
    out = consume_all(settings, "image-reduced", expect=1)
    assert [decode(registry, _value(m))[1]["image_id"] for m in out] == [105]
    assert topic_size(settings, "exposure-ready.dlq") == 0
    assert _committed(settings, f"{settings.consumer_group_prefix}-retry", where[0][0]) == where[0][1] + 1


def _alert(alert_id: int) -> dict[str, Any]:
    sighting = {
        "sightingId": alert_id,
        "subtractionId": 9,
        "objectId": 77,
        "mjd": 60400.5,
        "band": "g",
        "ra": 150.1,
        "dec": 2.2,
        "x": 10.5,
        "y": 20.25,
        "psfFlux": 1500.0 * alert_id,
        "psfFluxErr": 50.0,
        "snr": 30.0,
        "flags": 0,
        "zeroPoint": 31.5,
        "score": 12.5,
        "isPositive": True,
        "isGood": True,
        "provenanceId": "0123456789abcdef",
    }
    obj = {
        "objectId": 77,
        "name": "SC26aaa",
        "ra": 150.1,
        "dec": 2.2,
        "nSightings": alert_id,
        "firstMjd": 60400.0,
        "lastMjd": 60400.5,
    }
    return {
        "alertId": alert_id,
        "schemaVersion": "1.0",
        "sighting": sighting,
        "object": obj,
        "cutoutDifference": b"\x1f\x8b fake gzip bytes",
    }


def test_subscribe_from_beginning_from_a_time_and_from_now(
    test_settings: Settings, registry: SchemaRegistry
) -> None:
    with isolated_topics(test_settings, "sub", extra=("alerts",)) as settings:
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        t0 = 1_700_000_000_000  # Unix ms; explicit message timestamps make the time look-up exact
        old = {i: encode(registry, "alert", _alert(i)) for i in (1, 2, 3)}
        for i, value in old.items():
            producer.produce(settings.topic("alerts"), key=str(i), value=value, timestamp=t0 + i * 60_000)
        producer.flush(10)

        got = list(subscribe(settings, start="beginning", max_messages=3, timeout=15, registry=registry))
        assert sorted(r["alertId"] for r, _ in got) == [1, 2, 3]
        assert all(raw == old[r["alertId"]] for r, raw in got)  # raw bytes as produced
        assert (
            got[0][0]["cutoutDifference"] == b"\x1f\x8b fake gzip bytes" and got[0][0]["prvSightings"] is None
        )

        since = list(
            subscribe(settings, start=(t0 + 2 * 60_000) / 1000, max_messages=2, timeout=10, registry=registry)
        )
        assert sorted(r["alertId"] for r, _ in since) == [2, 3]
        bright = list(
            subscribe(
                settings,
                start="beginning",
                max_messages=2,
                timeout=10,
                registry=registry,
                expect="alert",
                filter=lambda r: r["sighting"]["psfFlux"] > 2000.0,
            )
        )
        assert sorted(r["alertId"] for r, _ in bright) == [2, 3]
        assert list(subscribe(settings, start=(t0 + 10 * 60_000) / 1000, timeout=2, registry=registry)) == []

        # A named group commits what it handed out: a second subscriber of the group resumes after it.
        group = f"{settings.consumer_group_prefix}-subscriber"
        first = list(
            subscribe(settings, start="beginning", group=group, max_messages=2, timeout=10, registry=registry)
        )
        rest = list(subscribe(settings, start="beginning", group=group, timeout=2, registry=registry))
        assert len(first) == 2 and len(rest) == 1
        assert sorted(r["alertId"] for r, _ in first + rest) == [1, 2, 3]

        stop = threading.Event()

        def keep_producing() -> None:  # live alerts until the subscriber got one
            i = 100
            while not stop.is_set():
                producer.produce(
                    settings.topic("alerts"), key=str(i), value=encode(registry, "alert", _alert(i))
                )
                producer.flush(5)
                i += 1
                stop.wait(0.3)

        thread = threading.Thread(target=keep_producing)
        thread.start()
        try:
            live = list(subscribe(settings, start="now", max_messages=1, timeout=20, registry=registry))
        finally:
            stop.set()
            thread.join()
        assert len(live) == 1 and live[0][0]["alertId"] >= 100  # nothing from before "now"


def test_database_down_retries_commits_nothing_then_recovers(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine, table: str
) -> None:
    where = produce_values(
        settings, "exposure-ready", [("k", encode(registry, "exposure_ready", exposure_record(8)))]
    )

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        session.execute(text(f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (8, 108, 'x')"))
        return [image_event(record, 108)]

    dead = create_engine("postgresql+psycopg2://postgres@/postgres?host=/nonexistent-socket-dir")
    stop = threading.Event()
    timer = threading.Timer(3.0, stop.set)  # an operator stopping the service while the database is down
    timer.start()
    try:
        down = run_service(
            settings,
            name="dbdown",
            input_topic="exposure-ready",
            input_schema="exposure_ready",
            handler=handler,
            session_factory=sessionmaker(dead),
            registry=registry,
            idle_timeout=20,
            stop_event=stop,
            install_signal_handlers=False,
        )
    finally:
        timer.cancel()
        dead.dispose()
    assert (down.processed, down.dead_lettered, down.produced) == (0, 0, 0)
    assert down.retried >= 2
    group = f"{settings.consumer_group_prefix}-dbdown"
    assert _committed(settings, group, where[0][0]) < 0  # nothing committed: no offset for the group
    assert topic_size(settings, "exposure-ready.dlq") == 0 and topic_size(settings, "image-reduced") == 0

    up = run_service(
        settings,
        name="dbdown",
        input_topic="exposure-ready",
        input_schema="exposure_ready",
        handler=handler,
        session_factory=sessionmaker(db_engine),
        registry=registry,
        max_messages=1,
        idle_timeout=20,
        install_signal_handlers=False,
    )
    assert (up.processed, up.retried, up.produced) == (1, 0, 1)
    assert _committed(settings, group, where[0][0]) == where[0][1] + 1
    with db_engine.connect() as conn:
        assert conn.execute(text(f"SELECT image_id FROM {table}_rows")).scalars().all() == [108]


@pytest.mark.parametrize(
    ("exc", "infra"),
    [
        (InfrastructureError("x"), True),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True), True),
        (DBAPIError("SELECT 1", {}, Exception("bad")), False),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (ValueError("impossible value"), False),
        (FileNotFoundError("raw/x.fits"), False),
        (ConnectionRefusedError("broker"), True),
    ],
)
def test_error_classification(exc: Exception, infra: bool) -> None:
    assert is_infrastructure_error(exc) is infra


def _bare_loop(settings: Settings, name: str, registry: SchemaRegistry, db_engine: Engine) -> Any:
    """A run loop of service ``name`` on exposure-ready with a do-nothing handler, not subscribed yet."""
    from seechange.streaming.runloop import _Loop

    return _Loop(
        settings,
        name,
        "exposure-ready",
        "exposure_ready",
        lambda *_: [],
        sessionmaker(db_engine),
        registry,
        threading.Event(),
        None,
        0.5,
        None,
    )


def test_a_refused_offset_commit_is_left_to_redelivery(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine
) -> None:
    """The broker refuses the commit (another member owns the partition): logged, not fatal, not committed."""
    where = produce_values(
        settings, "exposure-ready", [("k", encode(registry, "exposure_ready", exposure_record(21)))]
    )
    group = f"{settings.consumer_group_prefix}-owner"
    owner = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    owner.subscribe([settings.topic("exposure-ready")])
    loop = _bare_loop(settings, "owner", registry, db_engine)
    try:
        msg = None
        for _ in range(30):  # the owner joins the group and gets the message
            got = owner.poll(1.0)
            if got is not None and got.error() is None:
                msg = got
                break
        assert msg is not None, "the owner got no message"
        assert (msg.partition(), msg.offset()) == where[0]
        loop.assigned = {(str(msg.topic()), int(msg.partition() or 0))}  # it thinks it owns the partition
        assert loop._commit(msg, "test") is False  # UNKNOWN_MEMBER_ID: not a member of the group
    finally:
        loop.consumer.close()
        owner.close()
    assert _committed(settings, group, where[0][0]) < 0


def test_every_line_of_a_message_carries_its_ids_in_json(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine, table: str
) -> None:
    """JSON lines logged while a message is handled (by the handler, the loop, after the commit) name the
    service, topic, partition, offset, the input event's ids and, after the handler, its output's ids."""
    import io
    import json
    import logging

    from seechange.logformat import ContextFilter, JsonLines

    records = [exposure_record(21), exposure_record(22, field="BAD")]
    where = produce_values(
        settings, "exposure-ready", [("tile1", encode(registry, "exposure_ready", r)) for r in records]
    )
    stream = io.StringIO()
    capture = logging.StreamHandler(stream)
    capture.setFormatter(JsonLines())
    capture.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(capture)
    handler_log = logging.getLogger("tests.handler")
    previous_level = root.level
    root.setLevel(logging.INFO)

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        handler_log.info("handling exposure")
        if record["field"] == "BAD":
            raise ImpossibleValue("impossible field")
        return [image_event(record, 500 + record["exposure_id"])]

    try:
        run_service(
            settings,
            name="reduce",
            input_topic="exposure-ready",
            input_schema="exposure_ready",
            handler=handler,
            session_factory=sessionmaker(db_engine),
            registry=registry,
            max_messages=2,
            idle_timeout=20,
            install_signal_handlers=False,
            after_db_commit=lambda: handler_log.info("committed"),
        )
    finally:
        root.removeHandler(capture)
        root.setLevel(previous_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {(d["message"], d.get("exposure_id")): d for d in lines}
    topic = settings.topic("exposure-ready")
    for exposure_id, (partition, offset) in zip((21, 22), where, strict=True):
        line = by_message[("handling exposure", exposure_id)]
        assert (line["service"], line["topic"], line["partition"], line["offset"]) == (
            "reduce",
            topic,
            partition,
            offset,
        )
        assert line["provenance_id"] == "0123456789abcdef" and "image_id" not in line
    committed = by_message[("committed", 21)]
    assert committed["image_id"] == 521 and committed["offset"] == where[0][1]  # the output's id
    dead = [d for d in lines if d["level"] == "ERROR" and "impossible field" in d["message"]]
    assert len(dead) == 1 and dead[0]["exposure_id"] == 22 and dead[0]["offset"] == where[1][1]
    assert all(
        d["service"] == "reduce" for d in lines if d["logger"].startswith("seechange.streaming.runloop")
    )


def test_a_commit_refused_after_the_group_moved_on_notices_the_lost_partition(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler outlasts ``max.poll.interval.ms``: the group goes on without the member and refuses its
    offset commit. The loop retries it after polling, which reports the partitions lost (logged) and rejoins;
    the retried commit (or that of the message handled again) lands; nothing is left uncommitted at the
    stop."""
    import logging

    from confluent_kafka.admin import AdminClient

    where = produce_values(
        settings, "exposure-ready", [("tile1", encode(registry, "exposure_ready", exposure_record(31)))]
    )
    group = f"{settings.consumer_group_prefix}-rebal"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    calls: list[int] = []
    gone, stop = threading.Event(), threading.Event()

    def members() -> int:
        (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
        return len(future.result().members)

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        calls.append(ctx.offset)
        if len(calls) == 1:  # the first time, work until the group has dropped this member
            for _ in range(600):
                if members() == 0:
                    gone.set()
                    break
                threading.Event().wait(0.1)
        return []

    stats: list[Any] = []
    worker = threading.Thread(
        target=lambda: stats.append(
            run_service(
                settings,
                name="rebal",
                input_topic="exposure-ready",
                input_schema="exposure_ready",
                handler=handler,
                session_factory=sessionmaker(db_engine),
                registry=registry,
                stop_event=stop,
                install_signal_handlers=False,
                consumer_overrides={"max.poll.interval.ms": 6000, "session.timeout.ms": 6000},
            )
        )
    )
    caplog.set_level(logging.INFO, logger="seechange.streaming.runloop")
    worker.start()
    try:
        for _ in range(900):
            if _committed(settings, group, where[0][0]) == where[0][1] + 1 or not worker.is_alive():
                break
            threading.Event().wait(0.1)
    finally:
        stop.set()
        worker.join(60)
    assert gone.is_set(), "the group never dropped the member"
    assert _committed(settings, group, where[0][0]) == where[0][1] + 1  # committed after all
    # the commit retried after the member rejoined, or the message handled again by the new member
    # (redelivered from the last committed offset; handlers are idempotent): never left uncommitted
    assert set(calls) == {where[0][1]} and len(calls) <= 2, calls
    assert stats and stats[0].processed == len(calls)
    text = [r.getMessage() for r in caplog.records]
    refused = [m for m in text if "offset commit failed" in m]
    assert any("ILLEGAL_GENERATION" in m or "UNKNOWN_MEMBER_ID" in m for m in refused), refused
    assert any("partitions lost" in m for m in text), text


def test_an_offset_kept_after_a_refused_commit_is_committed_at_the_stop(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine
) -> None:
    """A refused commit's offset, kept while the partition stays ours, is committed by the clean stop."""
    where = produce_values(
        settings, "exposure-ready", [("k", encode(registry, "exposure_ready", exposure_record(41)))]
    )
    loop = _bare_loop(settings, "keeper", registry, db_engine)
    loop.consumer.subscribe([loop.topic], on_assign=loop._on_assign, on_revoke=loop._on_revoke)
    msg = None
    for _ in range(60):  # joins the group and gets the message
        got = loop.consumer.poll(0.5)
        if got is not None and got.error() is None:
            msg = got
            break
    assert msg is not None and (msg.partition(), msg.offset()) == where[0]
    loop.uncommitted[(str(msg.topic()), int(msg.partition() or 0))] = int(msg.offset() or 0) + 1
    loop._close()
    assert loop.uncommitted == {}
    assert _committed(settings, f"{settings.consumer_group_prefix}-keeper", where[0][0]) == where[0][1] + 1


def test_a_batch_handler_gets_fetched_messages_together_and_a_bad_one_falls_back_to_one_by_one(
    settings: Settings, registry: SchemaRegistry, db_engine: Engine, table: str
) -> None:
    records = [exposure_record(i) for i in (1, 2, 3)] + [exposure_record(4, field="BAD")]
    records += [exposure_record(i) for i in (5, 6, 7)]
    values = [encode(registry, "exposure_ready", r) for r in records]
    values.insert(5, b"garbage")  # undecodable, between 4 and 5
    where = produce_values(settings, "exposure-ready", [("night-1", v) for v in values])
    partition = where[0][0]
    batches: list[list[int]] = []
    singles: list[int] = []

    class Handler:
        def _one(self, session: Session, record: dict[str, Any]) -> list[OutEvent]:
            if record["field"] == "BAD":
                raise ImpossibleValue(f"exposure {record['exposure_id']} has an impossible field")
            image_id = 100 + record["exposure_id"]
            session.execute(
                text(f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (:e, :i, :f)"),
                {"e": record["exposure_id"], "i": image_id, "f": record["field"]},
            )
            return [image_event(record, image_id)]

        def __call__(self, session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
            singles.append(record["exposure_id"])
            return self._one(session, record)

        def many(
            self, session: Session, events: list[dict[str, Any]], ctxs: list[MessageContext]
        ) -> list[list[OutEvent]]:
            batches.append([e["exposure_id"] for e in events])
            assert [c.offset for c in ctxs] == sorted(c.offset for c in ctxs)
            return [self._one(session, e) for e in events]

    stats = run_service(
        settings,
        name="reduce",
        input_topic="exposure-ready",
        input_schema="exposure_ready",
        handler=Handler(),
        session_factory=sessionmaker(db_engine),
        registry=registry,
        max_messages=8,
        idle_timeout=20,
        install_signal_handlers=False,
    )

    # every good message once, the two bad ones dead-lettered, whatever the batches were
    assert (stats.processed, stats.dead_lettered, stats.produced) == (6, 2, 6)
    with db_engine.connect() as conn:
        rows = conn.execute(text(f"SELECT exposure_id FROM {table}_rows ORDER BY 1")).scalars().all()
    assert list(rows) == [1, 2, 3, 5, 6, 7]
    assert sorted(
        decode(registry, _value(m), expect="image_reduced")[1]["image_id"]
        for m in consume_all(settings, "image-reduced", expect=6)
    ) == [101, 102, 103, 105, 106, 107]
    assert topic_size(settings, "image-reduced") == 6
    assert topic_size(settings, "exposure-ready.dlq") == 2
    assert (
        _committed(
            settings, "test-reduce" if False else f"{settings.consumer_group_prefix}-reduce", partition
        )
        == 8
    )
    # the eight were fetched before the loop started: they came in batches; the garbage split them, the bad
    # one's batch was rolled back (no row of it stayed: each row is in the table once) and went one by one
    assert batches and max(len(b) for b in batches) > 1
    assert 4 in singles and 4 in batches[0]
