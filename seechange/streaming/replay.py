"""Replay: re-publish a topic's messages from a time, so that the stage reading it reprocesses them.

The end is fixed when the replay starts (each partition's high watermark then), so re-publishing onto the
same topic never replays its own copies. Keys, values and headers are kept; a ``replayed_at`` header is
added. Stages are idempotent: with unchanged parameters they write and emit nothing new; with new
parameters (a new provenance) the new products appear beside the old ones.

:func:`reprocess` is the one-off reprocessing: one stage run in this process with other parameters, under a
group of its own, over its input topic from a time to the end.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from seechange.config import Settings
from seechange.streaming.kafka_config import consumer_config, is_consumer_error, producer_config
from seechange.streaming.subscribe import Start, start_offsets

if TYPE_CHECKING:
    from seechange.streaming.runloop import RunStats
    from seechange.streaming.stages import Stage

log = logging.getLogger(__name__)


def replay(
    settings: Settings,
    topic: str,
    *,
    start: Start = "beginning",
    until: float | None = None,
    dest_topic: str | None = None,
    timeout: float = 30.0,
) -> int:
    """Re-publish the messages of ``topic`` (unprefixed) from ``start`` up to now (or ``until``, Unix s).

    Returns
    -------
    int
        Number of messages re-published.
    """
    source = settings.topic(topic)
    dest = settings.topic(dest_topic or topic)
    consumer = Consumer(
        {
            **consumer_config(settings, f"{settings.consumer_group_prefix}-replay-{uuid.uuid4().hex[:8]}"),
            "enable.auto.commit": False,
        }
    )
    producer = Producer(producer_config(settings))
    try:
        meta = consumer.list_topics(source, timeout=timeout).topics[source]
        parts = [TopicPartition(source, p) for p in sorted(meta.partitions)]
        marks = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout) for p in parts}
        ends = {k: high for k, (_, high) in marks.items()}
        firsts = []
        for tp in start_offsets(consumer, parts, start):  # logical offsets -> numbers, to know what is left
            low, high = marks[tp.partition]
            first = low if tp.offset == OFFSET_BEGINNING else high if tp.offset < 0 else tp.offset
            firsts.append(TopicPartition(source, tp.partition, first))
        todo = {tp.partition for tp in firsts if tp.offset < ends[tp.partition]}
        if not todo:
            return 0
        consumer.assign([tp for tp in firsts if tp.partition in todo])
        n, deadline = 0, time.monotonic() + timeout
        until_ms = int(until * 1000) if until is not None else None
        while todo:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"replay of {source}: partitions {sorted(todo)} did not reach their end"
                    )
                continue
            if is_consumer_error(msg, f"replay {source}"):
                continue
            deadline = time.monotonic() + timeout
            part, offset = msg.partition(), msg.offset()
            if part is None or offset is None:  # only error events lack them, and those were skipped
                continue
            if offset >= ends[part]:
                todo.discard(part)
                continue
            _ts_type, ts = msg.timestamp()
            if until_ms is None or ts <= until_ms:
                headers: list[tuple[str, str | bytes | None]] = [(h[0], h[1]) for h in msg.headers() or []]
                headers.append(("replayed_at", str(time.time()).encode()))
                producer.produce(dest, key=msg.key(), value=msg.value(), headers=headers)
                n += 1
                producer.poll(0)
            if offset >= ends[part] - 1:
                todo.discard(part)
        if producer.flush(timeout) > 0:
            raise RuntimeError(f"replay: messages to {dest} not delivered")
        log.info("replayed %d message(s) from %s onto %s", n, source, dest)
        return n
    finally:
        consumer.close()


@dataclass(frozen=True)
class Reprocessed:
    """What :func:`reprocess` did: the one-off group, the messages in range and the run's counts."""

    group: str
    messages: int
    stats: RunStats | None


def reprocess(
    settings: Settings,
    stage: Stage,
    *,
    start: Start = "beginning",
    tag: str,
    idle_timeout: float = 60.0,
) -> Reprocessed:
    """Run ``stage`` once, in this process, over its input topic from ``start`` to the end as it is now.

    A one-off consumer group (``<consumer_group_prefix>-reprocess-<tag>-<stage>``) is positioned at
    ``start`` first, so the running services and their groups are not touched; the stage's output events go
    to its usual output topic, where the running downstream services pick them up. With ``settings``
    naming a new parameters file (``params_file``), the new products get a new provenance and live beside
    the old ones.

    Parameters
    ----------
    settings : Settings
        Broker, database, topic prefix and the parameters file to run with.
    stage : Stage
        The stage to run (see :mod:`seechange.streaming.stages`).
    start : {"beginning", "now"} or float
        First message: the beginning of the topic or a Unix time (seconds).
    tag : str
        Names the one-off group (e.g. the parameters file's hash).
    idle_timeout : float
        Stop after this many seconds without a message (seconds), whatever is left.

    Returns
    -------
    Reprocessed
    """
    from seechange.streaming.stages import serve_stage

    one_off = settings.model_copy(
        update={"consumer_group_prefix": f"{settings.consumer_group_prefix}-reprocess-{tag}"}
    )
    group = f"{one_off.consumer_group_prefix}-{stage.name}"
    source = settings.topic(stage.input_topic)
    consumer = Consumer(consumer_config(settings, group))
    try:
        meta = consumer.list_topics(source, timeout=10.0).topics[source]
        parts = [TopicPartition(source, p) for p in sorted(meta.partitions)]
        marks = {p.partition: consumer.get_watermark_offsets(p, timeout=10.0) for p in parts}
        firsts = []
        for tp in start_offsets(consumer, parts, start):
            low = marks[tp.partition][0]
            firsts.append(TopicPartition(source, tp.partition, low if tp.offset < 0 else max(tp.offset, low)))
        todo = sum(marks[tp.partition][1] - tp.offset for tp in firsts)
        consumer.assign(firsts)
        consumer.commit(offsets=firsts, asynchronous=False)  # the one-off group starts here
    finally:
        consumer.close()
    log.info("reprocessing %d message(s) of %s with stage %s as group %s", todo, source, stage.name, group)
    if todo == 0:
        return Reprocessed(group, 0, None)
    stats = serve_stage(one_off, stage, max_messages=todo, idle_timeout=idle_timeout)
    return Reprocessed(group, todo, stats)
