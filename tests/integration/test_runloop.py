"""The shared run loop against the real broker and PostgreSQL: events out, dead letters, retries, offsets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.streaming.framing import decode, encode, epoch_ms
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import InfrastructureError, MessageContext, OutEvent, run_service
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


def _committed(settings: Settings, group: str, partition: int) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        tp = consumer.committed([TopicPartition(settings.topic("exposure-ready"), partition)], timeout=10)[0]
        return int(tp.offset)
    finally:
        consumer.close()


def test_good_events_flow_and_bad_ones_go_to_the_dlq(settings: Settings, registry: SchemaRegistry,
                                                      db_engine: Engine, table: str) -> None:
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
            raise ValueError(f"exposure {record['exposure_id']} has an impossible field")
        image_id = 100 + record["exposure_id"]
        session.execute(text(f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (:e, :i, :f)"),
                        {"e": record["exposure_id"], "i": image_id, "f": record["field"]})
        return [image_event(record, image_id)]

    stats = run_service(settings, name="reduce", input_topic="exposure-ready", input_schema="exposure_ready",
                        handler=handler, session_factory=sessionmaker(db_engine), registry=registry,
                        max_messages=4, idle_timeout=20, install_signal_handlers=False)

    assert (stats.processed, stats.dead_lettered, stats.produced, stats.retried) == (2, 2, 2, 0)
    assert seen == [1, 2, 3]  # the message after the failing one was handled
    with db_engine.connect() as conn:
        rows = conn.execute(text(f"SELECT exposure_id, image_id, field FROM {table}_rows ORDER BY 1")).all()
    assert [tuple(r) for r in rows] == [(1, 101, "COSMOS"), (3, 103, "COSMOS")]

    out = consume_all(settings, "image-reduced", expect=2)
    assert topic_size(settings, "image-reduced") == 2
    decoded = sorted((decode(registry, m.value(), expect="image_reduced")[1] for m in out),
                     key=lambda r: r["image_id"])
    assert [(r["image_id"], r["exposure_id"], r["field"], r["band"], r["section_id"]) for r in decoded] == [
        (101, 1, "COSMOS", "r", "N6"), (103, 3, "COSMOS", "r", "N6")]
    assert decoded[0]["image_path"] == "reduced/abcd1234/c4d_0001_N6"
    assert decoded[1]["mjd"] == pytest.approx(60400.03)
    assert epoch_ms(decoded[0]["ingested_at"]) == records[0]["ingested_at"]
    assert sorted(m.key() for m in out) == [b"101", b"103"]

    dlq = consume_all(settings, "exposure-ready.dlq", expect=2)
    assert len(dlq) == 2 and topic_size(settings, "exposure-ready.dlq") == 2
    by_offset = {int(dict(m.headers())["origin_offset"]): m for m in dlq}
    assert sorted(by_offset) == [where[1][1], where[3][1]]
    for index, error_class, text_part in [(1, "ValueError", "exposure 2 has an impossible field"),
                                          (3, "DecodeError", "wrong magic byte 0x67")]:
        msg = by_offset[where[index][1]]
        headers = {k: v.decode() for k, v in msg.headers()}
        assert msg.value() == values[index]  # byte-exact
        assert msg.key() == b"night-1"
        assert set(headers) == {"error_class", "error_message", "origin_topic", "origin_partition",
                                "origin_offset", "service", "failed_at"}
        assert headers["error_class"] == error_class
        assert text_part in headers["error_message"]
        assert headers["origin_topic"] == settings.topic("exposure-ready")
        assert headers["origin_partition"] == str(partition)
        assert headers["service"] == "reduce"
        assert headers["failed_at"].endswith("Z")
    assert _committed(settings, f"{settings.consumer_group_prefix}-reduce", partition) == where[3][1] + 1


def test_infrastructure_errors_are_retried_and_nothing_is_dead_lettered(
        settings: Settings, registry: SchemaRegistry, db_engine: Engine, table: str) -> None:
    where = produce_values(settings, "exposure-ready", [("k", encode(registry, "exposure_ready",
                                                                     exposure_record(5)))])
    attempts: list[int] = []

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        attempts.append(ctx.offset)
        session.execute(text(f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (5, 105, 'x')"))
        if len(attempts) <= 2:
            raise InfrastructureError("database is restarting")  # rolls the insert back
        return [image_event(record, 105)]

    stats = run_service(settings, name="retry", input_topic="exposure-ready", input_schema="exposure_ready",
                        handler=handler, session_factory=sessionmaker(db_engine), registry=registry,
                        max_messages=1, idle_timeout=20, install_signal_handlers=False)

    assert (stats.processed, stats.dead_lettered, stats.retried, stats.produced) == (1, 0, 2, 1)
    assert attempts == [where[0][1]] * 3
    with db_engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}_rows")).scalar_one() == 1
    out = consume_all(settings, "image-reduced", expect=1)
    assert [decode(registry, m.value())[1]["image_id"] for m in out] == [105]
    assert topic_size(settings, "exposure-ready.dlq") == 0
    assert _committed(settings, f"{settings.consumer_group_prefix}-retry", where[0][0]) == where[0][1] + 1
