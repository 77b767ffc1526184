"""What the broker knows about the pipeline's consumer groups and topics: lag per partition, message counts.

Read from outside the services (a consumer that joins no group and commits nothing), for ``seechange
status``, the fault harness and the services' own lag gauges.
"""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, TopicPartition

from seechange.config import Settings
from seechange.streaming.kafka_config import client_config

__all__ = ["group_lag", "message_count", "stage_group"]

TIMEOUT_S = 10.0


def stage_group(settings: Settings, stage: str) -> str:
    """Consumer group id of a stage service (as :mod:`seechange.streaming.runloop` names it)."""
    return f"{settings.consumer_group_prefix}-{stage}"


def _inspector(settings: Settings, group: str | None = None) -> Consumer:
    return Consumer(
        {
            **client_config(settings),
            "group.id": group or f"inspect-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=TIMEOUT_S)
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        return []
    return sorted(info.partitions)


def group_lag(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Partition -> messages of ``topic`` (full name) not yet committed by ``group``.

    A partition the group never committed counts from its low watermark. Empty when the topic is absent.
    """
    c = _inspector(settings, group)
    try:
        parts = _partitions(c, topic)
        if not parts:
            return {}
        marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S) for p in parts}
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=TIMEOUT_S)
        done = {tp.partition: tp.offset for tp in committed}
        return {p: high - max(done.get(p, -1), low) for p, (low, high) in marks.items()}
    finally:
        c.close()


def message_count(settings: Settings, topic: str) -> int:
    """Messages on ``topic`` (full name): high minus low watermark, summed over partitions; 0 if absent."""
    c = _inspector(settings)
    try:
        total = 0
        for p in _partitions(c, topic):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
            total += high - low
        return total
    finally:
        c.close()
