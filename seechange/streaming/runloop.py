"""The run loop every service shares: poll, decode, one DB transaction, produce, flush, commit the offset.

Order per message (at least once in, idempotent out):

1. decode the value with the schema registry (undecodable -> dead-letter topic);
2. open one transaction, call the handler, encode its output events, commit;
3. produce every output event, flush, and check every delivery report (failed ones are re-sent with
   back-off until they succeed);
4. only then commit the consumer offset (synchronously).

A handler raising :class:`BadMessage` (or any non-infrastructure exception) sends the original bytes to
``<input_topic>.dlq`` with error and origin headers; the offset is committed and the loop goes on. An
infrastructure error (:class:`InfrastructureError`, a lost DB connection, a Kafka error) rolls back and
retries the same message with back-off (0.5 s .. 30 s) for as long as it takes, committing nothing; the
partitions are paused meanwhile to keep the group membership. SIGTERM/SIGINT stop after the current message.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.streaming.framing import DecodeError, decode, encode, one_line
from seechange.streaming.kafka_config import consumer_config, producer_config
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.topics import dlq_name

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
STATS_INTERVAL_S = 30.0
DLQ_HEADERS = ("error_class", "error_message", "origin_topic", "origin_partition", "origin_offset",
               "service", "failed_at")


@dataclass(frozen=True)
class OutEvent:
    """An event a handler asks the loop to produce after its transaction commits."""

    topic: str  #: unprefixed topic name, e.g. ``"image-reduced"``
    key: str
    schema: str  #: schema name, e.g. ``"image_reduced"`` (written with its latest version)
    record: dict[str, Any]


@dataclass(frozen=True)
class MessageContext:
    """Where the message being handled came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    settings: Settings


class BadMessage(Exception):
    """Raise from a handler for bad input: the message goes to the dead-letter topic."""


class InfrastructureError(Exception):
    """Raise from a handler for "retry me later" (a dependency is down); nothing is committed."""


class _Abandoned(Exception):
    """Internal: the loop was stopped during an in-transaction delivery."""


@dataclass
class RunStats:
    """Counts of one :func:`run_service` call."""

    processed: int = 0  #: messages handled successfully and committed
    dead_lettered: int = 0  #: messages sent to the dead-letter topic and committed
    retried: int = 0  #: infrastructure-error retries (attempts, not messages)
    produced: int = 0  #: output events delivered (dead-letter copies not counted)


Handler = Callable[[Session, dict[str, Any], MessageContext], Sequence[OutEvent]]
_Headers = list[tuple[str, str | bytes | None]]
_Item = tuple[str, str | bytes | None, bytes, _Headers | None]  # topic, key, value, headers


def dlq_topic(settings: Settings, input_topic: str) -> str:
    """Full (prefixed) name of the dead-letter topic of an unprefixed input topic."""
    return dlq_name(settings.topic(input_topic))


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for errors worth retrying: a dependency failed, not the message."""
    if isinstance(exc, InfrastructureError | KafkaException | ConnectionError | sa_exc.TimeoutError
                  | sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


class _Loop:
    """State of one run; :func:`run_service` is its public face."""

    def __init__(self, settings: Settings, name: str, input_topic: str, input_schema: str, handler: Handler,
                 session_factory: sessionmaker[Session], registry: SchemaRegistry, stop: threading.Event,
                 after_db_commit: Callable[[], None] | None, poll_timeout: float,
                 consumer_overrides: Mapping[str, Any] | None) -> None:
        self.settings, self.name, self.handler, self.input_schema = settings, name, handler, input_schema
        self.session_factory, self.registry, self.stop = session_factory, registry, stop
        self.after_db_commit, self.poll_timeout = after_db_commit, poll_timeout
        self.topic, self.dlq = settings.topic(input_topic), dlq_topic(settings, input_topic)
        self.group = f"{settings.consumer_group_prefix}-{name}"
        self.stats = RunStats()
        self.deliver_before_commit = False
        self.assigned: set[tuple[str, int]] = set()
        self.pending: deque[Message] = deque()
        self.paused = False
        self.last_message = time.monotonic()
        self.consumer = Consumer({**consumer_config(settings, self.group), "error_cb": self._on_kafka_error,
                                  **(consumer_overrides or {})})
        self.producer = Producer({**producer_config(settings), "error_cb": self._on_kafka_error})

    def _on_kafka_error(self, err: KafkaError) -> None:
        log.warning("%s: kafka client error: %s", self.name, err)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.last_message = time.monotonic()  # joining the group does not count as idle time
        log.info("%s: assigned %s", self.name, sorted(f"{t}[{p}]" for t, p in self.assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned -= gone
        self.pending = deque(m for m in self.pending if (m.topic(), m.partition()) not in gone)
        log.info("%s: revoked %s", self.name, sorted(f"{t}[{p}]" for t, p in gone))

    def run(self, max_messages: int | None, idle_timeout: float | None, stats_interval: float) -> RunStats:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        log.info("%s: consuming %s as group %s", self.name, self.topic, self.group)
        self.last_message = last_stats = time.monotonic()
        try:
            while not self.stop.is_set():
                if max_messages is not None and self.stats.processed + self.stats.dead_lettered >= max_messages:
                    log.info("%s: reached max_messages=%d", self.name, max_messages)
                    break
                msg = self.pending.popleft() if self.pending else self.consumer.poll(self.poll_timeout)
                now = time.monotonic()
                if now - last_stats >= stats_interval:
                    self._log_stats()
                    last_stats = now
                if msg is None:
                    if idle_timeout is not None and now - self.last_message >= idle_timeout:
                        log.info("%s: no message for %.1f s, stopping", self.name, idle_timeout)
                        break
                    continue
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("%s: consumer error: %s", self.name, err)
                    continue
                self.last_message = now
                self._handle(msg)
        finally:
            self._close()
        return self.stats

    def _handle(self, msg: Message) -> None:
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        where = f"{topic}[{partition}]@{offset}"
        key = msg.key()
        ctx = MessageContext(topic, partition, offset, key.encode() if isinstance(key, str) else key,
                             self.settings)
        try:
            _, record = decode(self.registry, msg.value() or b"", expect=self.input_schema)
        except DecodeError as exc:
            self._dead_letter(msg, where, exc)
            return
        delay = BACKOFF_INITIAL_S
        try:
            while True:
                try:
                    items = self._transact(record, ctx, where)
                    break
                except _Abandoned:
                    return
                except Exception as exc:  # noqa: BLE001 - every failure is either retried or dead-lettered
                    if not is_infrastructure_error(exc):
                        self._dead_letter(msg, where, exc)
                        return
                    self.stats.retried += 1
                    log.warning("%s: %s: infrastructure error, retry in %.1f s: %s: %s", self.name, where,
                                delay, type(exc).__name__, one_line(exc))
                    if not self._wait(delay, msg):
                        return
                    delay = min(delay * 2, BACKOFF_MAX_S)
            if self.after_db_commit is not None:
                self.after_db_commit()
            if not self.deliver_before_commit and not self._deliver(items, where):
                return
            self.stats.produced += len(items)
            if self._commit(msg, where):
                self.stats.processed += 1
        finally:
            if self.paused:
                self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])
                self.paused = False

    def _transact(self, record: dict[str, Any], ctx: MessageContext, where: str) -> list[_Item]:
        """One transaction: the handler, then encoding its events (a bad event rolls the writes back).

        With ``deliver_before_commit`` the events are delivered before the transaction commits.
        """
        with self.session_factory() as session, session.begin():
            events = self.handler(session, record, ctx)
            items: list[_Item] = [(self.settings.topic(e.topic), e.key,
                                   encode(self.registry, e.schema, e.record), None) for e in events]
            if self.deliver_before_commit and items and not self._deliver(items, where):
                raise _Abandoned(where)  # stopped while delivering: roll back, commit nothing
            return items

    def _dead_letter(self, msg: Message, where: str, exc: BaseException) -> None:
        error_class = type(exc).__name__
        message = one_line(exc, 1000)
        log.error("%s: %s: %s: %s -> %s", self.name, where, error_class, message, self.dlq)
        values = (error_class, message, str(msg.topic()), str(msg.partition()), str(msg.offset()), self.name,
                  datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        headers: _Headers = [(k, v.encode()) for k, v in zip(DLQ_HEADERS, values, strict=True)]
        item: _Item = (self.dlq, msg.key(), msg.value() or b"", headers)
        if self._deliver([item], where) and self._commit(msg, where):
            self.stats.dead_lettered += 1

    def _deliver(self, items: list[_Item], where: str) -> bool:
        """Produce, flush and confirm every item; re-send failures with back-off. False if stopped first."""
        todo, delay = list(items), BACKOFF_INITIAL_S
        while todo:
            failed: list[_Item] = []
            for item in todo:
                self._produce(item, failed)
            while self.producer.flush(1.0) > 0:
                if self.stop.is_set():
                    log.warning("%s: %s: stopping with deliveries outstanding; offset not committed",
                                self.name, where)
                    return False
            if not failed:
                return True
            self.stats.retried += 1
            log.warning("%s: %s: %d of %d deliveries failed, re-sending in %.1f s", self.name, where,
                        len(failed), len(todo), delay)
            if not self._wait(delay, None):
                return False
            todo, delay = failed, min(delay * 2, BACKOFF_MAX_S)
        return True

    def _produce(self, item: _Item, failed: list[_Item]) -> None:
        topic, key, value, headers = item

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                log.warning("%s: delivery to %s failed: %s", self.name, topic, err)
                failed.append(item)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self.producer.poll(0.5)
            except KafkaException as exc:
                log.warning("%s: produce to %s failed: %s", self.name, topic, exc)
                failed.append(item)
                return

    def _commit(self, msg: Message, where: str) -> bool:
        try:
            self.consumer.commit(message=msg, asynchronous=False)
            return True
        except KafkaException as exc:
            # Rows and events are already written; the message will be redelivered and handled idempotently.
            log.warning("%s: %s: offset commit failed (%s); message may be redelivered", self.name, where, exc)
            return False

    def _wait(self, seconds: float, msg: Message | None) -> bool:
        """Back off while keeping the group membership alive. False when stopping or the partition left."""
        if not self.paused and self.assigned:
            self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
            self.paused = True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop.is_set():
                log.info("%s: stop requested during back-off; message left uncommitted", self.name)
                return False
            got = self.consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
            if got is not None and got.error() is None:
                self.pending.append(got)  # should not happen while paused; keep it rather than lose it
            self.producer.poll(0)
        if msg is not None and (msg.topic(), msg.partition()) not in self.assigned:
            log.warning("%s: %s[%d] was revoked during back-off; leaving offset %d to its new owner",
                        self.name, msg.topic(), msg.partition(), msg.offset())
            return False
        return True

    def _log_stats(self) -> None:
        lag: int | str = 0
        try:
            for tp in self.consumer.position([TopicPartition(t, p) for t, p in sorted(self.assigned)]):
                low, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                lag = int(lag) + max(0, high - (tp.offset if tp.offset >= 0 else low))
        except KafkaException as exc:
            lag = f"unknown ({exc})"
        s = self.stats
        log.info("%s: alive: processed=%d dead_lettered=%d retried=%d produced=%d lag=%s", self.name,
                 s.processed, s.dead_lettered, s.retried, s.produced, lag)

    def _close(self) -> None:
        try:
            left = self.producer.flush(10.0)
            if left:
                log.warning("%s: %d produced messages still undelivered at close", self.name, left)
        finally:
            self.consumer.close()  # leaves the group; nothing is auto-committed
            log.info("%s: closed: processed=%d dead_lettered=%d retried=%d produced=%d", self.name,
                     self.stats.processed, self.stats.dead_lettered, self.stats.retried, self.stats.produced)


def run_service(
    settings: Settings,
    *,
    name: str,
    input_topic: str,
    input_schema: str,
    handler: Handler,
    session_factory: sessionmaker[Session],
    registry: SchemaRegistry | None = None,
    max_messages: int | None = None,
    idle_timeout: float | None = None,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
    after_db_commit: Callable[[], None] | None = None,
    poll_timeout: float = 0.5,
    stats_interval: float = STATS_INTERVAL_S,
    consumer_overrides: Mapping[str, Any] | None = None,
    deliver_before_commit: bool = False,
) -> RunStats:
    """Consume ``input_topic``, call ``handler`` once per message in one transaction, produce its events.

    Parameters
    ----------
    settings : Settings
        Broker, topic prefix and consumer-group prefix; passed on to the handler in the context.
    name : str
        Service name: consumer group ``f"{settings.consumer_group_prefix}-{name}"``, log lines, DLQ header.
    input_topic : str
        Unprefixed input topic, e.g. ``"exposure-ready"``; its dead-letter topic is ``<input_topic>.dlq``.
    input_schema : str
        Schema name the input must have, e.g. ``"exposure_ready"``; another one is dead-lettered.
    handler : callable
        ``handler(session, record, ctx) -> [OutEvent, ...]``; runs inside the open transaction.
    session_factory : sqlalchemy.orm.sessionmaker
        Makes one session per message.
    registry : SchemaRegistry, optional
        Default: :meth:`SchemaRegistry.load` of the repository's ``schemas/``.
    max_messages : int, optional
        Stop after this many messages were processed or dead-lettered.
    idle_timeout : float, optional
        Stop after this many seconds without a message or partition assignment (seconds).
    stop_event : threading.Event, optional
        Set it (from another thread) to stop after the current message; signals set it too.
    install_signal_handlers : bool
        Make SIGTERM and SIGINT set the stop flag (main thread only; restored on return).
    after_db_commit : callable, optional
        Called after each successful DB commit, before producing: for tests and metrics.
    poll_timeout : float
        Consumer poll timeout, seconds.
    stats_interval : float
        Seconds between "alive" log lines (counts, and the lag: messages not yet polled, summed over the
        assigned partitions).
    consumer_overrides : mapping, optional
        Extra librdkafka consumer properties (e.g. ``{"session.timeout.ms": 6000}``).
    deliver_before_commit : bool
        Deliver the handler's events before the database commit instead of after (for a handler whose
        rows record that the events were sent, e.g. the alert log: a crash in between then re-sends rather
        than loses).

    Returns
    -------
    RunStats
        Counts of this run. The consumer has left its group and the producer is flushed.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    loop = _Loop(settings, name, input_topic, input_schema, handler, session_factory,
                 registry if registry is not None else SchemaRegistry.load(), stop, after_db_commit,
                 poll_timeout, consumer_overrides)
    loop.deliver_before_commit = deliver_before_commit
    previous: dict[signal.Signals, Any] = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: received %s, stopping after the current message", name, signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        return loop.run(max_messages, idle_timeout, stats_interval)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
