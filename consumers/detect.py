"""detect service: subtraction-done -> Sightings, Photometry, Cutouts, Objects -> sighting-found (per sighting,
keyed by object id)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import file_errors_as_bad_input
from seechange.improc.detection import DetectParams
from seechange.pipeline.detect import detect_on_subtraction, sighting_event
from seechange.pipeline.parameters import load_parameters
from seechange.streaming.runloop import Handler, MessageContext, OutEvent
from seechange.streaming.stages import get_stage
from seechange.timestamps import epoch_ms, now_ms

STAGE = get_stage("detect")


def make_handler(settings: Settings, params: DetectParams | None = None) -> Handler:
    """The detect handler."""
    params = params or load_parameters(settings.params_file).detect

    def handle(session: Session, event: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        with file_errors_as_bad_input():
            sightings = detect_on_subtraction(
                session,
                settings.data_dir,
                int(event["subtraction_id"]),
                params=params,
                radius_arcsec=settings.association_radius_arcsec,
                threads=settings.threads,
            )
        produced, ingested = now_ms(), epoch_ms(event["ingested_at"])
        return [
            OutEvent(
                STAGE.output_topic,
                key=str(s.object_id),
                schema=STAGE.output_schema,
                record=sighting_event(s, produced_at_ms=produced, ingested_at_ms=ingested),
            )
            for s in sightings
        ]

    return handle
