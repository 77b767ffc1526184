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

__all__ = ["alert_to_send", "alerts_to_send", "mark_sent"]


def _existing(session: Session, alert_ids: Sequence[int]) -> dict[int, AlertLog]:
    """The outbox rows of the alerts, locked until the transaction ends."""
    if not alert_ids:
        return {}
    rows = session.scalars(
        select(AlertLog)
        .where(AlertLog.alert_id.in_(list(alert_ids)))
        .order_by(AlertLog.alert_id)
        .with_for_update()
    )
    return {r.alert_id: r for r in rows}


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
    rows = alerts_to_send(session, [sighting], topic=topic, make_packets=lambda _: [make_packet()])
    return rows[0] if rows else None


def alerts_to_send(
    session: Session,
    sightings: Sequence[Sighting],
    *,
    topic: str,
    make_packets: Callable[[list[Sighting]], Sequence[bytes]],
) -> list[AlertLog]:
    """:func:`alert_to_send` for several sightings at once: the rows still to be delivered, in order.

    One locking query for the existing rows, ``make_packets(sightings without a row)`` (their framed
    packets, in that order) called once, one insert, one locking query for the rows inserted.
    """
    for s in sightings:
        assert s.object_id is not None
    ids = [s.id for s in sightings]  # alertId = sighting id (see seechange.pipeline.alert)
    rows = _existing(session, ids)
    missing = [s for s in sightings if s.id not in rows]
    if missing:
        packets = make_packets(missing)
        assert len(packets) == len(missing)
        session.execute(
            insert(AlertLog)
            .values(
                [
                    {
                        "alert_id": s.id,
                        "sighting_id": s.id,
                        "object_id": s.object_id,
                        "topic": topic,
                        "packet": packet,
                    }
                    for s, packet in zip(missing, packets, strict=True)
                ]
            )
            .on_conflict_do_nothing(index_elements=["alert_id"])
        )
        # ours, or the ones another instance committed meanwhile
        rows.update(_existing(session, [s.id for s in missing]))
    fresh = {s.id for s in missing}
    out = []
    for alert_id in ids:
        row = rows[alert_id]
        if row.sent_at is not None:
            continue
        if row.packet is None:  # rows from before the outbox all have sent_at (migration 0005)
            raise AssertionError(f"alert {alert_id} staged without a packet")
        if alert_id not in fresh:
            log.info("alert %d: staged, delivery not confirmed; re-sending the stored packet", alert_id)
        out.append(row)
    return out


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
