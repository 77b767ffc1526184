"""Ingestion: raw CCD files -> Exposure rows -> exposure-ready (keyed by exposure id).

The logic of the ingest producer (``producers/ingest.py`` and ``seechange ingest`` are thin entry points).
A file that cannot be ingested (the bad-input family, e.g. :class:`~seechange.pipeline.ingest.IngestError`)
is reported in one line and recorded on ``exposure-ready.dlq`` (key and value: the path; headers: those of
every dead letter, see :func:`seechange.streaming.delivery.dead_letter`, plus ``origin_path``), and
ingestion goes on with the next file. Deliveries are confirmed and re-sent like the run loop's.

Already-reduced images (:meth:`Ingestor.ingest_reduced`) become Exposure + Image rows and go straight to
image-reduced (keyed by image id); their failures go to the same ``exposure-ready.dlq``.
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
from seechange.pipeline.ingest import exposure_event, register_exposure
from seechange.pipeline.ingest_reduced import ReducedFiles, register_reduced_image
from seechange.pipeline.reduce import image_event
from seechange.streaming.delivery import Delivery, Item, dead_letter
from seechange.streaming.framing import encode, one_line
from seechange.streaming.kafka_config import producer_config
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
    failed: list[tuple[str, str]] = field(default_factory=list)  #: (path, error)
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
    ) -> IngestReport:
        """Register each file (idempotent) and emit its exposure-ready event after the row commits."""
        report = IngestReport()
        for path in paths:
            try:
                with self.session_factory() as session, session.begin():
                    exposure, created = register_exposure(session, self.settings.data_dir, path)
                    record = exposure_event(exposure, produced_at_ms=now_ms())
                self._deliver(
                    self.topic,
                    str(record["exposure_id"]),
                    encode(self.registry, INGEST.output_schema, record),
                    str(path),
                )
            except BadInput as exc:
                message = self._dead_letter(path, exc)
                report.failed.append((str(path), message))
                if on_each:
                    on_each(str(path), None, message)
                continue
            report.registered.append(int(record["exposure_id"]))
            report.new += int(created)
            if on_each:
                on_each(str(path), int(record["exposure_id"]), None)
        return report

    def ingest_reduced(
        self,
        items: Iterable[ReducedFiles],
        *,
        params: ReduceParams | None = None,
        on_each: Callable[[str, int | None, str | None], None] | None = None,
    ) -> IngestReport:
        """Register already-reduced images (idempotent) and emit image-reduced for each after the commit."""
        params = params or ReduceParams()
        report = IngestReport()
        for item in items:
            try:
                with self.session_factory() as session, session.begin():
                    exposure, image, created = register_reduced_image(
                        session,
                        self.settings.data_dir,
                        item.image,
                        weight_path=item.weight,
                        mask_path=item.mask,
                        params=params,
                    )
                    record = image_event(
                        image, produced_at_ms=now_ms(), ingested_at_ms=epoch_ms(exposure.ingested_at)
                    )
                    exposure_id, image_id = exposure.id, image.id
                self._deliver(
                    self.settings.topic(INGEST.reduced_topic),
                    str(image_id),
                    encode(self.registry, INGEST.reduced_schema, record),
                    str(item.image),
                )
            except BadInput as exc:
                message = self._dead_letter(item.image, exc)
                report.failed.append((str(item.image), message))
                if on_each:
                    on_each(str(item.image), None, message)
                continue
            report.registered.append(exposure_id)
            report.images.append(image_id)
            report.new += int(created)
            if on_each:
                on_each(str(item.image), image_id, None)
        return report

    def _dead_letter(self, path: str | Path, exc: Exception) -> str:
        """Log one line and record the failed path on ``exposure-ready.dlq``; return the one-line message."""
        message = one_line(exc, 1000)
        log.error("ingest: %s: %s -> %s", path, message, self.dlq)
        item = dead_letter(
            self.dlq,
            exc,
            service=INGEST.name,
            key=str(path),
            value=str(path).encode(),
            origin_topic=INGEST.name,
            origin_path=str(path),
        )
        if not self.delivery.deliver([item], str(path)):
            raise InfrastructureError(f"stopped before the dead letter of {path} was confirmed")
        return message

    def watch(self, folder: Path, *, poll_s: float = 1.0, stop: Callable[[], bool] = lambda: False) -> None:
        """Ingest every new ``*.fits`` file that appears under ``folder`` (once its size is stable)."""
        seen: set[Path] = set()
        sizes: dict[Path, int] = {}
        log.info("ingest: watching %s", folder)
        while not stop() and not self.stop.is_set():
            ready = []
            for p in sorted(folder.rglob("*.fits")):
                if p in seen:
                    continue
                size = p.stat().st_size
                if sizes.get(p) == size:
                    ready.append(p)
                    seen.add(p)
                sizes[p] = size
            if ready:
                self.ingest(ready)
            time.sleep(poll_s)

    def close(self) -> None:
        self.producer.flush(30.0)
