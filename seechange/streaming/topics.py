"""Topic names and idempotent topic creation with the confluent-kafka AdminClient."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from seechange.config import Settings
from seechange.streaming.stages import INPUT_TOPICS, TOPICS

logger = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"


def dlq_name(topic: str) -> str:
    """The dead-letter topic of ``topic`` (already prefixed): ``<topic>.dlq``."""
    return f"{topic}{DLQ_SUFFIX}"


def topic_names(settings: Settings) -> list[str]:
    """All topics of the pipeline, with ``settings.topic_prefix``.

    Returns
    -------
    list of str
        The five stage topics of :data:`seechange.streaming.stages.TOPICS`, then ``<topic>.dlq`` for each
        topic of :data:`seechange.streaming.stages.INPUT_TOPICS` (nine names with the default layout).
    """
    return [settings.topic(name) for name in TOPICS] + [
        dlq_name(settings.topic(name)) for name in INPUT_TOPICS
    ]


def _admin(bootstrap: str, client: Mapping[str, Any] | None) -> AdminClient:
    return AdminClient({**(client or {}), "bootstrap.servers": bootstrap})


def _visible(admin: AdminClient, names: list[str], timeout: float) -> set[str]:
    """Names among ``names`` whose metadata shows every partition with a leader."""
    metadata = admin.list_topics(timeout=timeout)
    ready = set()
    for name in names:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            continue
        if all(p.leader >= 0 for p in topic.partitions.values()):
            ready.add(name)
    return ready


def ensure_topics(
    bootstrap: str,
    names: list[str],
    partitions: int,
    *,
    timeout: float = 30.0,
    client: Mapping[str, Any] | None = None,
) -> None:
    """Create the missing topics among ``names`` and wait until all of them are usable.

    Existing topics are left alone (their partition count is not changed). The replication factor is the
    broker's default (1 on the local broker).

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap servers, ``host:port[,host:port...]``.
    names : list of str
        Full topic names (prefix included).
    partitions : int
        Partition count for topics that have to be created.
    timeout : float
        Seconds to wait for creation and for the topics to appear in metadata with a leader per partition.
    client : mapping, optional
        Further client properties (SASL/TLS: :func:`seechange.streaming.kafka_config.client_config`).

    Raises
    ------
    KafkaException
        If the broker refuses to create a topic (other than "already exists") or cannot be reached.
    TimeoutError
        If the topics do not show up in metadata within ``timeout``.
    """
    if not names:
        return
    admin = _admin(bootstrap, client)
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [name for name in names if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions) for name in missing], operation_timeout=timeout
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                logger.info("created topic %s (%d partitions)", name, partitions)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    deadline = time.monotonic() + timeout
    while True:
        ready = _visible(admin, names, timeout=max(1.0, deadline - time.monotonic()))
        if ready.issuperset(names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout:.0f} s: {sorted(set(names) - ready)}")
        time.sleep(0.1)


def delete_topics(
    bootstrap: str, names: list[str], *, timeout: float = 30.0, client: Mapping[str, Any] | None = None
) -> None:
    """Delete the topics among ``names`` that exist (used to clean up test prefixes)."""
    admin = _admin(bootstrap, client)
    existing = set(admin.list_topics(timeout=timeout).topics)
    present = [name for name in names if name in existing]
    if not present:
        return
    for name, future in admin.delete_topics(present, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
        logger.info("deleted topic %s", name)
