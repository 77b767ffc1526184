"""Subscribe to the alert stream (or any SeeChange topic): from now, from the beginning, or from a time.

Each message is decoded with the schema registry; the caller gets ``(record, raw_bytes)`` so it can both
look at the packet and save it unchanged.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from seechange.config import Settings
from seechange.streaming.framing import DecodeError, decode
from seechange.streaming.kafka_config import consumer_config, is_consumer_error
from seechange.streaming.registry import SchemaRegistry

log = logging.getLogger(__name__)

Start = Literal["now", "beginning"] | float


def start_offsets(
    consumer: Consumer, partitions: list[TopicPartition], start: Start, *, timeout: float = 10.0
) -> list[TopicPartition]:
    """Where to start reading each partition.

    Parameters
    ----------
    consumer : confluent_kafka.Consumer
        Used for the time look-up.
    partitions : list of TopicPartition
        The partitions (their offsets are ignored).
    start : {"now", "beginning"} or float
        End of the log, beginning of the log, or a Unix time (seconds): the first message with a
        timestamp at or after it (the end of the log when there is none).
    timeout : float
        Seconds allowed for the time look-up.

    Returns
    -------
    list of TopicPartition
        The same partitions with their starting offsets.
    """
    if start == "now":
        return [TopicPartition(p.topic, p.partition, OFFSET_END) for p in partitions]
    if start == "beginning":
        return [TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in partitions]
    if not isinstance(start, int | float):
        raise TypeError(f"start must be 'now', 'beginning' or Unix seconds, not {start!r}")
    millis = int(float(start) * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(p.topic, p.partition, millis) for p in partitions], timeout=timeout
    )
    # -1 means "no message at or after that time": start at the end.
    return [TopicPartition(p.topic, p.partition, p.offset if p.offset >= 0 else OFFSET_END) for p in found]


def subscribe(
    settings: Settings,
    topic: str = "alerts",
    *,
    start: Start = "now",
    group: str | None = None,
    filter: Callable[[dict[str, Any]], bool] | None = None,
    max_messages: int | None = None,
    timeout: float | None = None,
    registry: SchemaRegistry | None = None,
    expect: str | None = None,
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Yield ``(record, raw_bytes)`` for each message of the (unprefixed) ``topic``.

    Parameters
    ----------
    settings : Settings
        Broker address and topic prefix.
    topic : str
        Unprefixed topic name; default ``"alerts"``.
    start : {"now", "beginning"} or float
        Where to start: the end of the log, its beginning, or a Unix time in seconds. With a named
        ``group`` that already committed offsets, those win (the subscriber resumes).
    group : str, optional
        Consumer group. ``None``: a private throw-away group, nothing committed. A name: offsets of the
        messages handed out are committed (the one being handled is committed when the next is asked for),
        so several subscribers share the work and a restart resumes.
    filter : callable, optional
        ``filter(record) -> bool``; messages for which it is false are skipped.
    max_messages : int, optional
        Stop after yielding this many messages.
    timeout : float, optional
        Stop after this many seconds without a message or partition assignment (seconds); ``None``: run
        until the caller stops.
    registry : SchemaRegistry, optional
        Default: :meth:`SchemaRegistry.load`.
    expect : str, optional
        Schema name every message must have (``"alert"`` for the alert topic); others are skipped.

    Yields
    ------
    tuple of (dict, bytes)
        The decoded record and the message value exactly as received.
    """
    registry = registry if registry is not None else SchemaRegistry.load()
    full = settings.topic(topic)
    group_id = (
        group if group is not None else f"{settings.consumer_group_prefix}-subscribe-{uuid.uuid4().hex[:12]}"
    )
    config = consumer_config(settings, group_id)
    config["partition.assignment.strategy"] = "range"  # eager: the whole assignment is positioned at once
    if group is not None:
        config.update({"enable.auto.commit": True, "auto.commit.interval.ms": 1000})
    consumer = Consumer(config)
    last = [time.monotonic()]  # time of the last message or assignment (joining a group is not idleness)

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        chosen = {(p.topic, p.partition): p for p in start_offsets(c, partitions, start)}
        if group is not None:
            for p in c.committed(partitions, timeout=10.0):
                if p.offset >= 0:
                    chosen[(p.topic, p.partition)] = p
        c.assign(list(chosen.values()))
        last[0] = time.monotonic()
        log.info(
            "subscribed to %s: %s", full, ", ".join(f"[{p.partition}]@{p.offset}" for p in chosen.values())
        )

    consumer.subscribe([full], on_assign=on_assign)
    yielded = 0
    try:
        while max_messages is None or yielded < max_messages:
            msg = consumer.poll(0.5)
            if msg is None:
                if timeout is not None and time.monotonic() - last[0] >= timeout:
                    break
                continue
            if is_consumer_error(msg, f"subscribe {full}"):
                continue
            last[0] = time.monotonic()
            value = msg.value() or b""
            try:
                _, record = decode(registry, value, expect=expect)
            except DecodeError as exc:
                log.warning("%s[%s]@%s: skipped: %s", msg.topic(), msg.partition(), msg.offset(), exc)
                record = None
            if record is not None and (filter is None or filter(record)):
                yielded += 1
                yield record, value
            if group is not None:
                consumer.store_offsets(message=msg)
    finally:
        consumer.close()  # with a named group: commits the stored offsets and leaves the group
