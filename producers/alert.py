"""alert producer: sighting-found -> (alert_log outbox row) -> alerts (Avro packet, keyed by object id).

Only good sightings make alerts. The packet is built once, and its bytes are stored in ``alert_log`` (the
outbox, :mod:`seechange.pipeline.outbox`) in the message's transaction; the run loop delivers those bytes
after the commit and then marks the row sent. A crash in between re-sends the stored bytes (same alert id,
same content); a sighting already sent is not sent again (replays and redeliveries emit nothing new).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import BadMessage
from seechange.logformat import add_log_context
from seechange.models import Sighting
from seechange.pipeline.alert import build_alerts
from seechange.pipeline.outbox import alerts_to_send, mark_sent
from seechange.streaming.framing import encode
from seechange.streaming.metrics import ALERT_LATENCY
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import Handler, MessageContext, OutEvent
from seechange.streaming.stages import get_stage
from seechange.timestamps import epoch_ms, now_ms

STAGE = get_stage("alert")


class AlertHandler:
    """The alert handler: one message (``__call__``) or a batch of them (``many``; the run loop's batch path).

    A batch builds the packets of all its sightings together (:func:`build_alerts`: about nine queries for
    the batch instead of about nine per packet) and stages them with one outbox insert.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SchemaRegistry.load()
        self.topic = settings.topic(STAGE.output_topic)

    def __call__(self, session: Session, event: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        return self.many(session, [event], [ctx])[0]

    def many(
        self, session: Session, events: Sequence[dict[str, Any]], ctxs: Sequence[MessageContext]
    ) -> list[list[OutEvent]]:
        ids = [int(e["sighting_id"]) for e in events]
        found = {s.id: s for s in session.scalars(select(Sighting).where(Sighting.id.in_(ids)))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise BadMessage(f"sighting {missing[0]} is not in the database")
        # each good sighting once, for its first message (a replayed one can come twice in a batch)
        first_of: dict[int, int] = {}
        for k, i in enumerate(ids):
            if found[i].is_good:
                first_of.setdefault(i, k)
        sightings = [found[i] for i in first_of]

        def packets(todo: list[Sighting]) -> list[bytes]:
            records = build_alerts(
                session, self.settings.data_dir, todo, history_days=self.settings.alert_history_days
            )
            return [encode(self.registry, STAGE.output_schema, r) for r in records]

        rows = alerts_to_send(session, sightings, topic=self.topic, make_packets=packets)
        out: list[list[OutEvent]] = [[] for _ in events]
        now = now_ms()
        for row in rows:
            assert row.packet is not None
            k = first_of[row.sighting_id]
            if len(events) == 1:
                add_log_context(alert_id=row.alert_id)
            # delivered right after the commit: the exposure-to-alert latency
            ALERT_LATENCY.observe(max(0.0, (now - epoch_ms(events[k]["ingested_at"])) / 1000.0))
            out[k].append(
                OutEvent(
                    STAGE.output_topic,
                    key=str(row.object_id),
                    schema=STAGE.output_schema,
                    value=row.packet,
                    on_delivered=partial(_sent, row.alert_id),
                )
            )
        return out


def make_handler(settings: Settings) -> Handler:
    """The alert handler (a :class:`~seechange.streaming.runloop.BatchHandler`)."""
    return AlertHandler(settings)


def _sent(alert_id: int, session: Session) -> None:
    mark_sent(session, [alert_id])
