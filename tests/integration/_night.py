"""Helpers shared by the service-level integration tests (end to end, bad input).

- :func:`isolated_run`: settings of their own (topic prefix, consumer groups, data folder, fresh migrated
  database) derived from the session's ``test_settings``, cleaned up afterwards;
- Kafka inspection that does not go through the pipeline's code: message counts, reading a whole topic,
  committed offsets of a service's consumer group (:func:`wait_drained`);
- :class:`SchemasOnlyDecoder`: reads a Confluent-framed message with nothing but ``schemas/`` and fastavro,
  as an outside subscriber would.
"""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, Message, TopicPartition

from seechange.config import PROJECT_ROOT, Settings

SCHEMAS_DIR = PROJECT_ROOT / "schemas"

#: (service name = consumer group suffix, input topic) in pipeline order
STAGE_INPUTS = (
    ("reduce", "exposure-ready"),
    ("subtract", "image-reduced"),
    ("detect", "subtraction-done"),
    ("alert", "sighting-found"),
)


@contextmanager
def isolated_run(base: Settings, tag: str) -> Iterator[Settings]:
    """``base`` with its own topic prefix (topics created), consumer groups, data folder and fresh database.

    Tests in one session share ``test_settings`` and the ``database_url`` fixture; a service-level test that
    counts rows and messages needs both to itself.
    """
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.models.migrate import upgrade
    from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

    run_id = uuid.uuid4().hex[:6]
    db_name = f"seechange_{tag}_{run_id}"
    db_url = create_database(base.database_url, db_name)
    data_dir = Path(base.data_dir) / f"{tag}-{run_id}"
    data_dir.mkdir(parents=True)
    settings = base.model_copy(
        update={
            "database_url": db_url,
            "data_dir": data_dir,
            "topic_prefix": f"{base.topic_prefix}{tag}{run_id}-",
            "consumer_group_prefix": f"{base.topic_prefix}{tag}{run_id}",
        }
    )
    names = topic_names(settings)
    try:
        upgrade(db_url)
        ensure_topics(settings.kafka_bootstrap, names, settings.partitions)
        yield settings
    finally:
        delete_topics(settings.kafka_bootstrap, names)
        drop_database(base.database_url, db_name)


def _consumer(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"inspect-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10)
    return sorted(meta.topics[topic].partitions)


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> high watermark (offset of the next message) of ``topic``."""
    c = _consumer(bootstrap)
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in _partitions(c, topic)
        }
    finally:
        c.close()


def message_count(bootstrap: str, topic: str) -> int:
    """Messages on ``topic`` (high minus low watermark, summed over partitions)."""
    c = _consumer(bootstrap)
    try:
        total = 0
        for p in _partitions(c, topic):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Message]:
    """Every message now on ``topic``, from the beginning up to the current high watermarks."""
    c = _consumer(bootstrap)
    try:
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in _partitions(c, topic)
        }
        todo = {p for p, (low, high) in ends.items() if high > low}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: still waiting for partitions {sorted(todo)}")
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(msg)
            partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if offset >= ends[partition][1] - 1:
                todo.discard(partition)
        return out
    finally:
        c.close()


def wait_for_messages(bootstrap: str, topic: str, n: int, *, timeout: float = 60.0) -> list[Message]:
    """Wait until ``topic`` holds at least ``n`` messages, then read them all."""
    deadline = time.monotonic() + timeout
    while message_count(bootstrap, topic) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{topic}: fewer than {n} messages after {timeout:.0f} s ({message_count(bootstrap, topic)})"
            )
        time.sleep(0.3)
    return read_topic(bootstrap, topic)


def lag(settings: Settings, stage: str, input_topic: str) -> int:
    """Messages of ``input_topic`` that the ``stage`` service's consumer group has not committed yet."""
    topic = settings.topic(input_topic)
    c = _consumer(settings.kafka_bootstrap, f"{settings.consumer_group_prefix}-{stage}")
    try:
        parts = _partitions(c, topic)
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)  # read after highs
        done = {tp.partition: max(tp.offset, 0) for tp in committed}
        low = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in parts}
        return sum(highs[p] - max(done[p], low[p]) for p in parts)
    finally:
        c.close()


def wait_drained(
    settings: Settings,
    *,
    stages: Sequence[tuple[str, str]] = STAGE_INPUTS,
    timeout: float = 120.0,
    services: Any = None,
) -> None:
    """Wait until every service has committed every message of its input topic.

    Checked in pipeline order in one pass: a service produces its outputs before it commits its input, so
    once a stage's input is fully committed, the next topic's high watermark (read afterwards) covers every
    event that stage will produce.
    """
    deadline = time.monotonic() + timeout
    while True:
        lags = {}
        for stage, topic in stages:
            lags[stage] = lag(settings, stage, topic)
            if lags[stage]:
                break
        if not any(lags.values()):
            return
        if services is not None and not all(services.alive().values()):
            raise RuntimeError(f"service(s) exited early: {services.alive()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"services not drained after {timeout:.0f} s: uncommitted {lags}")
        time.sleep(0.5)


class SchemasOnlyDecoder:
    """Reads Confluent-framed Avro with only ``schemas/ids.json``, the ``.avsc`` files and fastavro."""

    def __init__(self, schemas_dir: Path = SCHEMAS_DIR) -> None:
        ids = json.loads((schemas_dir / "ids.json").read_text())
        self.by_id: dict[int, tuple[str, str]] = {
            int(i): (name, version)
            for name, versions in ids.items()
            if not name.startswith("_")
            for version, i in versions.items()
        }
        self.schemas_dir = schemas_dir
        self._parsed: dict[int, Any] = {}

    def schema(self, schema_id: int) -> Any:
        if schema_id not in self._parsed:
            name, version = self.by_id[schema_id]
            text = (self.schemas_dir / name / f"{version}.avsc").read_text()
            self._parsed[schema_id] = fastavro.parse_schema(json.loads(text), named_schemas={})
        return self._parsed[schema_id]

    def decode(self, value: bytes) -> tuple[str, str, dict[str, Any]]:
        """(schema name, version, record); raises on a bad frame, an unknown id or trailing bytes."""
        magic, schema_id = struct.unpack(">bI", value[:5])
        assert magic == 0, f"magic byte {magic}"
        name, version = self.by_id[schema_id]
        buf = io.BytesIO(value[5:])
        record = fastavro.schemaless_reader(buf, self.schema(schema_id))
        assert buf.tell() == len(value) - 5, f"{len(value) - 5 - buf.tell()} trailing bytes"
        assert isinstance(record, dict)
        return name, version, record


def headers_of(msg: Message) -> dict[str, str]:
    """A message's headers as a str -> str dict (last value wins)."""
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    return {str(k): v.decode() if isinstance(v, bytes) else str(v or "") for k, v in pairs}
