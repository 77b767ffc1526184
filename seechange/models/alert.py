"""AlertLog: the alert outbox, one row per alert packet (makes the alert producer idempotent)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, ForeignKey, LargeBinary, String, func
from sqlalchemy.orm import Mapped, mapped_column

from seechange.models.base import Base, IdMixin


class AlertLog(IdMixin, Base):
    """One alert packet: staged (its bytes stored) before delivery, marked sent once the broker confirmed it.

    Attributes
    ----------
    alert_id : int
        The packet's ``alertId`` (deterministic from the sighting); unique.
    sighting_id : int
        The sighting the alert is about.
    object_id : int
        Its object (the message key).
    topic : str
        Full topic name the alert goes to.
    packet : bytes or None
        The framed Avro packet exactly as delivered (a re-send repeats these bytes); None for rows written
        before the outbox (migration 0005).
    staged_at : datetime
        When the packet was built and stored (timestamptz, default ``now()``).
    sent_at : datetime or None
        When the broker confirmed the delivery (timestamptz); None while the packet waits in the outbox.
    """

    __tablename__ = "alert_log"

    alert_id: Mapped[int] = mapped_column(BigInteger, nullable=False, unique=True)
    sighting_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("sightings.id", ondelete="CASCADE"), nullable=False, index=True
    )
    object_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("objects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    topic: Mapped[str] = mapped_column(String, nullable=False)
    packet: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    staged_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)

    def __repr__(self) -> str:
        return f"AlertLog(alert_id={self.alert_id!r}, sighting_id={self.sighting_id!r}, topic={self.topic!r})"
