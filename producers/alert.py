"""alert producer: sighting-found -> (alert_log row) -> alerts (Avro packet, keyed by object id).

Only good sightings make alerts; a sighting already in ``alert_log`` is not sent again (replays and
redeliveries emit nothing new). The packet is delivered before the ``alert_log`` row commits, so a crash
in between re-sends the same alert id rather than losing it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import BadMessage
from seechange.models import Sighting
from seechange.pipeline.alert import build_alert, log_alert
from seechange.streaming.metrics import ALERT_LATENCY
from seechange.streaming.runloop import Handler, MessageContext, OutEvent
from seechange.streaming.stages import get_stage
from seechange.timestamps import epoch_ms, now_ms

STAGE = get_stage("alert")  # delivers before the DB commit: the alert_log row says "sent"


def make_handler(settings: Settings) -> Handler:
    """The alert handler."""

    def handle(session: Session, event: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        sighting = session.get(Sighting, int(event["sighting_id"]))
        if sighting is None:
            raise BadMessage(f"sighting {event['sighting_id']} is not in the database")
        if not sighting.is_good:
            return []
        if not log_alert(session, sighting, settings.topic(STAGE.output_topic)):
            return []
        record = build_alert(session, settings.data_dir, sighting, history_days=settings.alert_history_days)
        # handed to delivery right after this (deliver before commit): the exposure-to-alert latency
        ALERT_LATENCY.observe(max(0.0, (now_ms() - epoch_ms(event["ingested_at"])) / 1000.0))
        return [
            OutEvent(
                STAGE.output_topic, key=str(sighting.object_id), schema=STAGE.output_schema, record=record
            )
        ]

    return handle
