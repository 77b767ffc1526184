"""Offset commits of the run loop: checked per partition, retried through rebalances, kept when refused.

:func:`commit_message` commits the offset after one handled message synchronously and checks the
per-partition result. A retriable error, or one of a group that is rebalancing or went on without this
member (:data:`REBALANCE_ERRORS`), is retried (up to :data:`COMMIT_ATTEMPTS` times) after waiting with
polls, which lets the rebalance complete (or reports the partitions lost), while the partition is still
ours. An offset still refused is kept (``uncommitted``) and :func:`commit_kept` tries it again between
messages, on revoke and at the stop; once its partition belongs to another member, the loss is logged and
the new owner re-handles the message, idempotently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from seechange.streaming.delivery import BACKOFF_INITIAL_S, BACKOFF_MAX_S

log = logging.getLogger(__name__)

__all__ = ["COMMIT_ATTEMPTS", "REBALANCE_ERRORS", "commit_kept", "commit_message"]

COMMIT_ATTEMPTS = 3  #: synchronous offset commits tried per message before keeping the offset
#: commit errors of a group that is rebalancing or moved on without this member: retried after polling
#: (the rebalance completes, or the loss of the partitions is reported by ``on_lost``)
REBALANCE_ERRORS = frozenset(
    {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID}
)

Partition = tuple[str, int]


def commit_message(
    consumer: Consumer,
    msg: Message,
    where: str,
    *,
    name: str,
    assigned: Callable[[], set[Partition]],
    uncommitted: dict[Partition, int],
    wait: Callable[[float, Message], bool],
) -> bool:
    """Commit the offset after ``msg``; True when committed now.

    Parameters
    ----------
    consumer : Consumer
        The group member that handled ``msg``.
    msg : Message
        The message handled.
    where : str
        ``topic[partition]@offset`` for log lines.
    name : str
        Service name for log lines.
    assigned : callable
        The partitions currently owned (read again after every wait).
    uncommitted : dict
        Kept offsets, ``(topic, partition) -> offset to commit``; updated in place.
    wait : callable
        ``wait(seconds, msg) -> bool``: back off while polling; False to give up (stopping, or revoked).
    """
    tp = (str(msg.topic()), int(msg.partition() or 0))
    delay = BACKOFF_INITIAL_S
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        error: KafkaError | None = None
        try:
            result = consumer.commit(message=msg, asynchronous=False) or []
            error = next((p.error for p in result if p.error is not None), None)
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is None:
                log.warning(
                    "%s: %s: offset commit failed (%s); message will be redelivered", name, where, exc
                )
                return False
        if error is None:
            if uncommitted.get(tp, -1) <= int(msg.offset() or 0) + 1:
                uncommitted.pop(tp, None)  # this commit covers the earlier refused ones
            return True
        lost = tp not in assigned()
        worth = error.retriable() or error.code() in REBALANCE_ERRORS
        if lost or not worth or attempt == COMMIT_ATTEMPTS:
            if not lost and worth:
                uncommitted[tp] = int(msg.offset() or 0) + 1
            log.warning(
                "%s: %s: offset commit failed (%s%s); %s",
                name,
                where,
                error,
                ", partition lost" if lost else "",
                "kept, to commit once the rebalance is over"
                if tp in uncommitted
                else "message will be redelivered",
            )
            return False
        log.warning(
            "%s: %s: offset commit failed (%s), retry %d in %.1f s", name, where, error, attempt, delay
        )
        if not wait(delay, msg):
            return False
        delay = min(delay * 2, BACKOFF_MAX_S)
    return False


def commit_kept(
    consumer: Consumer,
    when: str,
    *,
    name: str,
    assigned: set[Partition],
    uncommitted: dict[Partition, int],
    only: set[Partition] | None = None,
) -> None:
    """Commit the kept offsets (of the partitions ``only``, default all) that are still ``assigned``.

    A partition no longer assigned is dropped from ``uncommitted`` with a warning (its new owner re-handles
    the messages after its last committed offset); a refused commit stays for the next call.
    """
    for tp in [tp for tp in uncommitted if tp not in assigned and (only is None or tp in only)]:
        log.warning(
            "%s: %s[%d] lost with offset %d uncommitted: its new owner re-handles from the last committed "
            "offset (idempotently)",
            name,
            tp[0],
            tp[1],
            uncommitted.pop(tp),
        )
    todo = {tp: off for tp, off in uncommitted.items() if only is None or tp in only}
    if not todo:
        return
    try:
        result = consumer.commit(
            offsets=[TopicPartition(t, p, off) for (t, p), off in todo.items()], asynchronous=False
        )
    except KafkaException as exc:
        log.warning("%s: %s: committing kept offsets failed (%s); kept", name, when, exc)
        return
    for r in result or []:
        tp = (str(r.topic), int(r.partition))
        if r.error is None and uncommitted.get(tp) == todo.get(tp):
            log.info("%s: %s: kept offset %d of %s[%d] committed", name, when, todo[tp], *tp)
            uncommitted.pop(tp)
        elif r.error is not None:
            log.warning("%s: %s: kept offset of %s[%d] refused again (%s)", name, when, *tp, r.error)
