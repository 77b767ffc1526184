"""JSON-lines log records: one object per line with the standard fields, extras and the traceback."""

from __future__ import annotations

import json
import logging

import pytest

from seechange.logformat import JsonLines, formatter


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
