"""The alert archive against the real broker: a night written into container files with an index reads
back alert for alert (ids, and the bytes of the re-encoded records equal the packets' bodies); the service
mode follows the topic, resumes with its group and archives nothing twice."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import fastavro
import pytest
from astropy.time import Time
from click.testing import CliRunner
from confluent_kafka import Producer

from seechange.client import Connection
from seechange.commands.alerts import archive_cmd
from seechange.config import Settings
from seechange.streaming.archive import archive_night, follow, night_of_mjd, read_archive
from seechange.streaming.framing import encode
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.topics import delete_topics, ensure_topics
from tests.integration._alerts import make_alert

NIGHT_1 = [60400.2 + i / 100 for i in range(6)]  # ids 1..6: the evening of 2024-03-30 (dayObs) ...
NIGHT_2 = [60401.2, 60401.25, 60401.3, 60401.35, 60401.4]  # ids 11..15: the next night
DAY_1, DAY_2 = date(2024, 3, 30), date(2024, 3, 31)


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


def _packet(registry: SchemaRegistry, alert_id: int) -> bytes:
    mjd = NIGHT_1[alert_id - 1] if alert_id < 10 else NIGHT_2[alert_id - 11]
    return encode(registry, "alert", make_alert(alert_id, mjd=mjd))


def _produce(settings: Settings, topic: str, registry: SchemaRegistry, ids: list[int]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in ids:
        producer.produce(topic, key=str(i), value=_packet(registry, i))
    assert producer.flush(10) == 0


@pytest.fixture()
def topic(test_settings: Settings, registry: SchemaRegistry) -> Iterator[str]:
    name = f"{test_settings.topic_prefix}arch{uuid.uuid4().hex[:6]}-alerts"
    ensure_topics(test_settings.kafka_bootstrap, [name], 2)
    # both nights, a replayed packet (id 3 again) and an undecodable message
    _produce(test_settings, name, registry, [1, 11, 2, 3, 12, 4, 13, 5, 3, 6, 14])
    producer = Producer({"bootstrap.servers": test_settings.kafka_bootstrap})
    producer.produce(name, value=b"junk")
    assert producer.flush(10) == 0
    try:
        yield name
    finally:
        delete_topics(test_settings.kafka_bootstrap, [name])


def test_night_convention() -> None:
    for mjd in (*NIGHT_1, *NIGHT_2, 60400.49, 60400.51):
        assert night_of_mjd(mjd) == Time(mjd - 0.5, format="mjd").datetime.date()
    assert {night_of_mjd(m) for m in NIGHT_1} == {DAY_1} and {night_of_mjd(m) for m in NIGHT_2} == {DAY_2}


def _check_reads_back(root: Path, day: date, ids: list[int], registry: SchemaRegistry) -> list[dict]:
    rows = list(read_archive(root, day))
    assert sorted(r["alertId"] for r, _ in rows) == ids
    schema = registry.get("alert").parsed
    for row, record in rows:
        assert record["alertId"] == row["alertId"]
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, record)
        assert (
            body.getvalue() == _packet(registry, row["alertId"])[5:]
        )  # the packet's Avro body, byte for byte
        assert (row["mjd"], row["objectName"]) == (record["sighting"]["mjd"], record["object"]["name"])
    return [r for r, _ in rows]


def test_an_archived_night_reads_back_alert_for_alert(
    test_settings: Settings, topic: str, registry: SchemaRegistry, tmp_path: Path
) -> None:
    conn = Connection(test_settings.kafka_bootstrap)
    assert archive_night(conn, topic, DAY_1, tmp_path, per_file=2, registry=registry, idle_timeout=20) == 6
    rows = _check_reads_back(tmp_path, DAY_1, [1, 2, 3, 4, 5, 6], registry)
    folder = tmp_path / DAY_1.isoformat()
    per_partition: dict[int, int] = {}
    for r in rows:
        per_partition[r["partition"]] = per_partition.get(r["partition"], 0) + 1
    expected_files = sum((n + 1) // 2 for n in per_partition.values())
    files = sorted(folder.glob("*.avro"))
    assert len(files) == expected_files
    for path in files:  # plain fastavro, schema from the file, at most two alerts each, in index order
        with open(path, "rb") as fh:
            ids = [r["alertId"] for r in fastavro.reader(fh)]
        assert 1 <= len(ids) <= 2
        assert ids == [
            r["alertId"] for r in sorted(rows, key=lambda r: r["record"]) if r["file"] == path.name
        ]
    assert not (tmp_path / DAY_2.isoformat()).exists()
    # re-archiving the night replaces it with the same content
    assert archive_night(conn, topic, DAY_1, tmp_path, per_file=2, registry=registry, idle_timeout=20) == 6

    def order(r: dict) -> tuple[int, int]:
        return (r["partition"], r["offset"])

    assert sorted((r for r, _ in read_archive(tmp_path, DAY_1)), key=order) == sorted(rows, key=order)
    assert [p.name for p in tmp_path.iterdir()] == [DAY_1.isoformat()]

    # the command: archive the other night, then read it back
    runner = CliRunner()
    out = runner.invoke(
        archive_cmd, [str(tmp_path), "--night", DAY_2.isoformat(), "--bootstrap", test_settings.kafka_bootstrap,
                      "--topic", topic.removeprefix(test_settings.topic_prefix)], obj=test_settings,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"archived 4 alert(s) of {DAY_2}" in out.stdout
    back = runner.invoke(archive_cmd, [str(tmp_path), "--read", "--format", "index"], obj=test_settings)
    assert back.exit_code == 0, back.output
    assert sorted(json.loads(x)["alertId"] for x in back.stdout.splitlines()) == [
        1,
        2,
        3,
        4,
        5,
        6,
        11,
        12,
        13,
        14,
    ]


def test_follow_resumes_and_archives_nothing_twice(
    test_settings: Settings, topic: str, registry: SchemaRegistry, tmp_path: Path
) -> None:
    conn = Connection(test_settings.kafka_bootstrap)
    group = f"{test_settings.topic_prefix}archive-{uuid.uuid4().hex[:6]}"
    assert follow(conn, topic, tmp_path, group=group, per_file=4, registry=registry, idle_timeout=6) == 10
    _check_reads_back(tmp_path, DAY_1, [1, 2, 3, 4, 5, 6], registry)
    _check_reads_back(tmp_path, DAY_2, [11, 12, 13, 14], registry)
    # a restart of the service resumes: only the new alert is read and archived; a replayed one is not
    _produce(test_settings, topic, registry, [2, 15])
    assert follow(conn, topic, tmp_path, group=group, per_file=4, registry=registry, idle_timeout=6) == 1
    rows = _check_reads_back(tmp_path, DAY_2, [11, 12, 13, 14, 15], registry)
    assert max(r["record"] for r in rows) <= 3
