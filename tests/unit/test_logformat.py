"""JSON-lines log records: one object per line with the standard fields, extras, the traceback and the ids of
the log context."""

from __future__ import annotations

import io
import json
import logging

import pytest

from seechange.logformat import (
    ContextFilter,
    JsonLines,
    add_log_context,
    current_log_context,
    formatter,
    ids_of,
    log_context,
)


def test_json_lines_carry_message_extras_and_traceback() -> None:
    try:
        raise ValueError("bad pixel")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "seechange.x", logging.ERROR, __file__, 1, "image %d failed", (7,), sys.exc_info()
        )
    record.image_id = 7
    line = JsonLines().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert (out["level"], out["logger"], out["message"], out["image_id"]) == (
        "ERROR",
        "seechange.x",
        "image 7 failed",
        7,
    )
    assert "ValueError: bad pixel" in out["exc"] and out["ts"].endswith("+00:00")


def test_unknown_format_is_refused() -> None:
    assert isinstance(formatter("text"), logging.Formatter)
    with pytest.raises(ValueError, match="expected 'text' or 'json'"):
        formatter("xml")


def _json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_context_puts_the_ids_on_every_line_until_the_block_ends() -> None:
    logger, stream = _json_logger("seechange.test_context")
    logger.info("before")
    with log_context(service="reduce", topic="exposure-ready", partition=2, offset=17, exposure_id=5):
        logger.info("handling")
        with log_context(image_id=None):  # None is left out
            add_log_context(image_id=41)
            logger.info("made an image")
            logger.info("override", extra={"exposure_id": 6})  # a call's own extra wins
        logger.info("image block ended")
        assert current_log_context()["exposure_id"] == 5
    logger.info("after")
    before, handling, made, override, ended, after = _lines(stream)
    ids = {"service": "reduce", "topic": "exposure-ready", "partition": 2, "offset": 17, "exposure_id": 5}
    assert "exposure_id" not in before and "exposure_id" not in after and "service" not in after
    assert {k: handling[k] for k in ids} == ids and "image_id" not in handling
    assert made["image_id"] == 41 and made["exposure_id"] == 5
    assert override["exposure_id"] == 6 and override["image_id"] == 41
    assert "image_id" not in ended and ended["exposure_id"] == 5


def test_ids_of_event_records() -> None:
    records = [
        {"sighting_id": 3, "object_id": 9, "subtraction_id": 2, "mjd": 1.0},
        {"sighting_id": 1, "object_id": 9, "subtraction_id": 2, "mjd": 1.0},
    ]
    assert ids_of(records) == {"sighting_id": [1, 3], "object_id": 9, "subtraction_id": 2}
    assert ids_of([]) == {}
