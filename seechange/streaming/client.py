"""A small alert-stream client for brokers and scientists: connect to any Kafka, filter, read packets.

Its public name is :mod:`seechange.client`.

Importable without the pipeline: it needs only confluent-kafka, fastavro and the schemas shipped with the
package (``seechange/schemas``), no numpy, astropy or SQLAlchemy.

Example
-------
>>> from seechange.client import AlertFilter, Connection, stream_alerts
>>> conn = Connection("broker.example.org:9092", options={"security.protocol": "SASL_SSL",
...     "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "me", "sasl.password": "..."})
>>> for alert in stream_alerts(conn, "alerts", start="beginning", stop_at_end=True,
...                            keep=AlertFilter(max_mag=21.0, bands=("r",))):
...     print(alert.alert_id, alert.record["object"]["name"])

The security settings (``options``) are librdkafka properties handed to the client unchanged; they are
never logged (``repr`` of a :class:`Connection` shows the keys only).
"""

from __future__ import annotations

import gzip
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from seechange.sphere import angular_sep_arcsec
from seechange.streaming.framing import DecodeError, decode
from seechange.streaming.registry import SchemaRegistry

__all__ = [
    "Alert",
    "AlertFilter",
    "Connection",
    "Skipped",
    "Start",
    "angular_sep_arcsec",
    "container_bytes",
    "cutout_fits",
    "read_container",
    "start_offsets",
    "stream_alerts",
]

log = logging.getLogger(__name__)

#: ``"now"``, ``"beginning"``, ``"committed"`` (the group's offsets) or a Unix time in seconds
Start = Literal["now", "beginning", "committed"] | float
CUTOUT_FIELDS = {"science": "cutoutScience", "template": "cutoutTemplate", "difference": "cutoutDifference"}


@dataclass(frozen=True)
class Connection:
    """Where the broker is and how to authenticate.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port...]``.
    options : mapping of str to str
        Extra librdkafka properties passed through unchanged, e.g. ``security.protocol``
        (``SASL_SSL``, ``SASL_PLAINTEXT``, ``SSL``), ``sasl.mechanism`` (``PLAIN``, ``SCRAM-SHA-512``),
        ``sasl.username``, ``sasl.password``, ``ssl.ca.location``. Never logged.
    """

    bootstrap: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Connection(bootstrap={self.bootstrap!r}, options=<{', '.join(sorted(self.options))}>)"

    def consumer_config(self, group_id: str) -> dict[str, Any]:
        """librdkafka configuration of a consumer in ``group_id`` (offsets stored by hand)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": group_id,
            "client.id": group_id,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",  # eager: the whole assignment is positioned at once
            "enable.partition.eof": True,
        }
        config.update(self.options)
        return config


@dataclass(frozen=True)
class Alert:
    """One alert as received: the decoded packet, the framed bytes, and where it came from.

    Attributes
    ----------
    record : dict
        The packet, read with the newest known version of its schema.
    raw : bytes
        The message value exactly as received (Confluent framing + Avro body).
    topic, partition, offset : str, int, int
        Where it was read.
    timestamp_ms : int
        The message's Kafka timestamp, Unix milliseconds.
    schema : object
        The fastavro-parsed schema ``record`` follows (for writing it out again).
    writer_version : str
        ``MAJOR.MINOR`` of the schema the packet was written with.
    """

    record: dict[str, Any]
    raw: bytes
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    schema: Any = field(repr=False)
    writer_version: str = ""

    @property
    def alert_id(self) -> int:
        """The packet's ``alertId``."""
        return int(self.record["alertId"])


@dataclass(frozen=True)
class Skipped:
    """A message that could not be decoded: where it was and why (one line)."""

    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts to keep; every criterion given must hold (``None`` / ``False``: not applied).

    Parameters
    ----------
    min_mag, max_mag : float, optional
        Magnitude range of the sighting, AB mag (an alert without a magnitude fails either bound).
    min_snr, max_snr : float, optional
        Range of the sighting's ``|snr|`` (fading sources have a negative SNR).
    bands : tuple of str, optional
        Filter bands to keep.
    cone : tuple of float, optional
        ``(ra, dec, radius)``: degrees, degrees, arcsec; the sighting must lie within it.
    new_only : bool
        Only the first sighting of an object (``object.nSightings == 1``).
    good_only : bool
        Only sightings that passed the quality cuts (``isGood``).
    positive_only : bool
        Only brightening sources (``isPositive``).
    min_detections : int, optional
        The object has at least this many sightings, this one included.
    object_name : str, optional
        Only this object.
    """

    min_mag: float | None = None
    max_mag: float | None = None
    min_snr: float | None = None
    max_snr: float | None = None
    bands: tuple[str, ...] | None = None
    cone: tuple[float, float, float] | None = None
    new_only: bool = False
    good_only: bool = False
    positive_only: bool = False
    min_detections: int | None = None
    object_name: str | None = None

    def __call__(self, record: dict[str, Any]) -> bool:
        """True when ``record`` (an alert packet) passes every criterion."""
        s, o = record["sighting"], record["object"]
        mag, snr = s.get("mag"), abs(float(s["snr"]))
        if self.min_mag is not None and (mag is None or mag < self.min_mag):
            return False
        if self.max_mag is not None and (mag is None or mag > self.max_mag):
            return False
        if self.min_snr is not None and snr < self.min_snr:
            return False
        if self.max_snr is not None and snr > self.max_snr:
            return False
        if self.bands is not None and s["band"] not in self.bands:
            return False
        if self.cone is not None:
            ra, dec, radius = self.cone
            if angular_sep_arcsec(ra, dec, s["ra"], s["dec"]) > radius:
                return False
        if self.new_only and o["nSightings"] != 1:
            return False
        if self.good_only and not s["isGood"]:
            return False
        if self.positive_only and not s["isPositive"]:
            return False
        if self.min_detections is not None and o["nSightings"] < self.min_detections:
            return False
        return not (self.object_name is not None and o["name"] != self.object_name)


def start_offsets(
    consumer: Consumer, partitions: list[TopicPartition], start: Start, *, timeout: float = 10.0
) -> list[TopicPartition]:
    """Where to start reading each partition.

    Parameters
    ----------
    consumer : confluent_kafka.Consumer
        Used for the time look-up.
    partitions : list of TopicPartition
        The partitions (their offsets are ignored).
    start : {"now", "beginning", "committed"} or float
        End of the log, beginning of the log (also for ``committed``, whose offsets the caller applies on
        top), or a Unix time (seconds): the first message stamped at or after it (the end when none is).
    timeout : float
        Seconds allowed for the time look-up.

    Returns
    -------
    list of TopicPartition
        The same partitions with their starting offsets.
    """
    if start in ("beginning", "committed"):
        return [TopicPartition(p.topic, p.partition, OFFSET_BEGINNING) for p in partitions]

    def end(p: TopicPartition) -> int:  # the end as a number now, so nothing produced later is missed
        return int(consumer.get_watermark_offsets(TopicPartition(p.topic, p.partition), timeout=timeout)[1])

    if start == "now":
        return [TopicPartition(p.topic, p.partition, end(p)) for p in partitions]
    if not isinstance(start, int | float):
        raise TypeError(f"start must be now, beginning, committed or Unix seconds, not {start!r}")
    millis = int(float(start) * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(p.topic, p.partition, millis) for p in partitions], timeout=timeout
    )
    # -1: no message at or after that time, start at the end
    return [TopicPartition(p.topic, p.partition, p.offset if p.offset >= 0 else end(p)) for p in found]


def stream_alerts(
    connection: Connection,
    topic: str = "alerts",
    *,
    start: Start = "now",
    group: str | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    max_alerts: int | None = None,
    until: float | None = None,
    stop_at_end: bool = False,
    idle_timeout: float | None = None,
    registry: SchemaRegistry | None = None,
    expect: str | None = "alert",
    on_skip: Callable[[Skipped], None] | None = None,
    on_ready: Callable[[dict[int, int]], None] | None = None,
    private_group_prefix: str = "seechange-client",
) -> Iterator[Alert]:
    """Yield the alerts of ``topic`` (the full topic name) that pass ``keep``.

    Parameters
    ----------
    connection : Connection
        Broker and security settings.
    topic : str
        Full topic name (with any prefix).
    start : {"now", "beginning", "committed"} or float
        Where to start: the end of the log, its beginning, the group's committed offsets (the beginning
        where the group has none), or a Unix time in seconds. With a ``group`` that has committed offsets,
        those always win (a subscriber resumes).
    group : str, optional
        Consumer group; ``None``: a private throw-away group. With a name, the offsets of the messages
        handed out are committed, so a restart resumes and several subscribers share the partitions.
    keep : callable, optional
        ``keep(record) -> bool``, e.g. an :class:`AlertFilter`.
    max_alerts : int, optional
        Stop after yielding this many.
    until : float, optional
        Unix seconds: messages stamped later are not yielded; the stream stops once every partition has
        passed it, or has reached its end while the clock is past it.
    stop_at_end : bool
        Stop when every assigned partition has reached the end of its log.
    idle_timeout : float, optional
        Stop after this many seconds without a message (seconds).
    registry : SchemaRegistry, optional
        Default: the schemas shipped with the package.
    expect : str or None
        Schema name every message must have (default ``"alert"``); others are skipped as undecodable.
    on_skip : callable, optional
        Called with a :class:`Skipped` for every message that does not decode (it is logged either way).
    on_ready : callable, optional
        Called with ``{partition: starting offset}`` once the partitions are assigned and positioned
        (negative offsets are librdkafka's logical ones, e.g. -2 for the beginning).
    private_group_prefix : str
        Without ``group``: the private group is named ``<private_group_prefix>-<random>`` (brokers with
        ACLs often allow only group ids of a given prefix).

    Yields
    ------
    Alert
    """
    if start == "committed" and group is None:
        raise ValueError("start='committed' needs a consumer group")
    registry = registry if registry is not None else SchemaRegistry.load()
    group_id = group if group is not None else f"{private_group_prefix}-{uuid.uuid4().hex[:12]}"
    config = connection.consumer_config(group_id)
    if group is None:
        config["enable.auto.commit"] = False
    consumer = Consumer(config)
    assigned: set[int] = set()
    finished: set[int] = set()  # partitions past ``until``
    at_end: set[int] = set()  # partitions at the end of their log (until the next message)
    last = [time.monotonic()]

    def on_assign(c: Consumer, partitions: list[TopicPartition]) -> None:
        chosen = {p.partition: p for p in start_offsets(c, partitions, start)}
        if group is not None:
            for p in c.committed(partitions, timeout=10.0):
                if p.offset >= 0:
                    chosen[p.partition] = p
        c.assign(list(chosen.values()))
        assigned.update(chosen)
        last[0] = time.monotonic()
        log.info("reading %s: %s", topic, ", ".join(f"[{k}]@{p.offset}" for k, p in sorted(chosen.items())))
        if on_ready is not None:
            on_ready({k: int(p.offset) for k, p in chosen.items()})

    def on_revoke(c: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            assigned.discard(p.partition)
            finished.discard(p.partition)
            at_end.discard(p.partition)

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    until_ms = int(until * 1000) if until is not None else None
    yielded = 0
    try:
        while max_alerts is None or yielded < max_alerts:
            ends_count = stop_at_end or (until is not None and time.time() > until)
            if assigned and assigned <= (finished | at_end if ends_count else finished):
                break
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last[0] >= idle_timeout:
                    break
                continue
            err = msg.error()
            part, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(part)
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("%s: consumer error: %s", topic, err)
                continue
            last[0] = time.monotonic()
            at_end.discard(part)
            _kind, ts = msg.timestamp()
            if until_ms is not None and ts > until_ms:
                finished.add(part)
                consumer.pause([TopicPartition(topic, part)])
                continue
            value = msg.value() or b""
            try:
                name, record = decode(registry, value, expect=expect)
            except DecodeError as exc:
                skipped = Skipped(topic, part, offset, str(exc))
                log.warning("%s[%d]@%d: skipped: %s", topic, part, offset, exc)
                if on_skip is not None:
                    on_skip(skipped)
                record = None
            if record is not None and (keep is None or keep(record)):
                writer = registry.entry_by_id(int.from_bytes(value[1:5], "big"))
                yielded += 1
                yield Alert(
                    record=record,
                    raw=value,
                    topic=topic,
                    partition=part,
                    offset=offset,
                    timestamp_ms=int(ts),
                    schema=registry.get(name).parsed,
                    writer_version=f"{writer.version[0]}.{writer.version[1]}" if writer else "",
                )
            if group is not None:
                consumer.store_offsets(message=msg)
    finally:
        consumer.close()  # with a named group: commits the stored offsets and leaves the group


def container_bytes(records: list[dict[str, Any]], schema: Any, *, codec: str = "deflate") -> bytes:
    """An Avro object container file holding ``records`` with ``schema`` embedded.

    Any Avro reader opens it without SeeChange's schemas (the convention of alert archives).
    """
    buf = io.BytesIO()
    fastavro.writer(buf, schema, records, codec=codec)
    return buf.getvalue()


def read_container(data: bytes | IO[bytes]) -> list[dict[str, Any]]:
    """The records of an Avro container file (bytes or an open binary file), with its embedded schema."""
    fh = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    return [r for r in fastavro.reader(fh) if isinstance(r, dict)]


def cutout_fits(record: dict[str, Any]) -> dict[str, bytes]:
    """The packet's cutouts as plain FITS bytes (gunzipped), by kind (``science``, ``template``, ``difference``).

    Cutouts that are absent, or whose bytes are not gzip, are left out.
    """
    out: dict[str, bytes] = {}
    for kind, name in CUTOUT_FIELDS.items():
        data = record.get(name)
        if not data:
            continue
        try:
            out[kind] = gzip.decompress(data)
        except (OSError, EOFError):
            log.warning("alert %s: %s is not gzip, not written", record.get("alertId"), name)
    return out
