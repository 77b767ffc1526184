"""Confluent wire framing of Avro records: ``0x00``, a 4-byte big-endian schema id, the Avro binary body.

The id names the writer schema (see :mod:`seechange.streaming.registry`); a reader resolves it and reads
the body with the *latest* version of the same name, so new readers read old messages (Avro schema
resolution: fields added since carry their defaults).

Values of ``timestamp-millis`` fields (``produced_at``, ``ingested_at``) are accepted by :func:`encode` as
Unix epoch milliseconds (``int``) or as aware ``datetime``; :func:`decode` returns them as aware UTC
``datetime`` objects (fastavro's logical-type reading). :func:`seechange.timestamps.epoch_ms` turns either back into an int.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import Any

import fastavro
from fastavro.validation import validate

from seechange.errors import BadInput
from seechange.streaming.registry import SchemaRegistry, format_version

log = logging.getLogger(__name__)

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5 bytes
#: Top-level field that names the packet's own schema version (filled by :func:`encode`).
SCHEMA_VERSION_FIELD = "schemaVersion"


class DecodeError(BadInput, ValueError):
    """A message cannot be decoded; the message (``str(exc)``) is one line."""


class EncodeError(ValueError):
    """A record does not match the schema it is to be written with."""


def encode(registry: SchemaRegistry, name: str, record: dict[str, Any], version: str | None = None) -> bytes:
    """Frame ``record`` with the schema ``name`` at ``version``.

    Parameters
    ----------
    registry : SchemaRegistry
        Where the schema and its id come from.
    name : str
        Schema name, e.g. ``"exposure_ready"``.
    record : dict
        The record; it is validated against the writer schema first. When the schema has a top-level
        ``schemaVersion`` field (the alert packet), it is set to the version actually written, whatever the
        record said (the caller's dict is not modified).
    version : str, optional
        ``"MAJOR.MINOR"`` of the writer schema; default the latest.

    Returns
    -------
    bytes
        ``b"\\x00" + id (4 bytes, big-endian) + Avro binary body``.

    Raises
    ------
    KeyError
        Unknown schema name or version.
    EncodeError
        The record does not fit the schema.
    """
    entry = registry.get(name, version)
    if any(f.get("name") == SCHEMA_VERSION_FIELD for f in entry.parsed.get("fields", ())):
        record = {**record, SCHEMA_VERSION_FIELD: format_version(entry.version)}
    # first without raising: with raise_errors, fastavro raises (and formats) an error for every union branch
    # a value does not take, e.g. "null" of each optional field set (0.8 ms of an alert packet's 1 ms)
    if not validate(record, entry.parsed, raise_errors=False):
        try:
            validate(record, entry.parsed, raise_errors=True)
        except Exception as exc:  # fastavro's ValidationError lists every bad field
            raise EncodeError(f"record does not fit {name} {version or 'latest'}: {one_line(exc)}") from exc
        raise EncodeError(f"record does not fit {name} {version or 'latest'}")
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC_BYTE, entry.schema_id))
    fastavro.schemaless_writer(buf, entry.parsed, record)
    return buf.getvalue()


def peek_schema_id(data: bytes) -> int:
    """The schema id of a framed message, without decoding the body.

    Raises
    ------
    DecodeError
        Too short or wrong magic byte.
    """
    if data is None or len(data) < HEADER_SIZE:
        size = 0 if data is None else len(data)
        raise DecodeError(
            f"message too short for Confluent framing: {size} bytes, need at least {HEADER_SIZE}"
        )
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise DecodeError(f"wrong magic byte 0x{magic & 0xFF:02x}, expected 0x00 (not Confluent-framed Avro)")
    return int(schema_id)


def decode(registry: SchemaRegistry, data: bytes, expect: str | None = None) -> tuple[str, dict[str, Any]]:
    """Read a framed message: writer schema by id, reader schema = latest version of that name.

    Parameters
    ----------
    registry : SchemaRegistry
        Where the schema ids are resolved.
    data : bytes
        The whole message value.
    expect : str, optional
        The schema name the caller accepts; another name is an error.

    Returns
    -------
    tuple of (str, dict)
        The schema name and the record.

    Raises
    ------
    DecodeError
        Too short, wrong magic byte, unknown schema id, wrong schema name, or a body that does not decode
        (including trailing bytes after the record).
    """
    schema_id = peek_schema_id(data)
    entry = registry.entry_by_id(schema_id)
    if entry is None:
        raise DecodeError(f"unknown schema id {schema_id}")
    if expect is not None and entry.name != expect:
        raise DecodeError(f"schema id {schema_id} is {entry.name!r}, expected {expect!r}")
    reader = registry.get(entry.name)
    buf = io.BytesIO(data)
    buf.seek(HEADER_SIZE)
    try:
        record = fastavro.schemaless_reader(buf, entry.parsed, reader.parsed)
    except Exception as exc:  # EOFError, UnicodeDecodeError, ValueError, IndexError, ... from a bad body
        raise DecodeError(
            f"cannot decode {entry.name} body (schema id {schema_id}): {one_line(exc)}"
        ) from exc
    rest = len(data) - buf.tell()
    if rest:
        raise DecodeError(f"{rest} trailing bytes after the {entry.name} record (schema id {schema_id})")
    if not isinstance(record, dict):
        raise DecodeError(f"{entry.name} body is not a record (schema id {schema_id})")
    return entry.name, record


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (its class name when empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
