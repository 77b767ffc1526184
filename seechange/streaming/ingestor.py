"""Ingestion: raw CCD files -> Exposure rows -> exposure-ready (keyed by sky tile: :mod:`seechange.streaming.keys`).

The logic of the ingest producer (``producers/ingest.py`` and ``seechange ingest`` are thin entry points).
A file may hold many CCDs (multi-extension, tile-compressed ``.fits.fz``): each science CCD becomes one
Exposure and one event; the file's CCDs are registered in one transaction. Guide/focus CCDs and CCDs in the
instrument's skip list are logged and counted as skipped, never silently dropped.
A file that cannot be ingested (the bad-input family, e.g. :class:`~seechange.pipeline.ingest.IngestError`)
is reported in one line and recorded on ``exposure-ready.dlq`` (key and value: the path; headers: those of
every dead letter, see :func:`seechange.streaming.delivery.dead_letter`, plus ``origin_path``), and
ingestion goes on with the next file. Deliveries are confirmed and re-sent like the run loop's.

Already-reduced images (:meth:`Ingestor.ingest_reduced`) become Exposure + Image rows and go straight to
image-reduced (keyed by sky tile too); their failures go to the same ``exposure-ready.dlq``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Producer
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.errors import BadInput
from seechange.improc.reduction import ReduceParams
from seechange.logformat import add_log_context, log_context
from seechange.pipeline.ingest import (
    FITS_SUFFIXES,
    exposure_event,
    input_file,
    register_exposure,
    scan_raw_file,
)
from seechange.pipeline.ingest_reduced import ReducedFiles, register_reduced_file
from seechange.pipeline.reduce import image_event
from seechange.storage import md5sum
from seechange.streaming.delivery import Delivery, Item, dead_letter
from seechange.streaming.framing import encode, one_line
from seechange.streaming.kafka_config import producer_config
from seechange.streaming.keys import sky_tile_key
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import InfrastructureError
from seechange.streaming.stages import INGEST
from seechange.streaming.topics import dlq_name
from seechange.timestamps import epoch_ms, now_ms

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest call did."""

    registered: list[int] = field(default_factory=list)  #: exposure ids emitted
    new: int = 0  #: of which newly registered
    failed: list[tuple[str, str]] = field(default_factory=list)  #: (path or path[CCD], error)
    skipped: list[tuple[str, str]] = field(
        default_factory=list
    )  #: (path[CCD], reason): guide/focus, skip list
    images: list[int] = field(default_factory=list)  #: image ids emitted (reduced ingestion only)


class Ingestor:
    """Registers files and emits exposure-ready; one instance per process (owns a Kafka producer)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        registry: SchemaRegistry | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings, self.session_factory = settings, session_factory
        self.registry = registry or SchemaRegistry.load()
        self.producer = Producer(producer_config(settings))
        self.stop = stop if stop is not None else threading.Event()
        self.delivery = Delivery(self.producer, INGEST.name, stop=self.stop)
        self.topic = settings.topic(INGEST.output_topic)
        self.dlq = dlq_name(settings.topic(INGEST.dlq_topic))

    def _deliver(self, topic: str, key: str, value: bytes, where: str) -> None:
        """Deliver one message (re-sent until confirmed); raise if stopped first."""
        if not self.delivery.deliver([Item(topic, key, value)], where):
            raise InfrastructureError(f"stopped before the delivery to {topic} of {where} was confirmed")

    def ingest(
        self,
        paths: Iterable[str | Path],
        *,
        on_each: Callable[[str, int | None, str | None], None] | None = None,
        skip: frozenset[str] | None = None,
    ) -> IngestReport:
        """Register every science CCD of each file (idempotent) and emit one exposure-ready per CCD.

        A file's good CCDs are registered in one transaction; their events are emitted after it commits. A
        refused CCD (or file) is dead-lettered with one line naming file, CCD and card, and the other CCDs and
        files go on. ``on_each(label, exposure_id or None, error or None)`` is called per CCD (per file when
        the whole file is refused). ``skip``: CCD names to skip (default: each instrument's skip list).
        """
        report = IngestReport()
        for path in paths:
            with log_context(service=INGEST.name, path=str(path)):
                try:
                    self._ingest_file(path, report, on_each, skip)
                except BadInput as exc:
                    message = self._dead_letter(path, exc)
                    report.failed.append((str(path), message))
                    if on_each:
                        on_each(str(path), None, message)
        return report

    def _ingest_file(
        self,
        path: str | Path,
        report: IngestReport,
        on_each: Callable[[str, int | None, str | None], None] | None,
        skip: frozenset[str] | None,
    ) -> None:
        full = input_file(self.settings.data_dir, path)
        outcomes = scan_raw_file(full, skip=skip)
        digest = md5sum(full) if any(o.info is not None for o in outcomes) else ""
        records: list[tuple[str, str, dict[str, object]]] = []
        refused: list[tuple[str, BadInput]] = []
        with self.session_factory() as session, session.begin():
            for o in outcomes:
                label = str(path) if len(outcomes) == 1 else f"{path}[{o.label}]"
                if o.skipped is not None:
                    report.skipped.append((label, o.skipped))
                    continue
                if o.error is not None:
                    refused.append((label, o.error))
                    continue
                try:
                    with session.begin_nested():
                        exposure, created = register_exposure(
                            session, self.settings.data_dir, full, info=o.info, md5=digest
                        )
                except BadInput as exc:
                    refused.append((label, exc))
                    continue
                report.new += int(created)
                records.append(
                    (label, sky_tile_key(exposure.healpix), exposure_event(exposure, produced_at_ms=now_ms()))
                )
        for label, key, record in records:
            with log_context(exposure_id=record["exposure_id"]):
                self._deliver(self.topic, key, encode(self.registry, INGEST.output_schema, record), label)
            report.registered.append(int(str(record["exposure_id"])))
            if on_each:
                on_each(label, int(str(record["exposure_id"])), None)
        for label, error in refused:
            message = self._dead_letter(label, error, origin_path=str(path))
            report.failed.append((label, message))
            if on_each:
                on_each(label, None, message)

    def ingest_reduced(
        self,
        items: Iterable[ReducedFiles],
        *,
        params: ReduceParams | None = None,
        on_each: Callable[[str, int | None, str | None], None] | None = None,
    ) -> IngestReport:
        """Register already-reduced images (idempotent) and emit image-reduced for each CCD after the commit.

        A multi-extension file gives one Exposure and one Image per CCD, in one transaction per file; a
        refused CCD is dead-lettered as ``path[CCD]`` (one line) and the others go on. ``on_each(label,
        image id or None, error or None)`` is called per CCD (per file when the whole file is refused).
        """
        params = params or ReduceParams()
        report = IngestReport()
        for item in items:
            with log_context(service=INGEST.name, path=str(item.image)):
                try:
                    self._ingest_reduced_file(item, params, report, on_each)
                except BadInput as exc:
                    message = self._dead_letter(item.image, exc)
                    report.failed.append((str(item.image), message))
                    if on_each:
                        on_each(str(item.image), None, message)
        return report

    def _ingest_reduced_file(
        self,
        item: ReducedFiles,
        params: ReduceParams,
        report: IngestReport,
        on_each: Callable[[str, int | None, str | None], None] | None,
    ) -> None:
        """Register the CCDs of one reduced file, emit one image-reduced event each; dead-letter refused CCDs."""
        records: list[tuple[str, int, int, bool, str, dict[str, object]]] = []
        refused: list[tuple[str, BadInput]] = []
        with self.session_factory() as session, session.begin():
            outcomes = register_reduced_file(session, self.settings.data_dir, item, params=params)
            for o in outcomes:
                label = str(item.image) if len(outcomes) == 1 else f"{item.image}[{o.label}]"
                if o.error is not None or o.image is None or o.exposure is None:
                    assert o.error is not None
                    refused.append((label, o.error))
                    continue
                record = image_event(
                    o.image, produced_at_ms=now_ms(), ingested_at_ms=epoch_ms(o.exposure.ingested_at)
                )
                key = sky_tile_key(o.exposure.healpix)
                records.append((label, o.exposure.id, o.image.id, o.created, key, record))
        for label, exposure_id, image_id, created, key, record in records:
            add_log_context(exposure_id=exposure_id, image_id=image_id)
            self._deliver(
                self.settings.topic(INGEST.reduced_topic),
                key,
                encode(self.registry, INGEST.reduced_schema, record),
                label,
            )
            report.registered.append(exposure_id)
            report.images.append(image_id)
            report.new += int(created)
            if on_each:
                on_each(label, image_id, None)
        for label, error in refused:
            message = self._dead_letter(label, error, origin_path=str(item.image))
            report.failed.append((label, message))
            if on_each:
                on_each(label, None, message)

    def _dead_letter(self, path: str | Path, exc: Exception, *, origin_path: str | None = None) -> str:
        """Log one line and record the failed path (``file[CCD]`` for one CCD) on ``exposure-ready.dlq``.

        Returns the one-line message.
        """
        message = one_line(exc, 1000)
        log.error("ingest: %s: %s -> %s", path, message, self.dlq)
        item = dead_letter(
            self.dlq,
            exc,
            service=INGEST.name,
            key=str(path),
            value=str(path).encode(),
            origin_topic=INGEST.name,
            origin_path=origin_path or str(path),
        )
        if not self.delivery.deliver([item], str(path)):
            raise InfrastructureError(f"stopped before the dead letter of {path} was confirmed")
        return message

    def watch(
        self,
        folder: Path,
        *,
        poll_s: float = 1.0,
        stop: Callable[[], bool] = lambda: False,
        skip: frozenset[str] | None = None,
    ) -> None:
        """Ingest every new FITS file (``*.fits``, ``*.fits.fz``, ``*.fits.gz``) under ``folder`` once its size is
        stable; temporary files of atomic writes (``.name.tmp``) are ignored."""
        seen: set[Path] = set()
        sizes: dict[Path, int] = {}
        log.info("ingest: watching %s", folder)
        while not stop() and not self.stop.is_set():
            ready = []
            for p in sorted(folder.rglob("*")):
                if p in seen or p.name.startswith(".") or not p.name.lower().endswith(FITS_SUFFIXES):
                    continue
                if not p.is_file():
                    continue
                size = p.stat().st_size
                if sizes.get(p) == size:
                    ready.append(p)
                    seen.add(p)
                sizes[p] = size
            if ready:
                self.ingest(ready, skip=skip)
            time.sleep(poll_s)

    def close(self) -> None:
        self.producer.flush(30.0)
