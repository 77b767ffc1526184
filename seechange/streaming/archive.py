"""The alert archive: a night's alerts in Avro container files, with an index, and read back.

Layout under the archive folder ``DIR``::

    DIR/2026-03-14/alerts-2026-03-14-p0-0000.avro   one file per night and Kafka partition (a new file
    DIR/2026-03-14/alerts-2026-03-14-p1-0000.avro   every ``per_file`` alerts when that is given)
    DIR/2026-03-14/index.jsonl                       one JSON line per alert

Each container file embeds its schema (any Avro reader opens it without SeeChange's schemas) and holds the
packets as decoded with the newest known schema version. An index line names the alert (``alertId``,
``objectId``, ``objectName``, ``mjd``, ``ra``, ``dec``: MJD days and degrees), the ``file`` and the
``record`` number in it (0-based), and the Kafka ``partition`` and ``offset`` it was read from.

The night of an alert is the *observing night* of its sighting, named by the UTC date twelve hours before
(Rubin's ``dayObs``): MJD 60400.0 to 60401.0 minus half a day. An alert id is archived once per night
(a replayed packet, which has the same id, is not archived twice).
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import fastavro

from seechange.streaming.client import Alert, Connection, stream_alerts
from seechange.streaming.registry import SchemaRegistry

__all__ = ["ArchiveWriter", "archive_night", "follow", "night_of_mjd", "read_archive"]

log = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)


def night_of_mjd(mjd: float) -> date:
    """The observing night (``dayObs``: UTC date twelve hours earlier) of a time given as MJD (days)."""
    return (_MJD_EPOCH + timedelta(days=mjd - 0.5)).date()


def _seq(name: str) -> int:
    """The file number of ``alerts-<night>-p<partition>-<seq>.avro``."""
    return int(name.rsplit("-", 1)[1].split(".")[0])


@dataclass
class _Open:
    """One container file being appended to."""

    path: Path
    fh: IO[bytes]
    records: int


@dataclass
class ArchiveWriter:
    """Appends alerts to the archive under ``root`` (container files per night and partition, the index).

    Parameters
    ----------
    root : Path
        The archive folder; nights are sub-folders named ``YYYY-MM-DD``.
    per_file : int, optional
        Start a new file after this many alerts (per night and partition); default: one file.

    Notes
    -----
    Every :meth:`add` writes one Avro block and one index line and flushes both, so the archive on disk is
    complete up to the last alert added; reopening the folder continues the files and skips alert ids
    already indexed.
    """

    root: Path
    per_file: int | None = None
    _open: dict[tuple[date, int], _Open] = field(default_factory=dict, init=False)
    _index: dict[date, IO[str]] = field(default_factory=dict, init=False)
    _seen: dict[date, set[int]] = field(default_factory=dict, init=False)
    _counts: dict[tuple[date, int], tuple[int, int]] = field(default_factory=dict, init=False)

    def _load_night(self, night: date) -> None:
        folder = self.root / night.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        index = folder / INDEX_NAME
        seen: set[int] = set()
        if index.exists():
            for line in index.read_text().splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                seen.add(int(row["alertId"]))
                key, seq = (night, int(row["partition"])), _seq(row["file"])
                last_seq, n = self._counts.get(key, (seq, 0))
                if seq > last_seq:
                    last_seq, n = seq, 0
                self._counts[key] = (last_seq, n + 1 if seq == last_seq else n)
        self._seen[night] = seen
        self._index[night] = open(index, "a", encoding="utf-8")  # noqa: SIM115 - kept open, closed in close()

    def _file(self, night: date, partition: int, schema: Any) -> _Open:
        key = (night, partition)
        current = self._open.get(key)
        if current is not None and (self.per_file is None or current.records < self.per_file):
            return current
        if current is not None:
            current.fh.close()
            seq, n = _seq(current.path.name) + 1, 0
        else:
            seq, n = self._counts.get(key, (0, 0))
            if self.per_file is not None and n >= self.per_file:
                seq, n = seq + 1, 0
        path = self.root / night.isoformat() / f"alerts-{night.isoformat()}-p{partition}-{seq:04d}.avro"
        opened = _Open(path, open(path, "a+b"), n)  # noqa: SIM115 - kept open, closed in close()
        self._open[key] = opened
        return opened

    def add(self, alert: Alert) -> bool:
        """Archive ``alert`` under the night of its sighting; False when its id is already there."""
        night = night_of_mjd(float(alert.record["sighting"]["mjd"]))
        if night not in self._seen:
            self._load_night(night)
        if alert.alert_id in self._seen[night]:
            return False
        target = self._file(night, alert.partition, alert.schema)
        target.fh.seek(0, 2)
        fastavro.writer(target.fh, alert.schema, [alert.record], codec="deflate")
        target.fh.flush()
        s, o = alert.record["sighting"], alert.record["object"]
        row = {
            "alertId": alert.alert_id,
            "objectId": o["objectId"],
            "objectName": o["name"],
            "mjd": s["mjd"],
            "ra": s["ra"],
            "dec": s["dec"],
            "file": target.path.name,
            "record": target.records,
            "partition": alert.partition,
            "offset": alert.offset,
        }
        index = self._index[night]
        index.write(json.dumps(row) + "\n")
        index.flush()
        target.records += 1
        self._seen[night].add(alert.alert_id)
        return True

    def close(self) -> None:
        """Close every open file."""
        for opened in self._open.values():
            opened.fh.close()
        for fh in self._index.values():
            fh.close()
        self._open.clear()
        self._index.clear()


def archive_night(
    connection: Connection,
    topic: str,
    night: date,
    root: Path,
    *,
    per_file: int | None = None,
    registry: SchemaRegistry | None = None,
    idle_timeout: float = 30.0,
) -> int:
    """Archive every alert of ``night`` now on ``topic`` (read from the beginning to the end) under ``root``.

    The night's folder is written beside the archive first and then moved in, replacing an older copy.

    Parameters
    ----------
    connection : Connection
        Broker and security settings.
    topic : str
        Full topic name.
    night : date
        The observing night (see :func:`night_of_mjd`).
    root : Path
        The archive folder.
    per_file : int, optional
        Alerts per container file (default: one file per partition).
    registry : SchemaRegistry, optional
        Default: the shipped schemas.
    idle_timeout : float
        Give up after this many seconds without a message (seconds).

    Returns
    -------
    int
        Alerts archived.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{night.isoformat()}-{uuid.uuid4().hex[:8]}"
    writer = ArchiveWriter(staging, per_file)
    n = 0
    try:
        for alert in stream_alerts(
            connection,
            topic,
            start="beginning",
            stop_at_end=True,
            idle_timeout=idle_timeout,
            registry=registry,
        ):
            if night_of_mjd(float(alert.record["sighting"]["mjd"])) == night:
                n += writer.add(alert)
    finally:
        writer.close()
    replace_night(staging, root, night)
    log.info("archived %d alert(s) of night %s from %s into %s", n, night, topic, root / night.isoformat())
    return n


def follow(
    connection: Connection,
    topic: str,
    root: Path,
    *,
    group: str,
    per_file: int | None = None,
    registry: SchemaRegistry | None = None,
    idle_timeout: float | None = None,
) -> int:
    """The archive service: append every alert of ``topic`` to its night under ``root``, as it arrives.

    Offsets are committed for the consumer ``group`` after the alert is on disk, so a restart resumes where
    it stopped (an alert handed out twice is recognised by its id and not archived again).

    Returns
    -------
    int
        Alerts archived before the stream stopped (``idle_timeout`` seconds without a message, or never).
    """
    writer = ArchiveWriter(root, per_file)
    n = 0
    try:
        for alert in stream_alerts(
            connection, topic, start="committed", group=group, idle_timeout=idle_timeout, registry=registry
        ):
            n += writer.add(alert)
    finally:
        writer.close()
    return n


def replace_night(staging: Path, root: Path, night: date) -> Path:
    """Move the night folder written under ``staging`` onto ``root/<night>`` (replacing an older one)."""
    src, dest = staging / night.isoformat(), root / night.isoformat()
    if not src.exists():
        src.mkdir(parents=True)
        (src / INDEX_NAME).touch()
    if dest.exists():
        old = root / f".{night.isoformat()}.old"
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        src.rename(dest)
        shutil.rmtree(old)
    else:
        src.rename(dest)
    shutil.rmtree(staging, ignore_errors=True)
    return dest


def read_archive(root: Path, night: date | None = None) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield ``(index row, record)`` for every archived alert, night by night in index order.

    Parameters
    ----------
    root : Path
        The archive folder.
    night : date, optional
        Only this night.

    Raises
    ------
    seechange.errors.CorruptFile
        When the index names a record its file does not hold.
    """
    from seechange.errors import CorruptFile

    nights = [root / night.isoformat()] if night else sorted(p for p in root.iterdir() if p.is_dir())
    for folder in nights:
        index = folder / INDEX_NAME
        if not index.exists():
            continue
        rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
        files: dict[str, list[Any]] = {}
        for row in rows:
            if row["file"] not in files:
                with open(folder / row["file"], "rb") as fh:
                    files[row["file"]] = list(fastavro.reader(fh))
            records = files[row["file"]]
            if row["record"] >= len(records) or records[row["record"]]["alertId"] != row["alertId"]:
                raise CorruptFile(
                    f"{folder / row['file']}: record {row['record']} is not alert {row['alertId']}"
                )
            yield row, records[row["record"]]
