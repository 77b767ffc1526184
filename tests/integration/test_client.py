"""The light alert client and ``seechange subscribe`` against the real broker: where to start and stop,
every filter, saved packets that plain fastavro opens, undecodable packets reported and skipped, an older
minor schema version read by a newer reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from astropy.io import fits
from click.testing import CliRunner
from confluent_kafka import Producer

from seechange.client import AlertFilter, Connection, Skipped, stream_alerts
from seechange.commands.stream import subscribe_cmd
from seechange.config import PROJECT_ROOT, Settings
from seechange.streaming.framing import decode, encode
from seechange.streaming.registry import SchemaRegistry, format_version
from seechange.streaming.topics import delete_topics, ensure_topics
from tests.integration._alerts import T0_MS, TABLE, make_alert


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture(scope="module")
def night(test_settings: Settings, registry: SchemaRegistry) -> Iterator[tuple[Settings, str, Skipped]]:
    """An alerts topic of its own holding the six alerts (one a minute) and one undecodable message."""
    settings = test_settings.model_copy(
        update={"topic_prefix": f"{test_settings.topic_prefix}cl{uuid.uuid4().hex[:6]}-"}
    )
    topic = settings.topic("alerts")
    ensure_topics(settings.kafka_bootstrap, [topic], 2)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in TABLE:
        producer.produce(
            topic, key=str(i), value=encode(registry, "alert", make_alert(i)), timestamp=T0_MS + i * 60_000
        )
    where: list[tuple[int, int]] = []
    producer.produce(
        topic,
        key="junk",
        value=b"\x00\x00\x00\x00\x64not an avro body",
        timestamp=T0_MS + 30_000,
        on_delivery=lambda err, msg: where.append((msg.partition(), msg.offset())),
    )
    assert producer.flush(10) == 0
    bad = Skipped(topic, where[0][0], where[0][1], "")
    try:
        yield settings, topic, bad
    finally:
        delete_topics(settings.kafka_bootstrap, [topic])


def _ids(conn: Connection, topic: str, registry: SchemaRegistry, **kw: Any) -> list[int]:
    return sorted(a.alert_id for a in stream_alerts(conn, topic, registry=registry, idle_timeout=20, **kw))


def test_client_imports_without_the_pipeline() -> None:
    code = (
        "import sys, seechange.client; "
        "print([m for m in ('numpy', 'astropy', 'sqlalchemy', 'pydantic') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_start_and_stop(night: tuple[Settings, str, Skipped], registry: SchemaRegistry) -> None:
    settings, topic, bad = night
    conn = Connection(settings.kafka_bootstrap)
    skipped: list[Skipped] = []
    everything = list(
        stream_alerts(
            conn, topic, start="beginning", stop_at_end=True, registry=registry, on_skip=skipped.append
        )
    )
    assert sorted(a.alert_id for a in everything) == [1, 2, 3, 4, 5, 6]
    assert all(a.raw == encode(registry, "alert", make_alert(a.alert_id)) for a in everything)
    assert [(s.partition, s.offset) for s in skipped] == [(bad.partition, bad.offset)]
    assert "cannot decode alert body" in skipped[0].reason

    # from a time: the first message stamped at or after it (the junk, at +30 s, is before +3 min)
    assert _ids(conn, topic, registry, start=(T0_MS + 3 * 60_000) / 1000, stop_at_end=True) == [3, 4, 5, 6]
    # until a time: nothing stamped later
    assert _ids(conn, topic, registry, start="beginning", until=(T0_MS + 2 * 60_000) / 1000) == [1, 2]
    assert len(_ids(conn, topic, registry, start="beginning", max_alerts=2)) == 2

    # from now: exactly what is produced after the subscriber is positioned
    ready = threading.Event()
    got: list[int] = []

    def listen() -> None:
        for a in stream_alerts(
            conn,
            topic,
            start="now",
            max_alerts=2,
            idle_timeout=30,
            registry=registry,
            on_ready=lambda _: ready.set(),
        ):
            got.append(a.alert_id)

    thread = threading.Thread(target=listen)
    thread.start()
    assert ready.wait(20)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in (2, 6):  # the same packets again, now
        producer.produce(topic, key=str(i), value=encode(registry, "alert", make_alert(i)))
    assert producer.flush(10) == 0
    thread.join(40)
    assert sorted(got) == [2, 6]

    # a group's committed offsets: a second run of the group resumes after the first
    group = f"{settings.topic_prefix}grp"
    first = _ids(conn, topic, registry, start="committed", group=group, max_alerts=3)
    rest = _ids(conn, topic, registry, start="committed", group=group, stop_at_end=True)
    assert len(first) == 3 and sorted(first + rest) == [1, 2, 2, 3, 4, 5, 6, 6]


FILTERS: list[tuple[dict[str, Any], list[int]]] = [
    ({"max_mag": 20.0}, [1, 2, 6]),
    ({"min_mag": 20.0, "max_mag": 21.0}, [3, 6]),
    ({"min_snr": 10.0}, [1, 2, 6]),
    ({"max_snr": 6.0}, [4, 5]),  # |snr|
    ({"bands": ("g", "z")}, [1, 5, 6]),
    ({"cone": (150.0, 2.0, 2.0)}, [1, 2, 5]),
    ({"cone": (150.0, 2.0, 4.0)}, [1, 2, 3, 5]),
    ({"new_only": True}, [1, 3, 6]),
    ({"good_only": True}, [1, 2, 4, 5, 6]),
    ({"positive_only": True}, [1, 2, 3, 5, 6]),
    ({"min_detections": 3}, [2, 5]),
    ({"object_name": "SC26ad"}, [4]),
    ({"bands": ("r",), "good_only": True}, [2]),
]


def test_each_filter_selects_exactly_the_matching_alerts(
    night: tuple[Settings, str, Skipped], registry: SchemaRegistry
) -> None:
    settings, topic, _ = night
    records = [
        a.record
        for a in stream_alerts(
            Connection(settings.kafka_bootstrap),
            topic,
            start="beginning",
            stop_at_end=True,
            registry=registry,
        )
    ]
    records = list({r["alertId"]: r for r in records}.values())  # the "from now" test sent two again
    assert sorted(r["alertId"] for r in records) == sorted(TABLE)
    for criteria, expected in FILTERS:
        keep = AlertFilter(**criteria)
        assert sorted(r["alertId"] for r in records if keep(r)) == expected, criteria


def test_subscribe_command_filters_prints_and_saves(
    night: tuple[Settings, str, Skipped], registry: SchemaRegistry, tmp_path: Path
) -> None:
    settings, _topic, bad = night
    args = [
        "--bootstrap",
        settings.kafka_bootstrap,
        "--from",
        "beginning",
        "--until",
        str((T0_MS + 10 * 60_000) / 1000),
    ]
    result = CliRunner().invoke(
        subscribe_cmd,
        [
            *args,
            "--format",
            "json",
            "--cone",
            "150",
            "2",
            "2",
            "--good-only",
            "--save",
            str(tmp_path),
            "--cutouts",
        ],
        obj=settings,
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert sorted(x["alertId"] for x in lines) == [1, 2, 5]
    assert f"skipped {bad.topic}[{bad.partition}]@{bad.offset}" in result.stderr
    assert "3 alert(s), 1 undecodable skipped" in result.stderr
    for i in (1, 2, 5):
        with open(tmp_path / f"{i}.avro", "rb") as fh:
            reader = fastavro.reader(fh)  # plain fastavro, the schema comes from the file
            records = list(reader)
        assert reader.writer_schema["name"] == "seechange.alert"
        assert records == [decode(registry, encode(registry, "alert", make_alert(i)))[1]]  # the packet
        assert fits.getdata(tmp_path / f"{i}_science.fits")[2, 2] == float(i)
        assert fits.getdata(tmp_path / f"{i}_difference.fits")[2, 2] == -float(i)
        assert not (tmp_path / f"{i}_template.fits").exists()
    assert sorted(p.name for p in tmp_path.glob("*.avro")) == ["1.avro", "2.avro", "5.avro"]

    line = CliRunner().invoke(subscribe_cmd, [*args, "--band", "i"], obj=settings)
    assert line.exit_code == 0 and len(line.stdout.splitlines()) == 1
    assert line.stdout.split()[:2] == ["4", "SC26ad"]


def test_an_older_minor_version_decodes(
    test_settings: Settings, tmp_path: Path, registry: SchemaRegistry
) -> None:
    """A reader knowing a newer minor version (one optional field more) reads packets of the older one."""
    schemas = tmp_path / "schemas"
    shutil.copytree(PROJECT_ROOT / "schemas", schemas)
    old = registry.get("alert")
    major, minor = old.version
    newer = json.loads((schemas / "alert" / f"{format_version(old.version)}.avsc").read_text())
    newer["fields"].append({"name": "testNote", "type": ["null", "string"], "default": None})
    (schemas / "alert" / f"{major}.{minor + 1}.avsc").write_text(json.dumps(newer))
    ids = json.loads((schemas / "ids.json").read_text())
    ids["alert"][f"{major}.{minor + 1}"] = major * 100 + minor + 1
    (schemas / "ids.json").write_text(json.dumps(ids))
    new_registry = SchemaRegistry.load(schemas)

    topic = f"{test_settings.topic_prefix}old{uuid.uuid4().hex[:6]}"
    ensure_topics(test_settings.kafka_bootstrap, [topic], 1)
    try:
        producer = Producer({"bootstrap.servers": test_settings.kafka_bootstrap})
        producer.produce(
            topic, value=encode(registry, "alert", make_alert(1))
        )  # written with the older version
        assert producer.flush(10) == 0
        (alert,) = stream_alerts(
            Connection(test_settings.kafka_bootstrap),
            topic,
            start="beginning",
            stop_at_end=True,
            registry=new_registry,
        )
    finally:
        delete_topics(test_settings.kafka_bootstrap, [topic])
    assert alert.writer_version == format_version(old.version)
    assert alert.record["testNote"] is None and alert.record["schemaVersion"] == format_version(old.version)
    expected = decode(registry, encode(registry, "alert", make_alert(1)))[1]
    assert {k: v for k, v in alert.record.items() if k != "testNote"} == expected
