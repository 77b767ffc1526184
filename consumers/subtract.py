"""subtract service: image-reduced -> reference (built once) + ZOGY -> subtraction-done (keyed by sky tile)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import file_errors_as_bad_input
from seechange.improc.subtraction import SubtractParams
from seechange.pipeline.parameters import load_parameters
from seechange.pipeline.subtract import (
    ReferenceParams,
    ReferencePending,
    subtract_image_row,
    subtraction_event,
)
from seechange.streaming.keys import sky_tile_key
from seechange.streaming.runloop import Handler, InfrastructureError, MessageContext, OutEvent
from seechange.streaming.stages import get_stage
from seechange.timestamps import epoch_ms, now_ms

STAGE = get_stage("subtract")


def make_handler(
    settings: Settings, ref_params: ReferenceParams | None = None, params: SubtractParams | None = None
) -> Handler:
    """The subtract handler."""
    loaded = load_parameters(settings.params_file, threads=settings.threads)
    ref_params = ref_params or loaded.reference
    params = params or loaded.subtract

    def handle(session: Session, event: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        try:
            with file_errors_as_bad_input():
                sub = subtract_image_row(
                    session, settings.data_dir, int(event["image_id"]), ref_params=ref_params, params=params
                )
        except ReferencePending as exc:  # a member is still in reduce: retry with back-off, commit nothing
            raise InfrastructureError(str(exc)) from exc
        if sub is None:
            return []
        record = subtraction_event(
            sub, produced_at_ms=now_ms(), ingested_at_ms=epoch_ms(event["ingested_at"])
        )
        key = sky_tile_key(sub.new_image.exposure.healpix)
        return [OutEvent(STAGE.output_topic, key=key, schema=STAGE.output_schema, record=record)]

    return handle
