"""The alert outbox: a packet's bytes are stored before it is delivered, so a re-send repeats them exactly.

Order per alert (the alert service, through the run loop):

1. :func:`alert_to_send` in the message's transaction: the ``alert_log`` row of the sighting; none yet: the
   packet is built, encoded and stored with ``sent_at`` null (staged); the transaction commits;
2. the run loop delivers the stored bytes and waits for the broker's confirmation;
3. :func:`mark_sent` in a second transaction sets ``sent_at``; then the input offset is committed.

A crash before 3 leaves the row staged: the redelivered message finds it and sends the same bytes again
(the one allowed duplicate, byte for byte the first copy); after 3, the sighting is never sent again (a
replay or redelivery emits nothing). Whatever happened to the database meanwhile (later epochs associated,
forced photometry added backwards, an Object renamed), a re-send is the packet as first built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from seechange.models import AlertLog, Sighting

log = logging.getLogger(__name__)

__all__ = ["alert_to_send", "mark_sent"]


def _existing(session: Session, alert_id: int) -> AlertLog | None:
    return session.scalars(
        select(AlertLog).where(AlertLog.alert_id == alert_id).with_for_update()
    ).one_or_none()


def alert_to_send(
    session: Session, sighting: Sighting, *, topic: str, make_packet: Callable[[], bytes]
) -> AlertLog | None:
    """The outbox row of ``sighting``'s alert when it still has to be delivered; None when it was sent.

    A sighting without a row gets one: ``make_packet()`` (the framed Avro bytes) is called and stored, staged.
    A staged row (a crash or a stop came between the delivery and :func:`mark_sent`) is returned as it is,
    so its stored bytes are delivered again. The row is locked until the transaction ends, so two instances
    handling the same sighting at once stage it once.

    Parameters
    ----------
    session : Session
        The message's open transaction.
    sighting : Sighting
        A good sighting with its Object.
    topic : str
        Full name of the alert topic, recorded in the row.
    make_packet : callable
        Builds and encodes the packet; called only when the sighting has no row yet.
    """
    assert sighting.object_id is not None
    alert_id = sighting.id  # alertId = sighting id (see seechange.pipeline.alert)
    row = _existing(session, alert_id)
    fresh = row is None
    if row is None:
        stmt = (
            insert(AlertLog)
            .values(
                alert_id=alert_id,
                sighting_id=sighting.id,
                object_id=sighting.object_id,
                topic=topic,
                packet=make_packet(),
            )
            .on_conflict_do_nothing(index_elements=["alert_id"])
        )
        session.execute(stmt)
        row = _existing(session, alert_id)  # ours, or the one another instance committed meanwhile
        assert row is not None
    if row.sent_at is not None:
        return None
    if row.packet is None:  # rows from before the outbox all have sent_at (migration 0005)
        raise AssertionError(f"alert {alert_id} staged without a packet")
    if not fresh:
        log.info("alert %d: staged, delivery not confirmed; re-sending the stored packet", alert_id)
    return row


def mark_sent(session: Session, alert_ids: Sequence[int]) -> int:
    """Record that the broker confirmed the alerts ``alert_ids``; how many rows were staged (0 if done)."""
    if not alert_ids:
        return 0
    result = session.execute(
        update(AlertLog)
        .where(AlertLog.alert_id.in_(list(alert_ids)), AlertLog.sent_at.is_(None))
        .values(sent_at=func.now())
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
