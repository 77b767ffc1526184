"""The run loop every service shares: poll, decode, one DB transaction, produce, flush, commit the offset.

Order per message (at least once in, idempotent out):

1. decode the value with the schema registry (undecodable -> dead-letter topic);
2. open one transaction, call the handler, encode its output events, commit;
3. produce every output event, flush, and check every delivery report (failed ones are re-sent with
   back-off until they succeed);
4. when events carry an ``on_delivered`` callback (an outbox: the alert service), call them in a second
   transaction (retried like the first);
5. only then commit the consumer offset (synchronously; per-partition commit errors are checked). A
   commit refused because the group is rebalancing (``REBALANCE_IN_PROGRESS``, ``ILLEGAL_GENERATION``) is
   retried after polling (which lets the rebalance complete); an offset still uncommitted is kept and
   committed between messages, when its partition is revoked, and at the clean stop, or, when the
   partition went to another member first, its loss is logged with the offset the new owner starts from.

Error policy, by the kind of exception the handler raises:

- bad input (:class:`seechange.errors.BadInput`: :class:`BadMessage`, a missing or corrupt file, a row
  that does not exist, an undecodable message): the original bytes go to ``<input_topic>.dlq`` with error
  and origin headers, the offset is committed and the loop goes on;
- infrastructure (:class:`InfrastructureError`, a lost DB connection, a Kafka error): roll back and retry
  the same message with back-off (0.5 s .. 30 s) for as long as it takes, committing nothing; the
  partitions are paused meanwhile to keep the group membership;
- anything else (``TypeError``, ``AttributeError``, a failed ``assert``: a bug or a deployment error):
  roll back and retry the same message with back-off, committing nothing; after
  ``settings.max_consecutive_errors`` failures in a row the loop raises :class:`TooManyErrors` (the
  service exits non-zero) and the message stays uncommitted, to be redelivered once the bug is fixed.
  A bug never drains a night into the dead-letter topic.

A handler may also handle several messages at once (a :class:`BatchHandler`: a ``many`` method, e.g. the
alert service's one packet query per batch instead of one per sighting): messages already fetched (up to
:data:`BATCH_MAX`) then go through steps 2 to 5 together, in one transaction, one delivery and one offset
commit per partition, in order. An undecodable message splits its batch (it is dead-lettered alone); any
other failure of a batch (bad input, anything) rolls it back and hands its messages to the one-message
path above, which then applies the error policy to each.

SIGTERM/SIGINT stop after the current message (or batch).

Every line logged while a message is handled (by the loop, the handler or any library it calls) carries
the log context (:func:`seechange.logformat.log_context`): service, topic, partition, offset, the input
event's ids (``exposure_id``, ``image_id``, ``subtraction_id``, ``sighting_id``, ...) and, once the
handler returned, the ids of the events it produced.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.errors import BadMessage, is_bad_input
from seechange.logformat import add_log_context, ids_of, log_context
from seechange.streaming import metrics
from seechange.streaming.commits import commit_kept, commit_message
from seechange.streaming.delivery import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    DLQ_HEADERS,
    Delivery,
    Item,
    dead_letter,
)
from seechange.streaming.faults import FaultPoint
from seechange.streaming.framing import DecodeError, decode, encode, one_line
from seechange.streaming.kafka_config import consumer_config, is_consumer_error, producer_config
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.topics import dlq_name

log = logging.getLogger(__name__)

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "BATCH_MAX",
    "DLQ_HEADERS",
    "BadMessage",
    "BatchHandler",
    "Handler",
    "InfrastructureError",
    "MessageContext",
    "OutEvent",
    "RunStats",
    "TooManyErrors",
    "dlq_topic",
    "is_infrastructure_error",
    "run_service",
]

STATS_INTERVAL_S = 30.0
LAG_INTERVAL_S = 5.0  #: seconds between updates of the consumer-lag gauges (when metrics are served)
KAFKA_ERROR_LOG_S = 10.0  #: a repeated Kafka client error (same code) is logged at most this often, seconds


@dataclass(frozen=True)
class OutEvent:
    """An event a handler asks the loop to produce after its transaction commits.

    ``value``: bytes already framed (e.g. taken from an outbox), produced as they are instead of encoding
    ``record``. ``on_delivered(session)``: called in one transaction once the broker confirmed every event
    of the message, before the offset commit (e.g. to mark an outbox row sent).
    """

    topic: str  #: unprefixed topic name, e.g. ``"image-reduced"``
    key: str
    schema: str  #: schema name, e.g. ``"image_reduced"`` (written with its latest version)
    record: dict[str, Any] = field(default_factory=dict)
    value: bytes | None = None
    on_delivered: Callable[[Session], None] | None = None


@dataclass(frozen=True)
class MessageContext:
    """Where the message being handled came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    settings: Settings


class InfrastructureError(Exception):
    """Raise from a handler for "retry me later" (a dependency is down); nothing is committed."""


class TooManyErrors(RuntimeError):
    """The handler failed unexpectedly ``max_consecutive_errors`` times in a row: the service stops.

    The failing message's offset is not committed, so it is redelivered when the service restarts.
    """


@dataclass
class RunStats:
    """Counts of one :func:`run_service` call."""

    processed: int = 0  #: messages handled successfully and committed
    dead_lettered: int = 0  #: messages sent to the dead-letter topic and committed
    retried: int = 0  #: infrastructure-error and unexpected-error retries (attempts, not messages)
    produced: int = 0  #: output events delivered (dead-letter copies not counted)


Handler = Callable[[Session, dict[str, Any], MessageContext], Sequence[OutEvent]]

#: Most messages a batch handler gets at once (only messages already fetched are gathered: a batch never
#: waits for more).
BATCH_MAX = 64


class BatchHandler(Protocol):
    """A handler that can also handle several messages in one transaction."""

    def __call__(
        self, session: Session, event: dict[str, Any], ctx: MessageContext
    ) -> Sequence[OutEvent]: ...

    def many(
        self, session: Session, events: Sequence[dict[str, Any]], ctxs: Sequence[MessageContext]
    ) -> list[Sequence[OutEvent]]:
        """The events of each message, in order: what calling the handler on each in turn would give."""
        ...


def dlq_topic(settings: Settings, input_topic: str) -> str:
    """Full (prefixed) name of the dead-letter topic of an unprefixed input topic."""
    return dlq_name(settings.topic(input_topic))


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for errors worth retrying: a dependency failed, not the message."""
    if isinstance(
        exc,
        InfrastructureError
        | KafkaException
        | ConnectionError
        | sa_exc.TimeoutError
        | sa_exc.OperationalError
        | sa_exc.InterfaceError,
    ):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


class _Loop:
    """State of one run; :func:`run_service` is its public face."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        input_topic: str,
        input_schema: str,
        handler: Handler,
        session_factory: sessionmaker[Session],
        registry: SchemaRegistry,
        stop: threading.Event,
        after_db_commit: Callable[[], None] | None,
        poll_timeout: float,
        consumer_overrides: Mapping[str, Any] | None,
    ) -> None:
        self.settings, self.name, self.handler, self.input_schema = settings, name, handler, input_schema
        self.many: Callable[..., list[Sequence[OutEvent]]] | None = getattr(handler, "many", None)
        self.session_factory, self.registry, self.stop = session_factory, registry, stop
        self.after_db_commit, self.poll_timeout = after_db_commit, poll_timeout
        self.topic, self.dlq = settings.topic(input_topic), dlq_topic(settings, input_topic)
        self.group = f"{settings.consumer_group_prefix}-{name}"
        self.stats = RunStats()
        self.max_consecutive_errors = max(1, settings.max_consecutive_errors)
        self.consecutive_errors = 0
        self._kafka_errors: dict[int, tuple[float, int]] = {}  #: error code -> (last logged, repeats since)
        self.assigned: set[tuple[str, int]] = set()
        self.pending: deque[Message] = deque()
        #: (topic, partition) -> offset to commit, of messages handled whose offset commit was refused
        self.uncommitted: dict[tuple[str, int], int] = {}
        self.paused = False
        # librdkafka keeps a partition's pause flag across a revoke and a new assignment: a partition paused
        # during a back-off that is taken away and given back mid-wait would stay paused forever (seen in a
        # 30 s broker outage: reduce re-assigned its 4 partitions and never fetched again)
        self.resume_due = False
        self.last_message = time.monotonic()
        self.fault = FaultPoint(settings, name)  # test only; inert unless settings.fault_point names us
        self.consumer = Consumer(
            {
                **consumer_config(settings, self.group),
                "error_cb": self._on_kafka_error,
                **(consumer_overrides or {}),
            }
        )
        self.producer = Producer({**producer_config(settings), "error_cb": self._on_kafka_error})
        self.monitor = metrics.ServiceMonitor(
            settings, name, {"broker": self._broker_answers, "database": self._database_answers}
        )
        self.delivery = Delivery(
            self.producer,
            name,
            stop=stop,
            wait=lambda seconds: self._wait(seconds, None),
            on_retry=self._count_retry,
        )

    def _count_retry(self) -> None:
        self.stats.retried += 1
        metrics.FAILED.labels(self.name).inc()

    def _broker_answers(self) -> None:
        self.producer.list_topics(timeout=3.0)

    def _database_answers(self) -> None:
        with self.session_factory() as session:
            session.execute(text("SELECT 1"))

    def _on_kafka_error(self, err: KafkaError) -> None:
        """Log a client error; the same error code at most once per :data:`KAFKA_ERROR_LOG_S` with a count.

        librdkafka reports a refused connection every few tens of milliseconds while the broker is down.
        """
        now, code = time.monotonic(), err.code()
        last, repeats = self._kafka_errors.get(code, (-math.inf, 0))
        if now - last < KAFKA_ERROR_LOG_S:
            self._kafka_errors[code] = (last, repeats + 1)
            return
        self._kafka_errors[code] = (now, 0)
        more = f" ({repeats} more like it since the last report)" if repeats else ""
        log.warning("%s: kafka client error: %s%s", self.name, err, more)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.resume_due = True  # resumed once the assignment is applied (see _resume_assigned)
        self.last_message = time.monotonic()  # joining the group does not count as idle time
        log.info("%s: assigned %s", self.name, sorted(f"{t}[{p}]" for t, p in self.assigned))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group moved on without this member (e.g. a handler outlasted ``max.poll.interval.ms``)."""
        lost = sorted(f"{p.topic}[{p.partition}]" for p in partitions)
        log.warning("%s: partitions lost (the group went on without this member): %s", self.name, lost)
        self._on_revoke(consumer, partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        if self.uncommitted.keys() & gone:  # still ours until this returns: the last chance to commit
            self._commit_outstanding("on revoke", only=gone)
            for tp in gone & self.uncommitted.keys():
                log.warning(
                    "%s: %s[%d] revoked with offset %d uncommitted: its new owner re-handles from the last "
                    "committed offset (idempotently)",
                    self.name,
                    tp[0],
                    tp[1],
                    self.uncommitted.pop(tp),
                )
        self.assigned -= gone
        for t, p in gone:
            try:
                metrics.LAG.remove(self.name, t, str(p))
            except KeyError:
                pass
        self.pending = deque(m for m in self.pending if (m.topic(), m.partition()) not in gone)
        log.info("%s: revoked %s", self.name, sorted(f"{t}[{p}]" for t, p in gone))

    def run(self, max_messages: int | None, idle_timeout: float | None, stats_interval: float) -> RunStats:
        with log_context(service=self.name):
            return self._run(max_messages, idle_timeout, stats_interval)

    def _run(self, max_messages: int | None, idle_timeout: float | None, stats_interval: float) -> RunStats:
        self.consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info("%s: consuming %s as group %s", self.name, self.topic, self.group)
        self.last_message = last_stats = last_lag = time.monotonic()
        try:
            while not self.stop.is_set():
                self.monitor.tick()
                if (
                    max_messages is not None
                    and self.stats.processed + self.stats.dead_lettered >= max_messages
                ):
                    log.info("%s: reached max_messages=%d", self.name, max_messages)
                    break
                if self.uncommitted:
                    self._commit_outstanding("between messages")
                if self.resume_due or self.paused:  # between messages nothing may stay paused
                    self.paused = False
                    self._resume_assigned()
                msg = self.pending.popleft() if self.pending else self.consumer.poll(self.poll_timeout)
                now = time.monotonic()
                if now - last_stats >= stats_interval:
                    self._log_stats()
                    last_stats = now
                if self.monitor.server is not None and now - last_lag >= LAG_INTERVAL_S:
                    self._update_lag()
                    last_lag = now
                if msg is None:
                    if idle_timeout is not None and now - self.last_message >= idle_timeout:
                        log.info("%s: no message for %.1f s, stopping", self.name, idle_timeout)
                        break
                    continue
                if is_consumer_error(msg, self.name):
                    continue
                self.last_message = now
                batch = self._gather(msg, max_messages)
                if len(batch) > 1:
                    self._handle_batch(batch)
                else:
                    self._handle(msg)
        finally:
            self._close()
        return self.stats

    def _handle(self, msg: Message) -> None:
        t0 = time.perf_counter()
        done = (self.stats.processed, self.stats.dead_lettered)
        try:
            with log_context(topic=msg.topic(), partition=msg.partition(), offset=msg.offset()):
                self._handle_one(msg)
        finally:
            if self.stats.processed > done[0]:
                metrics.PROCESSED.labels(self.name).inc()
                metrics.PROCESSING_SECONDS.labels(self.name).observe(time.perf_counter() - t0)
            if self.stats.dead_lettered > done[1]:
                metrics.DEAD_LETTERED.labels(self.name).inc()

    def _gather(self, msg: Message, max_messages: int | None) -> list[Message]:
        """``msg`` and, for a batch handler, the messages already fetched after it (none is waited for)."""
        room = BATCH_MAX - 1
        if max_messages is not None:
            room = min(room, max_messages - self.stats.processed - self.stats.dead_lettered - 1)
        if self.many is None or self.pending or room <= 0:
            return [msg]
        batch = [msg]
        for more in self.consumer.consume(num_messages=room, timeout=0):
            if not is_consumer_error(more, self.name):
                batch.append(more)
        return batch

    def _handle_batch(self, msgs: list[Message]) -> None:
        """Steps 2 to 5 for several messages at once; any failure hands them to :meth:`_handle` one by one."""
        records: list[dict[str, Any]] = []
        for k, msg in enumerate(msgs):  # an undecodable message splits the batch: it goes alone (dead letter)
            try:
                records.append(decode(self.registry, msg.value() or b"", expect=self.input_schema)[1])
            except DecodeError:
                for part in (msgs[:k], [msg], msgs[k + 1 :]):
                    if len(part) > 1:
                        self._handle_batch(part)
                    elif part and not self.stop.is_set():
                        self._handle(part[0])
                return
        t0 = time.perf_counter()
        first, last = msgs[0], msgs[-1]
        where = (
            f"{first.topic()}[{first.partition()}]@{first.offset()} .. [{last.partition()}]@{last.offset()}"
        )
        done = self.stats.processed
        if not self._try_batch(msgs, records, where):
            for msg in msgs:
                if self.stop.is_set():
                    break
                self._handle(msg)
            return
        n = self.stats.processed - done
        if n:
            metrics.PROCESSED.labels(self.name).inc(n)
        for _ in range(n):  # the batch's time shared by its messages
            metrics.PROCESSING_SECONDS.labels(self.name).observe((time.perf_counter() - t0) / len(msgs))

    def _try_batch(self, msgs: list[Message], records: list[dict[str, Any]], where: str) -> bool:
        """One transaction, one delivery, one confirmation, one commit per partition; False to fall back
        (nothing of the batch committed: not an offset, not a row)."""
        assert self.many is not None
        ctxs = [self._context(msg) for msg in msgs]
        try:
            with (
                log_context(topic=str(msgs[0].topic()), batch=len(msgs)),
                self.session_factory() as session,
                session.begin(),
            ):
                per_message = self.many(session, records, ctxs)
                if len(per_message) != len(msgs):
                    raise AssertionError(
                        f"{self.name}: many() gave {len(per_message)} results for {len(msgs)}"
                    )
                items, confirms = self._encoded([e for evs in per_message for e in evs])
        except Exception as exc:  # noqa: BLE001 - the one-message path applies the error policy to each
            (log.info if is_bad_input(exc) else log.warning)(
                "%s: %s: batch of %d not handled together (%s: %s); one by one",
                self.name,
                where,
                len(msgs),
                type(exc).__name__,
                one_line(exc),
            )
            return False
        try:
            self.fault.maybe_crash("after-db-commit", where)
            if self.after_db_commit is not None:
                self.after_db_commit()
            if not self.delivery.deliver(items, where):
                return True  # stopping: nothing committed, the batch is redelivered
            self.stats.produced += len(items)
            if items:
                self.fault.maybe_crash("after-delivery", where)
            if confirms and not self._confirm(confirms, where, msgs[-1]):
                return True
            self.consecutive_errors = 0
            lasts: dict[tuple[str, int], Message] = {}
            counts: dict[tuple[str, int], int] = {}
            for msg in msgs:
                tp = (str(msg.topic()), int(msg.partition() or 0))
                lasts[tp] = msg
                counts[tp] = counts.get(tp, 0) + 1
            for tp, msg in lasts.items():
                if self._commit(msg, where):
                    self.stats.processed += counts[tp]
        finally:
            if self.paused:
                self.paused = False
                self._resume_assigned()
        return True

    def _context(self, msg: Message) -> MessageContext:
        key = msg.key()
        return MessageContext(
            str(msg.topic()),
            int(msg.partition() or 0),
            int(msg.offset() or 0),
            key.encode() if isinstance(key, str) else key,
            self.settings,
        )

    def _handle_one(self, msg: Message) -> None:
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        where = f"{topic}[{partition}]@{offset}"
        ctx = self._context(msg)
        try:
            _, record = decode(self.registry, msg.value() or b"", expect=self.input_schema)
        except DecodeError as exc:
            self._dead_letter(msg, where, exc)
            return
        add_log_context(**ids_of([record]))
        delay = BACKOFF_INITIAL_S
        try:
            while True:
                try:
                    items, confirms = self._transact(record, ctx)
                    break
                except Exception as exc:  # noqa: BLE001 - dead-lettered, retried, or stops the service
                    if is_bad_input(exc):
                        self._dead_letter(msg, where, exc)
                        return
                    self._note_failure(where, exc, delay, "infrastructure error")
                    if not self._wait(delay, msg):
                        return
                    delay = min(delay * 2, BACKOFF_MAX_S)
            self.fault.maybe_crash("after-db-commit", where)
            if self.after_db_commit is not None:
                self.after_db_commit()
            if not self.delivery.deliver(items, where):
                return
            self.stats.produced += len(items)
            if items:
                self.fault.maybe_crash("after-delivery", where)
            if confirms and not self._confirm(confirms, where, msg):
                return
            self.consecutive_errors = 0
            if self._commit(msg, where):
                self.stats.processed += 1
        finally:
            if self.paused:
                self.paused = False
                self._resume_assigned()

    def _note_failure(self, where: str, exc: Exception, delay: float, what: str) -> None:
        """Log a failure to be retried in ``delay`` s and count it; too many unexpected ones raise."""
        if is_infrastructure_error(exc):
            log.warning(
                "%s: %s: %s, retry in %.1f s: %s: %s",
                self.name,
                where,
                what,
                delay,
                type(exc).__name__,
                one_line(exc),
            )
        else:
            self._unexpected(where, exc, delay)
        self._count_retry()

    def _unexpected(self, where: str, exc: Exception, delay: float) -> None:
        """Count an unexpected (non-bad-input, non-infrastructure) failure; raise when there are too many."""
        self.consecutive_errors += 1
        n, cap = self.consecutive_errors, self.max_consecutive_errors
        if n >= cap:
            log.error(
                "%s: %s: unexpected %s (%d of %d in a row), stopping; offset not committed: %s",
                self.name,
                where,
                type(exc).__name__,
                n,
                cap,
                one_line(exc),
                exc_info=exc,
            )
            raise TooManyErrors(
                f"{self.name}: {where}: {n} consecutive unexpected errors, last "
                f"{type(exc).__name__}: {one_line(exc)}"
            ) from exc
        log.error(
            "%s: %s: unexpected %s (%d of %d in a row), not committed, retry in %.1f s: %s",
            self.name,
            where,
            type(exc).__name__,
            n,
            cap,
            delay,
            one_line(exc),
            exc_info=exc,
        )

    def _transact(
        self, record: dict[str, Any], ctx: MessageContext
    ) -> tuple[list[Item], list[Callable[[Session], None]]]:
        """One transaction: the handler, then encoding its events (a bad event rolls the writes back).

        Returns the items to deliver and the events' ``on_delivered`` callbacks.
        """
        with self.session_factory() as session, session.begin():
            events = self.handler(session, record, ctx)
            add_log_context(**ids_of([e.record for e in events]))
            return self._encoded(events)

    def _encoded(self, events: Sequence[OutEvent]) -> tuple[list[Item], list[Callable[[Session], None]]]:
        """The events as items to deliver (framed Avro) and their ``on_delivered`` callbacks."""
        items = [
            Item(
                self.settings.topic(e.topic),
                e.key,
                e.value if e.value is not None else encode(self.registry, e.schema, e.record),
            )
            for e in events
        ]
        return items, [e.on_delivered for e in events if e.on_delivered is not None]

    def _confirm(self, confirms: list[Callable[[Session], None]], where: str, msg: Message) -> bool:
        """Run the ``on_delivered`` callbacks in one transaction, retried with back-off; False if stopped.

        Not confirmed means the offset stays uncommitted: the message is handled again, and an outbox
        re-sends its stored bytes.
        """
        delay = BACKOFF_INITIAL_S
        while True:
            try:
                with self.session_factory() as session, session.begin():
                    for confirm in confirms:
                        confirm(session)
                return True
            except Exception as exc:  # noqa: BLE001 - retried; too many unexpected ones stop the service
                self._note_failure(where, exc, delay, "delivered, confirmation failed")
                if not self._wait(delay, msg):
                    return False
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _dead_letter(self, msg: Message, where: str, exc: BaseException) -> None:
        log.error("%s: %s: %s: %s -> %s", self.name, where, type(exc).__name__, one_line(exc, 1000), self.dlq)
        item = dead_letter(
            self.dlq,
            exc,
            service=self.name,
            key=msg.key(),
            value=msg.value() or b"",
            origin_topic=str(msg.topic()),
            origin_partition=msg.partition(),
            origin_offset=msg.offset(),
        )
        if self.delivery.deliver([item], where) and self._commit(msg, where):
            self.stats.dead_lettered += 1

    def _commit(self, msg: Message, where: str) -> bool:
        """Commit the offset after ``msg`` (:func:`seechange.streaming.commits.commit_message`)."""
        return commit_message(
            self.consumer,
            msg,
            where,
            name=self.name,
            assigned=lambda: self.assigned,
            uncommitted=self.uncommitted,
            wait=self._wait,
        )

    def _commit_outstanding(self, when: str, only: set[tuple[str, int]] | None = None) -> None:
        """Commit the kept offsets still ours (:func:`seechange.streaming.commits.commit_kept`)."""
        commit_kept(
            self.consumer,
            when,
            name=self.name,
            assigned=self.assigned,
            uncommitted=self.uncommitted,
            only=only,
        )

    def _resume_assigned(self) -> None:
        """Resume every partition of the current assignment (clears pause flags left from before a rebalance)."""
        self.resume_due = False
        if not self.assigned:
            return
        try:
            self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])
        except KafkaException as exc:  # a partition already gone again: the next assignment resumes it
            log.warning("%s: resuming the assigned partitions failed: %s", self.name, exc)
            self.resume_due = True

    def _wait(self, seconds: float, msg: Message | None) -> bool:
        """Back off while keeping the group membership alive. False when stopping or the partition left."""
        if not self.paused and self.assigned:
            self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
            self.paused = True
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.monitor.tick()
            if self.stop.is_set():
                log.info("%s: stop requested during back-off; message left uncommitted", self.name)
                return False
            got = self.consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
            if got is not None and got.error() is None:
                self.pending.append(got)  # should not happen while paused; keep it rather than lose it
            self.producer.poll(0)
        if msg is not None and (msg.topic(), msg.partition()) not in self.assigned:
            log.warning(
                "%s: %s[%d] was revoked during back-off; leaving offset %d to its new owner",
                self.name,
                msg.topic(),
                msg.partition(),
                msg.offset(),
            )
            return False
        return True

    def _lags(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> messages not yet polled, for every assigned partition (raises KafkaException)."""
        out = {}
        for tp in self.consumer.position([TopicPartition(t, p) for t, p in sorted(self.assigned)]):
            low, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
            out[(str(tp.topic), int(tp.partition))] = max(0, high - (tp.offset if tp.offset >= 0 else low))
        return out

    def _update_lag(self) -> None:
        try:
            lags = self._lags()
        except KafkaException as exc:
            log.debug("%s: lag unknown: %s", self.name, exc)
            return
        for (t, p), n in lags.items():
            metrics.LAG.labels(self.name, t, str(p)).set(n)

    def _log_stats(self) -> None:
        lag: int | str
        try:
            lag = sum(self._lags().values())
        except KafkaException as exc:
            lag = f"unknown ({exc})"
        s = self.stats
        log.info(
            "%s: alive: processed=%d dead_lettered=%d retried=%d produced=%d lag=%s",
            self.name,
            s.processed,
            s.dead_lettered,
            s.retried,
            s.produced,
            lag,
        )

    def _close(self) -> None:
        try:
            left = self.producer.flush(10.0)
            if left:
                log.warning("%s: %d produced messages still undelivered at close", self.name, left)
        finally:
            self.monitor.close()
            if self.uncommitted:
                self._commit_outstanding("at the stop")
                for (t, p), off in self.uncommitted.items():
                    log.warning(
                        "%s: stopping with offset %d of %s[%d] uncommitted (redelivered later)",
                        self.name,
                        off,
                        t,
                        p,
                    )
            self.consumer.close()  # leaves the group; nothing is auto-committed
            log.info(
                "%s: closed: processed=%d dead_lettered=%d retried=%d produced=%d",
                self.name,
                self.stats.processed,
                self.stats.dead_lettered,
                self.stats.retried,
                self.stats.produced,
            )


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
) -> RunStats:
    """Consume ``input_topic``, call ``handler`` once per message in one transaction, produce its events.

    Parameters
    ----------
    settings : Settings
        Broker, topic prefix, consumer-group prefix and ``max_consecutive_errors``; passed on to the
        handler in the context.
    name : str
        Service name: consumer group ``f"{settings.consumer_group_prefix}-{name}"``, log lines, DLQ header.
    input_topic : str
        Unprefixed input topic, e.g. ``"exposure-ready"``; its dead-letter topic is ``<input_topic>.dlq``.
    input_schema : str
        Schema name the input must have, e.g. ``"exposure_ready"``; another one is dead-lettered.
    handler : callable
        ``handler(session, record, ctx) -> [OutEvent, ...]``; runs inside the open transaction. It raises
        the :class:`~seechange.errors.BadInput` family for bad input (dead-lettered) and
        :class:`InfrastructureError` for "retry later"; anything else counts as unexpected.
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

    Returns
    -------
    RunStats
        Counts of this run. The consumer has left its group and the producer is flushed.

    Raises
    ------
    TooManyErrors
        After ``settings.max_consecutive_errors`` unexpected handler failures in a row; the failing
        message's offset is not committed (the consumer has left its group and the producer is flushed).
    """
    stop = stop_event if stop_event is not None else threading.Event()
    loop = _Loop(
        settings,
        name,
        input_topic,
        input_schema,
        handler,
        session_factory,
        registry if registry is not None else SchemaRegistry.load(),
        stop,
        after_db_commit,
        poll_timeout,
        consumer_overrides,
    )
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
