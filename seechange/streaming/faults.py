"""Test-only fault points: a service kills itself (SIGKILL) at a named place of its run loop.

Off unless ``settings.fault_point`` names one, as ``"<service>:<point>"`` (e.g. ``"alert:after-delivery"``);
the default (empty) never fires, so production runs pass through :func:`maybe_crash` as a no-op. The
``fault_after`` setting makes it fire on the n-th pass instead of the first. Used by the re-send test and
the fault harness (``tests/integration/test_faults.py``) to crash at a moment no outside ``kill -9`` can
hit reliably.

Points
------
after-delivery
    Any stage, once the broker confirmed the message's events: the offset is not committed, and (the alert
    service) the outbox row is staged, not marked sent. The restart re-sends the same alert, byte for byte.
after-db-commit
    Any stage: the transaction is committed, nothing produced and the offset not committed. The restart
    handles the message again, idempotently (the alert service delivers the staged packet then).
"""

from __future__ import annotations

import logging
import os
import signal

from seechange.config import Settings

log = logging.getLogger(__name__)

__all__ = ["FAULT_POINTS", "FaultPoint"]

FAULT_POINTS = ("after-delivery", "after-db-commit")


class FaultPoint:
    """The fault point of one service: :meth:`maybe_crash` kills the process at the configured pass."""

    def __init__(self, settings: Settings, service: str) -> None:
        target = settings.fault_point.strip()
        self.point: str | None = None
        if target:
            svc, _, point = target.partition(":")
            if point not in FAULT_POINTS:
                raise ValueError(f"fault_point {target!r}: point must be one of {', '.join(FAULT_POINTS)}")
            if svc == service:
                self.point = point
                log.warning(
                    "%s: TEST FAULT POINT ARMED: SIGKILL at %s pass %d", service, point, settings.fault_after
                )
        self.service, self.after, self.passes = service, max(1, settings.fault_after), 0

    def maybe_crash(self, point: str, where: str) -> None:
        """SIGKILL this process if ``point`` is the armed one and this is the configured pass."""
        if self.point != point:
            return
        self.passes += 1
        if self.passes >= self.after:
            log.critical("%s: %s: test fault point %s: SIGKILL", self.service, where, point)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
