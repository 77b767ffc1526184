"""Replay re-publishes a topic's events once (up to where it started), byte-exact, keys kept."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from seechange.config import Settings
from seechange.streaming.framing import encode
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.replay import replay
from seechange.timestamps import now_ms


def _read_all(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"read-{time.time()}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    out = []
    for p in meta.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high <= low:
            continue
        consumer.assign([TopicPartition(topic, p, low)])
        while True:
            msg = consumer.poll(5)
            assert msg is not None, "timed out reading back"
            if msg.error():
                continue
            out.append((msg.key(), msg.value()))
            if msg.offset() >= high - 1:
                break
    consumer.close()
    return out


def test_replay_republishes_each_event_once(test_settings: Settings) -> None:
    registry = SchemaRegistry.load()
    topic = test_settings.topic("sighting-found")
    producer = Producer({"bootstrap.servers": test_settings.kafka_bootstrap})
    sent = []
    for i in range(5):
        record = {
            "sighting_id": i,
            "object_id": 100 + i,
            "subtraction_id": 7,
            "mjd": 60000.0 + i,
            "is_good": True,
            "provenance_id": "p",
            "produced_at": now_ms(),
            "ingested_at": now_ms(),
        }
        value = encode(registry, "sighting_found", record)
        producer.produce(topic, key=str(100 + i), value=value)
        sent.append((str(100 + i).encode(), value))
    assert producer.flush(10) == 0

    n = replay(test_settings, "sighting-found", start="beginning")

    assert n == 5
    after = _read_all(test_settings, topic)
    assert len(after) == 10
    assert sorted(after) == sorted(sent + sent)
    # a replay from a time after everything was sent finds nothing to replay
    assert replay(test_settings, "sighting-found", start=time.time() + 60) == 0
