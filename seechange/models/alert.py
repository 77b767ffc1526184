"""AlertLog: one row per alert packet sent (makes the alert producer idempotent)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from seechange.models.base import Base, IdMixin


class AlertLog(IdMixin, Base):
    """One alert sent.

    Attributes
    ----------
    alert_id : int
        The packet's ``alertId`` (deterministic from the sighting); unique.
    sighting_id : int
        The sighting the alert is about.
    object_id : int
        Its object.
    topic : str
        Full topic name the alert went to.
    sent_at : datetime
        When it was sent (timestamptz, default ``now()``).
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
    sent_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    def __repr__(self) -> str:
        return f"AlertLog(alert_id={self.alert_id!r}, sighting_id={self.sighting_id!r}, topic={self.topic!r})"
