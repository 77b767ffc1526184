"""A schema registry held in memory, built from the Avro files in ``schemas/``.

Layout: ``schemas/<name>/<major>.<minor>.avsc`` plus ``schemas/ids.json`` mapping every
``(name, version)`` to its numeric schema id, the id written into the Confluent wire framing. Ids are
unique; the ``alert`` schema's id follows Rubin's rule ``MAJOR * 100 + MINOR``.

No network registry is involved: a client holding only ``schemas/`` reads every message, and a
registry-based client can hold the same ids.

The default location is ``seechange/schemas`` inside the installed package: in a source checkout it is a
link to the repository's top-level ``schemas/``, and a wheel carries the files themselves as package data
(``pyproject.toml``), so an installed package finds them without a checkout.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

log = logging.getLogger(__name__)

DEFAULT_SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
ALERT_SCHEMA_NAME = "alert"
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")

Version = tuple[int, int]


class SchemaError(ValueError):
    """The ``schemas/`` folder is inconsistent (missing id, duplicate id, unparsable file)."""


def parse_version(version: str | Version) -> Version:
    """Turn ``"1.1"`` (or ``(1, 1)``) into ``(1, 1)``.

    Parameters
    ----------
    version : str or tuple of int
        ``"MAJOR.MINOR"`` or a ``(major, minor)`` pair.

    Returns
    -------
    tuple of int
        ``(major, minor)``.
    """
    if isinstance(version, tuple):
        return (int(version[0]), int(version[1]))
    match = _VERSION_RE.match(version)
    if match is None:
        raise SchemaError(f"schema version {version!r} is not MAJOR.MINOR")
    return (int(match.group(1)), int(match.group(2)))


def format_version(version: Version) -> str:
    """``(1, 1)`` -> ``"1.1"``."""
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class SchemaEntry:
    """One schema version: its name, version, numeric id and the fastavro-parsed schema."""

    name: str
    version: Version
    schema_id: int
    parsed: Any = field(repr=False)


class SchemaRegistry:
    """All schema versions of ``schemas/``, looked up by name (latest or a given version) or by id.

    Build it with :meth:`load`; it is read-only afterwards and safe to share between threads.
    """

    def __init__(self, entries: list[SchemaEntry], root: Path) -> None:
        self.root = root
        self._by_id: dict[int, SchemaEntry] = {}
        self._by_name: dict[str, dict[Version, SchemaEntry]] = {}
        for entry in entries:
            if entry.schema_id in self._by_id:
                other = self._by_id[entry.schema_id]
                raise SchemaError(
                    f"schema id {entry.schema_id} used twice: {other.name} {format_version(other.version)}"
                    f" and {entry.name} {format_version(entry.version)}"
                )
            self._by_id[entry.schema_id] = entry
            self._by_name.setdefault(entry.name, {})[entry.version] = entry

    @classmethod
    def load(cls, schemas_dir: Path = DEFAULT_SCHEMAS_DIR) -> SchemaRegistry:
        """Parse every ``<name>/<major>.<minor>.avsc`` under ``schemas_dir`` and its ``ids.json``.

        Parameters
        ----------
        schemas_dir : pathlib.Path
            The schemas folder; defaults to ``<repository root>/schemas``.

        Returns
        -------
        SchemaRegistry

        Raises
        ------
        SchemaError
            When a file does not parse, a version has no id (or an id no file), ids repeat, or the alert
            schema's id breaks the ``MAJOR*100+MINOR`` rule.
        """
        schemas_dir = Path(schemas_dir)
        ids_path = schemas_dir / "ids.json"
        try:
            raw_ids = json.loads(ids_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaError(f"cannot read {ids_path}: {exc}") from exc
        ids: dict[tuple[str, Version], int] = {}
        for name, versions in raw_ids.items():
            if name.startswith("_"):
                continue  # "_doc" and similar comments
            for version, schema_id in versions.items():
                ids[(name, parse_version(version))] = int(schema_id)

        entries: list[SchemaEntry] = []
        for path in sorted(schemas_dir.glob("*/*.avsc")):
            name = path.parent.name
            version = parse_version(path.stem)
            key = (name, version)
            if key not in ids:
                raise SchemaError(f"{path} has no id in {ids_path}")
            try:
                # A fresh named-type namespace per file: two versions share record names.
                parsed = fastavro.parse_schema(json.loads(path.read_text()), named_schemas={})
            except Exception as exc:  # fastavro raises several types for a bad schema
                raise SchemaError(f"cannot parse {path}: {exc}") from exc
            schema_id = ids.pop(key)
            if name == ALERT_SCHEMA_NAME and schema_id != version[0] * 100 + version[1]:
                raise SchemaError(
                    f"alert {format_version(version)} must have id MAJOR*100+MINOR, not {schema_id}"
                )
            entries.append(SchemaEntry(name, version, schema_id, parsed))
        if ids:
            missing = ", ".join(f"{n} {format_version(v)}" for n, v in sorted(ids))
            raise SchemaError(f"{ids_path} names schemas with no .avsc file: {missing}")
        registry = cls(entries, schemas_dir)
        log.debug("loaded %d schema versions from %s", len(entries), schemas_dir)
        return registry

    def names(self) -> list[str]:
        """Sorted schema names."""
        return sorted(self._by_name)

    def entries(self) -> list[SchemaEntry]:
        """Every schema version, sorted by name then version."""
        return [self._by_name[n][v] for n in self.names() for v in sorted(self._by_name[n])]

    def get(self, name: str, version: str | Version | None = None) -> SchemaEntry:
        """The entry of ``name`` at ``version`` (``None``: the latest).

        Raises
        ------
        KeyError
            When the name or version is unknown.
        """
        versions = self._by_name.get(name)
        if not versions:
            raise KeyError(f"unknown schema {name!r}")
        if version is None:
            return versions[max(versions)]
        wanted = parse_version(version)
        if wanted not in versions:
            raise KeyError(f"schema {name!r} has no version {format_version(wanted)}")
        return versions[wanted]

    def entry_by_id(self, schema_id: int) -> SchemaEntry | None:
        """The entry of a schema id, or ``None``."""
        return self._by_id.get(schema_id)
