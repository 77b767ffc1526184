"""reduce service: exposure-ready -> Image row + files -> image-reduced (keyed by sky tile, see
``seechange.streaming.keys``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import BadMessage, file_errors_as_bad_input
from seechange.improc.reduction import ReduceParams
from seechange.pipeline.parameters import load_parameters
from seechange.pipeline.reduce import ReduceInputError, ReduceResources, image_event, reduce_exposure_row
from seechange.storage import PathOutsideDataRoot
from seechange.streaming.keys import sky_tile_key
from seechange.streaming.runloop import Handler, MessageContext, OutEvent
from seechange.streaming.stages import get_stage
from seechange.timestamps import epoch_ms, now_ms

STAGE = get_stage("reduce")


def make_handler(settings: Settings, params: ReduceParams | None = None) -> Handler:
    """The reduce handler, with its per-process caches of calibration frames and catalogues."""
    resources = ReduceResources(settings.data_dir)
    params = params or load_parameters(settings.params_file).reduce

    def handle(session: Session, event: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        try:
            with file_errors_as_bad_input():
                image, _ = reduce_exposure_row(session, resources, int(event["exposure_id"]), params=params)
        except (ReduceInputError, PathOutsideDataRoot) as exc:
            raise BadMessage(str(exc)) from exc
        record = image_event(image, produced_at_ms=now_ms(), ingested_at_ms=epoch_ms(event["ingested_at"]))
        key = sky_tile_key(image.exposure.healpix)
        return [OutEvent(STAGE.output_topic, key=key, schema=STAGE.output_schema, record=record)]

    return handle
