"""Schemas, registry and Confluent framing: a round trip for every schema version, evolution, errors."""

from __future__ import annotations

import json
import shutil
import struct
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from seechange.streaming.framing import DecodeError, EncodeError, decode, encode
from seechange.streaming.registry import DEFAULT_SCHEMAS_DIR, SchemaError, SchemaRegistry
from seechange.timestamps import epoch_ms

SCHEMA_FILES = sorted(DEFAULT_SCHEMAS_DIR.glob("*/*.avsc"))
IDS = json.loads((DEFAULT_SCHEMAS_DIR / "ids.json").read_text())


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


class RecordMaker:
    """Fills every field of a JSON Avro schema with a typed, distinct value.

    ``nulls=True`` picks ``null`` for every optional union, ``False`` the other branch. Floats are
    multiples of 1/4 so that single-precision ``float`` fields round-trip exactly.
    """

    def __init__(self, nulls: bool) -> None:
        self.nulls = nulls
        self.counter = count(1)
        self.named: dict[str, Any] = {}

    def make(self, schema: Any, namespace: str = "") -> Any:
        n = next(self.counter)
        if isinstance(schema, list):  # union
            branches = [b for b in schema if b != "null"]
            if self.nulls and "null" in schema:
                return None
            return self.make(branches[0], namespace)
        if isinstance(schema, str):
            if schema in self.named:
                return self.make(self.named[schema], namespace)
            return self._primitive(schema, n)
        kind = schema["type"]
        if schema.get("logicalType") == "timestamp-millis":
            return datetime(2026, 3, 1, tzinfo=UTC) + timedelta(milliseconds=1000 * n + n)
        if kind == "record":
            ns = schema.get("namespace", namespace)
            self.named[schema["name"]] = schema
            self.named[f"{ns}.{schema['name']}"] = schema
            return {f["name"]: self.make(f["type"], ns) for f in schema["fields"]}
        if kind == "array":
            return [self.make(schema["items"], namespace) for _ in range(3)]
        if kind == "map":
            return {f"k{i}": self.make(schema["values"], namespace) for i in range(2)}
        if kind == "enum":
            return schema["symbols"][n % len(schema["symbols"])]
        return self.make(kind, namespace)

    @staticmethod
    def _primitive(kind: str, n: int) -> Any:
        values: dict[str, Any] = {
            "long": 10_000_000_000 + n,
            "int": -n,
            "double": 60000.123456789 + n,
            "float": n + 0.25,
            "string": f"value-{n}",
            "boolean": n % 2 == 0,
            "bytes": bytes(range(n % 200, n % 200 + 40)),
        }
        return values[kind]


def _version_of(path: Path) -> str:
    return path.stem


@pytest.mark.parametrize("nulls", [False, True], ids=["filled", "nulls"])
@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_round_trip_every_version(registry: SchemaRegistry, path: Path, nulls: bool) -> None:
    name, version = path.parent.name, _version_of(path)
    record = RecordMaker(nulls).make(json.loads(path.read_text()))
    data = encode(registry, name, record, version=version)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == IDS[name][version]
    got_name, got = decode(registry, data, expect=name)
    assert got_name == name
    latest_fields = {f["name"] for f in registry.get(name).parsed["fields"]}
    # Read with the latest version: fields added since the writer's version carry their defaults (None).
    expected = {k: record.get(k) for k in latest_fields}
    if "schemaVersion" in expected:  # stamped by encode with the version actually written
        expected["schemaVersion"] = version
    assert got == expected


def test_schema_version_is_the_version_written(registry: SchemaRegistry) -> None:
    path = DEFAULT_SCHEMAS_DIR / "alert" / "1.0.avsc"
    record = RecordMaker(nulls=True).make(json.loads(path.read_text()))
    record["schemaVersion"] = "9.9"  # whatever the builder said, the packet names its real schema
    _, got = decode(registry, encode(registry, "alert", record, version="1.0"), expect="alert")
    assert got["schemaVersion"] == "1.0"
    assert record["schemaVersion"] == "9.9"  # the caller's record is not modified


def test_filled_record_really_fills_optional_fields() -> None:
    record = RecordMaker(nulls=False).make(json.loads((DEFAULT_SCHEMAS_DIR / "alert/1.0.avsc").read_text()))
    assert len(record["sighting"]["apFlux"]) == 3 and record["sighting"]["raErr"] is not None
    assert isinstance(record["cutoutDifference"], bytes)
    assert len(record["prvSightings"]) == 3 and record["prvSightings"][0]["mag"] is not None


def test_ids_file_covers_every_schema_and_ids_are_unique() -> None:
    pairs = {(p.parent.name, p.stem) for p in SCHEMA_FILES}
    listed = {(n, v) for n, vs in IDS.items() if not n.startswith("_") for v in vs}
    assert pairs == listed
    ids = [i for n, vs in IDS.items() if not n.startswith("_") for i in vs.values()]
    assert len(ids) == len(set(ids))


def test_alert_schema_id_follows_rubin_rule(registry: SchemaRegistry) -> None:
    entry = registry.get("alert")  # the latest: 1.1 (forced photometry and non-detections)
    assert entry.schema_id == 101
    assert entry.parsed["name"] == "seechange.alert"
    for schema_id, version in ((100, (1, 0)), (101, (1, 1))):
        by_id = registry.entry_by_id(schema_id)
        assert by_id is not None and (by_id.name, by_id.version) == ("alert", version)


def _alert_record(version: str, nulls: bool) -> dict[str, Any]:
    return RecordMaker(nulls=nulls).make(
        json.loads((DEFAULT_SCHEMAS_DIR / f"alert/{version}.avsc").read_text())
    )


@pytest.mark.parametrize("nulls", [False, True], ids=["filled", "nulls"])
def test_alert_1_0_packet_decodes_with_the_1_1_reader(registry: SchemaRegistry, nulls: bool) -> None:
    record = _alert_record("1.0", nulls)
    data = encode(registry, "alert", record, version="1.0")
    assert struct.unpack(">I", data[1:5])[0] == 100
    _, got = decode(registry, data, expect="alert")  # reader: the latest, 1.1
    assert got["schemaVersion"] == "1.0"
    assert got["prvForcedPhotometry"] is None and got["prvNonDetections"] is None
    assert {k: v for k, v in got.items() if k not in ("prvForcedPhotometry", "prvNonDetections")} == {
        **record,
        "schemaVersion": "1.0",
    }


@pytest.mark.parametrize("nulls", [False, True], ids=["filled", "nulls"])
def test_alert_1_1_packet_decodes_with_a_1_0_reader(registry: SchemaRegistry, nulls: bool) -> None:
    import io

    import fastavro

    record = _alert_record("1.1", nulls)
    if not nulls:
        assert len(record["prvForcedPhotometry"]) == 3 and len(record["prvNonDetections"]) == 3
    data = encode(registry, "alert", record)  # the latest
    assert struct.unpack(">I", data[1:5])[0] == 101
    writer = registry.entry_by_id(101)
    old = registry.get("alert", "1.0")
    assert writer is not None
    # an old client resolving the writer's schema with its own (1.0) reader schema
    got = fastavro.schemaless_reader(io.BytesIO(data[5:]), writer.parsed, old.parsed)
    expected = {k: v for k, v in record.items() if k not in ("prvForcedPhotometry", "prvNonDetections")}
    assert got == {**expected, "schemaVersion": "1.1"}
    # and one that ignores the id and reads the body as 1.0: the new fields come after every 1.0 field
    assert fastavro.schemaless_reader(io.BytesIO(data[5:]), old.parsed, None) == got
    _, new = decode(registry, data, expect="alert")
    assert new["prvForcedPhotometry"] == record["prvForcedPhotometry"]
    assert new["prvNonDetections"] == record["prvNonDetections"]


def test_exposure_ready_latest_is_1_1(registry: SchemaRegistry) -> None:
    entry = registry.get("exposure_ready")
    assert entry.schema_id == 1011
    old = registry.entry_by_id(1010)
    assert old is not None and (old.name, old.version) == ("exposure_ready", (1, 0))
    assert [f["name"] for f in entry.parsed["fields"]][-1] == "origin"


def _exposure_record() -> dict[str, Any]:
    return {
        "exposure_id": 42,
        "instrument": "DECam",
        "section_id": "N6",
        "field": "COSMOS",
        "band": "r",
        "mjd": 60400.25,
        "raw_path": "raw/COSMOS/c4d_0001_N6.fits",
        "provenance_id": "abcdef0123456789",
        "produced_at": 1_772_000_000_123,
        "ingested_at": 1_772_000_000_000,
    }


def test_old_writer_new_reader(registry: SchemaRegistry) -> None:
    data = encode(registry, "exposure_ready", _exposure_record(), version="1.0")
    assert struct.unpack(">I", data[1:5])[0] == 1010
    name, got = decode(registry, data)
    assert name == "exposure_ready"
    assert got["origin"] is None
    assert got["exposure_id"] == 42 and got["raw_path"] == "raw/COSMOS/c4d_0001_N6.fits"
    assert epoch_ms(got["produced_at"]) == 1_772_000_000_123
    assert got["ingested_at"] == datetime(2026, 2, 25, 6, 13, 20, tzinfo=UTC)


def test_new_writer_carries_new_field(registry: SchemaRegistry) -> None:
    data = encode(registry, "exposure_ready", {**_exposure_record(), "origin": "sim"})
    assert struct.unpack(">I", data[1:5])[0] == 1011
    assert decode(registry, data)[1]["origin"] == "sim"


@pytest.fixture()
def good_message(registry: SchemaRegistry) -> bytes:
    return encode(registry, "exposure_ready", _exposure_record())


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda d: b"", "too short"),
        (lambda d: d[:4], "too short"),
        (lambda d: b"\x01" + d[1:], "wrong magic byte 0x01"),
        (lambda d: b"garbage", "wrong magic byte 0x67"),
        (lambda d: b"\x00" + struct.pack(">I", 999_999) + d[5:], "unknown schema id 999999"),
        (lambda d: d[:-5], "cannot decode exposure_ready body"),
        (lambda d: d + b"\x00\x01", "2 trailing bytes"),
    ],
    ids=["empty", "four-bytes", "magic", "garbage", "unknown-id", "truncated-body", "trailing-bytes"],
)
def test_decode_errors(registry: SchemaRegistry, good_message: bytes, mangle: Any, expected: str) -> None:
    with pytest.raises(DecodeError, match=expected) as info:
        decode(registry, mangle(good_message))
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_decode_wrong_expected_name(registry: SchemaRegistry, good_message: bytes) -> None:
    with pytest.raises(DecodeError, match="schema id 1011 is 'exposure_ready', expected 'image_reduced'"):
        decode(registry, good_message, expect="image_reduced")


def test_encode_rejects_bad_record(registry: SchemaRegistry) -> None:
    with pytest.raises(EncodeError, match="mjd"):
        encode(registry, "exposure_ready", {**_exposure_record(), "mjd": "yesterday"})
    with pytest.raises(KeyError, match="no version 9.0"):
        encode(registry, "exposure_ready", _exposure_record(), version="9.0")


def _walk_fields(schema: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += _walk_fields(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for f in schema["fields"]:
                found.append(f)
                found += _walk_fields(f["type"])
        elif schema.get("type") == "array":
            found += _walk_fields(schema["items"])
    return found


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_every_field_documented_and_optional_fields_default_null(path: Path) -> None:
    fields = _walk_fields(json.loads(path.read_text()))
    assert fields
    for f in fields:
        assert f.get("doc"), f"{path.name}: field {f['name']} has no doc"
        if isinstance(f["type"], list):
            assert f["type"][0] == "null" and "default" in f and f["default"] is None, f["name"]


def test_registry_rejects_duplicate_ids(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_SCHEMAS_DIR, tmp_path / "schemas")
    ids = json.loads((tmp_path / "schemas/ids.json").read_text())
    ids["image_reduced"]["1.0"] = 1010
    (tmp_path / "schemas/ids.json").write_text(json.dumps(ids))
    with pytest.raises(SchemaError, match="schema id 1010 used twice"):
        SchemaRegistry.load(tmp_path / "schemas")


def test_registry_rejects_schema_without_id(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_SCHEMAS_DIR, tmp_path / "schemas")
    shutil.copy(tmp_path / "schemas/image_reduced/1.0.avsc", tmp_path / "schemas/image_reduced/1.1.avsc")
    with pytest.raises(SchemaError, match="has no id"):
        SchemaRegistry.load(tmp_path / "schemas")
