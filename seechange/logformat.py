"""Log line formats: the default text line, or JSON lines (one object per event) for log collectors; and
the log context that puts the product ids on every line.

``settings.log_format = "json"`` (``SEECHANGE_LOG_FORMAT=json``) switches every ``seechange`` process to
:class:`JsonLines`: ``{"ts", "level", "logger", "message"}`` plus ``exc`` (the traceback), the ids of the
current log context, and whatever a call passed in ``extra=``.

The log context: :func:`log_context` (a context manager) and :func:`add_log_context` attach ids to every
record logged meanwhile in this thread (or task), by any logger, through :class:`ContextFilter` on the
handler. The run loop opens one per message (service, topic, partition, offset and the input event's
``*_id`` fields), adds the ids of the events it produces, and the handlers add what they made (e.g. the
alert id); the ingestor opens one per file and CCD. So no call needs ``extra=`` for ids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

__all__ = [
    "TEXT_FORMAT",
    "ContextFilter",
    "JsonLines",
    "add_log_context",
    "current_log_context",
    "formatter",
    "ids_of",
    "log_context",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("seechange_log_context", default=_EMPTY)


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Attach ``ids`` (None values left out) to every record logged inside the block; nests."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def add_log_context(**ids: Any) -> None:
    """Add ``ids`` to the current context until the enclosing :func:`log_context` block ends."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})


def current_log_context() -> dict[str, Any]:
    """The ids attached to records logged now."""
    return dict(_CONTEXT.get())


def ids_of(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``*_id`` fields of event records: one value, or the sorted distinct values when they differ."""
    values: dict[str, set[Any]] = {}
    for record in records:
        for k, v in record.items():
            if k.endswith("_id") and v is not None:
                values.setdefault(k, set()).add(v)
    return {k: next(iter(v)) if len(v) == 1 else sorted(v) for k, v in values.items()}


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record (a field the call set itself is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in _CONTEXT.get().items():
            if k not in record.__dict__:
                setattr(record, k, v)
        return True


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
