"""alert producer: sighting-found -> (alert_log outbox row) -> alerts (Avro packet, keyed by object id).

Only good sightings make alerts. The packet is built once, and its bytes are stored in ``alert_log`` (the
outbox, :mod:`seechange.pipeline.outbox`) in the message's transaction; the run loop delivers those bytes
after the commit and then marks the row sent. A crash in between re-sends the stored bytes (same alert id,
same content); a sighting already sent is not sent again (replays and redeliveries emit nothing new).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import BadMessage
from seechange.logformat import add_log_context
from seechange.models import Sighting
from seechange.pipeline.alert import build_alert
from seechange.pipeline.outbox import alert_to_send, mark_sent
from seechange.streaming.framing import encode
from seechange.streaming.metrics import ALERT_LATENCY
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import Handler, MessageContext, OutEvent
from seechange.streaming.stages import get_stage
from seechange.timestamps import epoch_ms, now_ms

STAGE = get_stage("alert")


def make_handler(settings: Settings) -> Handler:
    """The alert handler."""
    registry = SchemaRegistry.load()

    def handle(session: Session, event: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        sighting = session.get(Sighting, int(event["sighting_id"]))
        if sighting is None:
            raise BadMessage(f"sighting {event['sighting_id']} is not in the database")
        if not sighting.is_good:
            return []

        def packet() -> bytes:
            record = build_alert(
                session, settings.data_dir, sighting, history_days=settings.alert_history_days
            )
            return encode(registry, STAGE.output_schema, record)

        row = alert_to_send(session, sighting, topic=settings.topic(STAGE.output_topic), make_packet=packet)
        if row is None:
            return []
        assert row.packet is not None
        add_log_context(alert_id=row.alert_id)
        # delivered right after the commit: the exposure-to-alert latency
        ALERT_LATENCY.observe(max(0.0, (now_ms() - epoch_ms(event["ingested_at"])) / 1000.0))
        return [
            OutEvent(
                STAGE.output_topic,
                key=str(row.object_id),
                schema=STAGE.output_schema,
                value=row.packet,
                on_delivered=partial(_sent, row.alert_id),
            )
        ]

    return handle


def _sent(alert_id: int, session: Session) -> None:
    mark_sent(session, [alert_id])
