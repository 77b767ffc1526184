"""Run-loop test helpers, and a worker process for the subprocess tests.

As a program (``python -m tests.integration._runloop_worker``) it runs :func:`run_service` on
``exposure-ready`` with a handler that records every delivery attempt in ``<table>_attempts`` and writes
``<table>_rows`` idempotently (``INSERT ... ON CONFLICT DO NOTHING``), then emits one ``image-reduced``
event. Being a test program, it reads its settings from the environment:

- ``SEECHANGE_*``: the usual settings (bootstrap, database URL, topic and consumer-group prefixes);
- ``WORKER_TABLE``: table-name stem; ``WORKER_KILL_AFTER_DB_COMMIT=1``: SIGKILL itself after the first DB
  commit (before produce and offset commit); ``WORKER_MAX_MESSAGES``, ``WORKER_IDLE_TIMEOUT``: stop rules;
  ``WORKER_BUG_FIELD``: raise ``TypeError`` (a bug, not bad input) for records with this ``field``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings, load_settings
from seechange.streaming.runloop import MessageContext, OutEvent, run_service
from seechange.streaming.topics import delete_topics, dlq_name, ensure_topics
from seechange.timestamps import now_ms

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS = 6000  # the broker's minimum: a SIGKILLed member leaves the group this fast


def exposure_record(exposure_id: int, field: str = "COSMOS", origin: str | None = "sim") -> dict[str, Any]:
    """A valid ``exposure_ready`` 1.1 record."""
    return {
        "exposure_id": exposure_id,
        "instrument": "DECam",
        "section_id": "N6",
        "field": field,
        "band": "r",
        "mjd": 60400.0 + exposure_id / 100,
        "raw_path": f"raw/{field}/c4d_{exposure_id:04d}_N6.fits",
        "provenance_id": "0123456789abcdef",
        "produced_at": now_ms(),
        "ingested_at": now_ms() - 500,
        "origin": origin,
    }


def image_event(record: dict[str, Any], image_id: int) -> OutEvent:
    """The ``image-reduced`` event the test handlers emit for an exposure record."""
    exp_id = record["exposure_id"]
    return OutEvent(
        topic="image-reduced",
        key=str(image_id),
        schema="image_reduced",
        record={
            "image_id": image_id,
            "exposure_id": exp_id,
            "field": record["field"],
            "band": record["band"],
            "section_id": record["section_id"],
            "mjd": record["mjd"],
            "image_path": f"reduced/abcd1234/c4d_{exp_id:04d}_N6",
            "provenance_id": "fedcba9876543210",
            "produced_at": now_ms(),
            "ingested_at": record["ingested_at"],
        },
    )


@contextmanager
def isolated_topics(base: Settings, tag: str, extra: tuple[str, ...] = ()) -> Iterator[Settings]:
    """``base`` with its own topic and consumer-group prefixes; the run-loop topics (+ ``extra``) created and
    deleted afterwards."""
    suffix = uuid.uuid4().hex[:6]
    settings = base.model_copy(
        update={
            "topic_prefix": f"{base.topic_prefix}{tag}{suffix}-",
            "consumer_group_prefix": f"{tag}{suffix}",
        }
    )
    names = [settings.topic(t) for t in ("exposure-ready", "image-reduced", *extra)]
    names.append(dlq_name(settings.topic("exposure-ready")))
    ensure_topics(settings.kafka_bootstrap, names, 2)
    try:
        yield settings
    finally:
        delete_topics(settings.kafka_bootstrap, names)


def produce_values(settings: Settings, topic: str, items: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """Produce ``(key, value)`` pairs to the prefixed ``topic``; returns their ``(partition, offset)``."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    where: list[tuple[int, int]] = []
    for key, value in items:
        producer.produce(
            settings.topic(topic),
            key=key,
            value=value,
            on_delivery=lambda err, m: (
                where.append((int(m.partition() or 0), int(m.offset() or 0))) if err is None else None
            ),
        )
        producer.flush(10)  # one at a time, so the offsets come back in order
    assert len(where) == len(items), "test messages were not delivered"
    return where


def consume_all(
    settings: Settings, topic: str, *, expect: int, timeout: float = 20.0, settle: float = 0.5
) -> list[Message]:
    """Every message of the prefixed ``topic`` from the beginning: waits for ``expect``, then ``settle`` s more."""
    name = settings.topic(topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])  # no group join
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
            if len(got) >= expect:
                deadline = min(deadline, time.monotonic() + settle)
    finally:
        consumer.close()
    return got


def topic_size(settings: Settings, topic: str) -> int:
    """Number of messages in the prefixed ``topic`` (sum over partitions of high minus low watermark)."""
    name = settings.topic(topic)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"size-{uuid.uuid4().hex}"}
    )
    try:
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def create_tables(engine: Engine, table: str) -> None:
    """``<table>_rows`` (unique on exposure_id) and ``<table>_attempts`` (one row per delivery)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {table}_rows (exposure_id BIGINT UNIQUE NOT NULL, image_id BIGINT NOT NULL,"
                " field TEXT NOT NULL)"
            )
        )
        conn.execute(
            text(
                f"CREATE TABLE {table}_attempts (id SERIAL PRIMARY KEY, exposure_id BIGINT NOT NULL,"
                " pid INTEGER NOT NULL, topic_offset BIGINT NOT NULL)"
            )
        )


def drop_tables(engine: Engine, table: str) -> None:
    """Drop what :func:`create_tables` made."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}_rows, {table}_attempts"))


def main() -> int:
    """Run the worker service until a stop rule, a signal, or its own SIGKILL."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()
    table = os.environ["WORKER_TABLE"]
    kill = os.environ.get("WORKER_KILL_AFTER_DB_COMMIT") == "1"
    max_messages = int(os.environ["WORKER_MAX_MESSAGES"]) if "WORKER_MAX_MESSAGES" in os.environ else None
    idle = float(os.environ["WORKER_IDLE_TIMEOUT"]) if "WORKER_IDLE_TIMEOUT" in os.environ else None
    bug_field = os.environ.get("WORKER_BUG_FIELD")
    engine = create_engine(settings.database_url)

    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        exp_id = record["exposure_id"]
        if record["field"] == bug_field:
            raise TypeError(f"exposure {exp_id}: unsupported operand type(s) for +: 'int' and 'NoneType'")
        session.execute(
            text(f"INSERT INTO {table}_attempts (exposure_id, pid, topic_offset) VALUES (:e, :p, :o)"),
            {"e": exp_id, "p": os.getpid(), "o": ctx.offset},
        )
        session.execute(
            text(
                f"INSERT INTO {table}_rows (exposure_id, image_id, field) VALUES (:e, :i, :f)"
                " ON CONFLICT (exposure_id) DO NOTHING"
            ),
            {"e": exp_id, "i": exp_id + 1000, "f": record["field"]},
        )
        return [image_event(record, exp_id + 1000)]

    def after_db_commit() -> None:
        if kill:
            log.info("worker: SIGKILL after the DB commit")
            os.kill(os.getpid(), signal.SIGKILL)

    stats = run_service(
        settings,
        name="worker",
        input_topic="exposure-ready",
        input_schema="exposure_ready",
        handler=handler,
        session_factory=sessionmaker(engine),
        max_messages=max_messages,
        idle_timeout=idle,
        after_db_commit=after_db_commit,
        consumer_overrides={"session.timeout.ms": SESSION_TIMEOUT_MS},
    )
    log.info("worker: done %s", stats)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
