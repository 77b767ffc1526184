"""Delivery and dead letters, said once for the run loop and the ingest producer.

:class:`Delivery` produces a batch, flushes, checks every delivery report and re-sends the failed ones with
back-off until all are confirmed (or the caller stops). :func:`dead_letter` builds the dead-letter copy of
a failed input, with the same headers wherever it failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from seechange.streaming.framing import one_line

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
#: headers of every dead letter; a file (ingest) adds ``origin_path`` and has no partition or offset ("")
DLQ_HEADERS = (
    "error_class",
    "error_message",
    "origin_topic",
    "origin_partition",
    "origin_offset",
    "service",
    "failed_at",
)
ERROR_MESSAGE_LIMIT = 1000  #: characters of ``error_message``

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Item:
    """One message to produce: full topic name, key, value bytes and optional headers."""

    topic: str
    key: str | bytes | None
    value: bytes
    headers: Headers | None = None


def utc_now_iso() -> str:
    """Now as ISO 8601 UTC with milliseconds and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter(
    dlq_topic: str,
    exc: BaseException,
    *,
    service: str,
    key: str | bytes | None,
    value: bytes,
    origin_topic: str,
    origin_partition: int | None = None,
    origin_offset: int | None = None,
    origin_path: str | None = None,
) -> Item:
    """The dead-letter copy of a failed input: its key and bytes unchanged, error and origin in headers.

    Parameters
    ----------
    dlq_topic : str
        Full name of the dead-letter topic.
    exc : BaseException
        Why it failed: ``error_class`` is its class name, ``error_message`` its message on one line.
    service : str
        Name of the service that gave up on it.
    key, value
        Key and value of the dead letter (the original message's, or the path of a file).
    origin_topic : str
        Topic the input came from (``"ingest"`` for a file).
    origin_partition, origin_offset : int, optional
        Where in ``origin_topic`` (empty headers for a file).
    origin_path : str, optional
        The file that failed; adds an ``origin_path`` header.
    """
    values = (
        type(exc).__name__,
        one_line(exc, ERROR_MESSAGE_LIMIT),
        origin_topic,
        "" if origin_partition is None else str(origin_partition),
        "" if origin_offset is None else str(origin_offset),
        service,
        utc_now_iso(),
    )
    headers: Headers = [(k, v.encode()) for k, v in zip(DLQ_HEADERS, values, strict=True)]
    if origin_path is not None:
        headers.append(("origin_path", origin_path.encode()))
    return Item(dlq_topic, key, value, headers)


class Delivery:
    """Produce-flush-confirm with re-sends, on one producer.

    Parameters
    ----------
    producer : confluent_kafka.Producer
        The producer (owned by the caller).
    name : str
        Service name for log lines.
    stop : threading.Event
        When set, :meth:`deliver` gives up (returns False) instead of waiting further.
    wait : callable, optional
        ``wait(seconds) -> bool``: back off between re-sends; False means "give up". Default: wait on
        ``stop``. The run loop passes one that keeps its consumer's group membership alive.
    on_retry : callable, optional
        Called once per re-send round (for counters).
    """

    def __init__(
        self,
        producer: Producer,
        name: str,
        *,
        stop: threading.Event,
        wait: Callable[[float], bool] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.producer, self.name, self.stop = producer, name, stop
        self.wait = wait if wait is not None else (lambda seconds: not stop.wait(seconds))
        self.on_retry = on_retry

    def deliver(self, items: list[Item], where: str) -> bool:
        """Produce, flush and confirm every item; re-send failures with back-off. False if stopped first."""
        todo, delay = list(items), BACKOFF_INITIAL_S
        while todo:
            failed: list[Item] = []
            for item in todo:
                self._produce(item, failed)
            while self.producer.flush(1.0) > 0:
                if self.stop.is_set():
                    log.warning("%s: %s: stopping with deliveries outstanding", self.name, where)
                    return False
            if not failed:
                return True
            if self.on_retry is not None:
                self.on_retry()
            log.warning(
                "%s: %s: %d of %d deliveries failed, re-sending in %.1f s",
                self.name,
                where,
                len(failed),
                len(todo),
                delay,
            )
            if not self.wait(delay):
                return False
            todo, delay = failed, min(delay * 2, BACKOFF_MAX_S)
        return True

    def _produce(self, item: Item, failed: list[Item]) -> None:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.warning("%s: delivery to %s failed: %s", self.name, item.topic, err)
                failed.append(item)

        while True:
            try:
                self.producer.produce(
                    item.topic, value=item.value, key=item.key, headers=item.headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self.producer.poll(0.5)
            except KafkaException as exc:
                log.warning("%s: produce to %s failed: %s", self.name, item.topic, exc)
                failed.append(item)
                return
