"""The pipeline seen from the broker: each stage's consumer-group lag, dead-letter counts, the last errors.

``seechange status`` prints :func:`pipeline_status`. The last errors are the newest dead letters (their
``error_class``, ``error_message``, ``service`` and ``failed_at`` headers); a service stopped by unexpected
errors says why in its own log (and its input lag grows here).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from seechange.config import Settings
from seechange.streaming.groups import group_lag, message_count, stage_group
from seechange.streaming.kafka_config import client_config
from seechange.streaming.stages import STAGES
from seechange.streaming.topics import dlq_name

__all__ = ["DeadLetter", "StageStatus", "last_dead_letters", "pipeline_status"]


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter's origin and error, from its headers."""

    topic: str
    partition: int
    offset: int
    headers: dict[str, str]


@dataclass
class StageStatus:
    """One stage service as the broker sees it."""

    stage: str
    group: str
    input_topic: str
    lag: dict[int, int] = field(default_factory=dict)  #: partition -> uncommitted messages
    dlq_topic: str = ""
    dead_letters: int = 0
    last_errors: list[DeadLetter] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())


def last_dead_letters(settings: Settings, topic: str, n: int, *, timeout: float = 10.0) -> list[DeadLetter]:
    """The newest ``n`` messages of each partition of ``topic`` (full name), newest last, headers decoded."""
    c = Consumer(
        {
            **client_config(settings),
            "group.id": f"status-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        ends, starts = {}, []
        for p in sorted(meta.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                starts.append(TopicPartition(topic, p, max(low, high - n)))
        if not starts:
            return []
        c.assign(starts)
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            raw = msg.headers() or []
            pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
            headers = {
                str(k): v.decode(errors="replace") if isinstance(v, bytes) else str(v or "") for k, v in pairs
            }
            out.append(DeadLetter(topic, p, offset, headers))
            if offset >= ends.get(p, 0) - 1:
                ends.pop(p, None)
        return sorted(out, key=lambda d: d.headers.get("failed_at", ""))[-n:]
    finally:
        c.close()


def pipeline_status(settings: Settings, *, last: int = 3) -> list[StageStatus]:
    """Every stage's lag per partition, dead-letter count and its ``last`` newest dead letters."""
    out = []
    for stage in STAGES:
        topic, dlq = settings.topic(stage.input_topic), dlq_name(settings.topic(stage.input_topic))
        group = stage_group(settings, stage.name)
        status = StageStatus(stage.name, group, topic, group_lag(settings, group, topic), dlq)
        status.dead_letters = message_count(settings, dlq)
        if status.dead_letters and last > 0:
            status.last_errors = last_dead_letters(settings, dlq, last)
        out.append(status)
    return out
