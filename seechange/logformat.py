"""Log line formats: the default text line, or JSON lines (one object per event) for log collectors.

``settings.log_format = "json"`` (``SEECHANGE_LOG_FORMAT=json``) switches every ``seechange`` process to
:class:`JsonLines`: ``{"ts", "level", "logger", "message"}`` plus ``exc`` (the traceback) and whatever a
call passed in ``extra=`` (e.g. product ids).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["TEXT_FORMAT", "JsonLines", "formatter"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def formatter(kind: str) -> logging.Formatter:
    """The formatter of ``kind`` ("text" or "json")."""
    if kind == "json":
        return JsonLines()
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log_format {kind!r}: expected 'text' or 'json'")
