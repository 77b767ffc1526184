"""Unix epoch milliseconds: the one clock of events (``produced_at``, ``ingested_at``; Avro ``timestamp-millis``)."""

from __future__ import annotations

import time
from datetime import datetime

__all__ = ["epoch_ms", "now_ms"]


def now_ms() -> int:
    """The current time as Unix epoch milliseconds (for ``produced_at``)."""
    return time.time_ns() // 1_000_000


def epoch_ms(value: int | datetime) -> int:
    """A ``timestamp-millis`` value (int ms, or an aware datetime as decoded or read from a row) in epoch ms."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)
