"""Subscribe to the alert stream (or any SeeChange topic) with the service :class:`Settings`.

A thin layer over :mod:`seechange.client` (the light client brokers use): the broker address and topic
prefix come from the settings; the caller gets ``(record, raw_bytes)`` so it can both look at the packet
and save it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from seechange.config import Settings
from seechange.streaming.client import Connection, Start, start_offsets, stream_alerts
from seechange.streaming.kafka_config import bootstrap_servers
from seechange.streaming.registry import SchemaRegistry

__all__ = ["Start", "connection", "start_offsets", "subscribe"]

log = logging.getLogger(__name__)


def connection(settings: Settings, options: Mapping[str, Any] | None = None) -> Connection:
    """The client :class:`~seechange.client.Connection` of ``settings``' broker, with extra librdkafka
    ``options`` (security settings) passed through unchanged."""
    return Connection(bootstrap_servers(settings), dict(options or {}))


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
    options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Yield ``(record, raw_bytes)`` for each message of the (unprefixed) ``topic``.

    Parameters
    ----------
    settings : Settings
        Broker address and topic prefix.
    topic : str
        Unprefixed topic name; default ``"alerts"``.
    start : {"now", "beginning", "committed"} or float
        Where to start (see :func:`seechange.client.stream_alerts`). With a named ``group`` that already
        committed offsets, those win (the subscriber resumes).
    group : str, optional
        Consumer group; ``None``: a private throw-away group, nothing committed.
    filter : callable, optional
        ``filter(record) -> bool``; messages for which it is false are skipped.
    max_messages : int, optional
        Stop after yielding this many messages.
    timeout : float, optional
        Stop after this many seconds without a message (seconds); ``None``: run until the caller stops.
    registry : SchemaRegistry, optional
        Default: :meth:`SchemaRegistry.load`.
    expect : str, optional
        Schema name every message must have (``"alert"`` for the alert topic); others are skipped.
    options : mapping, optional
        Extra librdkafka properties (security), passed through.

    Yields
    ------
    tuple of (dict, bytes)
        The decoded record and the message value exactly as received.
    """
    for alert in stream_alerts(
        connection(settings, options),
        settings.topic(topic),
        start=start,
        group=group,
        keep=filter,
        max_alerts=max_messages,
        idle_timeout=timeout,
        registry=registry,
        expect=expect,
        private_group_prefix=f"{settings.consumer_group_prefix}-subscribe",
    ):
        yield alert.record, alert.raw
