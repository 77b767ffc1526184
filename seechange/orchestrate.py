"""Running a night through the services: start them as processes, watch progress, collect the alerts.

Shared by ``seechange demo``, ``seechange bench`` and the end-to-end integration test.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.models import (
    AlertLog,
    CoaddImage,
    Cutouts,
    Exposure,
    Image,
    Object,
    Photometry,
    Provenance,
    Sighting,
    SubtractionImage,
)
from seechange.streaming.framing import decode
from seechange.streaming.kafka_config import client_config, is_consumer_error
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.stages import stage_names

log = logging.getLogger(__name__)

STAGE_ORDER = stage_names()
ENV_PREFIX = "SEECHANGE_"
TABLES = (
    Provenance,
    Exposure,
    Image,
    CoaddImage,
    SubtractionImage,
    Sighting,
    Cutouts,
    Photometry,
    Object,
    AlertLog,
)


def settings_env(settings: Settings) -> dict[str, str]:
    """Every field of ``settings`` as a ``SEECHANGE_<FIELD>`` variable (fields that are ``None`` left out).

    Generated from ``Settings.model_fields``, so a new setting is forwarded without touching this.
    """
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):  # the child needs the secret itself, not its mask
            value = value.get_secret_value()
        if value is not None:  # complex values as JSON, which is how pydantic-settings reads them back
            text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env


def service_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child ``seechange`` process use exactly these settings (all of them).

    The parent's environment is kept, except its own ``SEECHANGE_*`` variables: every setting of the child
    comes from ``settings`` (which already merged the parent's config file and environment).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    return env


@dataclass
class ServiceProcesses:
    """One OS process per stage service (``seechange serve <stage>``), logs in ``log_dir``."""

    settings: Settings
    log_dir: Path
    stages: Sequence[str] = STAGE_ORDER
    instances: int = 1
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for stage in self.stages:
            for i in range(self.instances):
                self.procs.append((f"{stage}-{i}", self.start_one(stage, i)))

    def start_one(self, stage: str, index: int, settings: Settings | None = None) -> subprocess.Popen[bytes]:
        """Start one more ``seechange serve <stage>`` process (log ``<stage>-<index>.log``, appended).

        ``settings`` (default: :attr:`settings`) lets one process differ, e.g. with a test fault point.
        The caller keeps the process (``start`` adds it to :attr:`procs`).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_dir / f"{stage}-{index}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "seechange.cli", "serve", stage],
                env=service_env(settings or self.settings),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            logfile.close()

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs}

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every service, wait, SIGKILL stragglers; the exit codes (0 = clean shutdown)."""
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for name, p in self.procs:
            try:
                codes[name] = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = None
        return codes


class AlertCollector(threading.Thread):
    """Subscribes to the alerts topic from the beginning and keeps (record, broker timestamp ms) pairs.

    Decodes with only ``schemas/`` (the registry), as any subscriber would.
    """

    def __init__(self, settings: Settings, registry: SchemaRegistry | None = None) -> None:
        super().__init__(daemon=True, name="alert-collector")
        self.settings, self.registry = settings, registry or SchemaRegistry.load()
        self.alerts: list[tuple[dict[str, Any], int]] = []
        self.undecodable = 0
        self._stop_flag = threading.Event()
        self.ready = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        topic = self.settings.topic("alerts")
        consumer = Consumer(
            {
                **client_config(self.settings),
                "group.id": f"{self.settings.consumer_group_prefix}-collector-{os.getpid()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        meta = consumer.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        consumer.assign(parts)
        self.ready.set()
        try:
            while not self._stop_flag.is_set():
                msg = consumer.poll(0.2)
                if msg is None or is_consumer_error(msg, "alert collector"):
                    continue
                try:
                    _, record = decode(self.registry, msg.value() or b"", expect="alert")
                except ValueError:
                    self.undecodable += 1
                    continue
                with self._lock:
                    self.alerts.append((record, int(msg.timestamp()[1])))
        finally:
            consumer.close()

    def snapshot(self) -> list[tuple[dict[str, Any], int]]:
        with self._lock:
            return list(self.alerts)

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(10)


@dataclass
class Progress:
    """How far the night has got, from the database."""

    exposures: int = 0
    reduced: int = 0
    no_reference: int = 0
    subtracted: int = 0
    detected: int = 0
    sightings: int = 0
    good_sightings: int = 0
    alerts_logged: int = 0

    @property
    def through_subtract(self) -> int:
        return self.no_reference + self.subtracted


def progress(session: Session, exposure_ids: Sequence[int]) -> Progress:
    """Counts per stage for the given exposures."""
    ids = list(exposure_ids)
    img = select(Image.id).where(Image.exposure_id.in_(ids))
    p = Progress(exposures=len(ids))
    p.reduced = session.scalar(select(func.count()).select_from(img.subquery())) or 0
    p.no_reference = (
        session.scalar(
            select(func.count()).where(
                Image.exposure_id.in_(ids), Image.extra["subtraction"].astext.is_not(None)
            )
        )
        or 0
    )
    subs = select(SubtractionImage).where(SubtractionImage.new_image_id.in_(img))
    p.subtracted = session.scalar(select(func.count()).select_from(subs.subquery())) or 0
    p.detected = (
        session.scalar(
            select(func.count()).select_from(subs.where(SubtractionImage.n_sightings.is_not(None)).subquery())
        )
        or 0
    )
    p.sightings = (
        session.scalar(
            select(func.count(Sighting.id))
            .join(SubtractionImage, Sighting.subtraction_id == SubtractionImage.id)
            .where(SubtractionImage.new_image_id.in_(img))
        )
        or 0
    )
    p.good_sightings = (
        session.scalar(
            select(func.count(Sighting.id))
            .join(SubtractionImage, Sighting.subtraction_id == SubtractionImage.id)
            .where(SubtractionImage.new_image_id.in_(img), Sighting.is_good.is_(True))
        )
        or 0
    )
    p.alerts_logged = (
        session.scalar(
            select(func.count(AlertLog.id))
            .join(Sighting, AlertLog.sighting_id == Sighting.id)
            .join(SubtractionImage, Sighting.subtraction_id == SubtractionImage.id)
            .where(SubtractionImage.new_image_id.in_(img))
        )
        or 0
    )
    return p


def wait_for_night(
    session_factory: sessionmaker[Session],
    exposure_ids: Sequence[int],
    collector: AlertCollector | None,
    *,
    timeout: float,
    on_progress: Callable[[Progress, int], None] | None = None,
    services: ServiceProcesses | None = None,
    poll_s: float = 0.5,
    received_before: int = 0,
) -> Progress:
    """Wait until every exposure is reduced, subtracted (or has no reference), detected and alerted.

    ``received_before``: alerts the collector had received before these exposures were ingested (they do
    not count towards these exposures' alerts).
    """
    deadline = time.monotonic() + timeout
    while True:
        with session_factory() as s:
            p = progress(s, exposure_ids)
        received = len(collector.snapshot()) - received_before if collector is not None else 0
        if on_progress:
            on_progress(p, received)
        done = (
            p.reduced == p.exposures
            and p.through_subtract == p.exposures
            and p.detected == p.subtracted
            and p.alerts_logged == p.good_sightings
            and (collector is None or received >= p.alerts_logged)
        )
        if done:
            return p
        if services is not None and not all(services.alive().values()):
            dead = [n for n, ok in services.alive().items() if not ok]
            raise RuntimeError(f"service(s) exited early: {', '.join(dead)} (see their logs)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"night not through after {timeout:.0f} s: {p}")
        time.sleep(poll_s)


def table_counts(session: Session) -> dict[str, int]:
    """Rows per table."""
    return {t.__tablename__: int(session.scalar(select(func.count()).select_from(t)) or 0) for t in TABLES}


def alert_latencies(session: Session, alerts: Sequence[tuple[dict[str, Any], int]]) -> np.ndarray:
    """Seconds from the exposure's ingestion to the alert's broker timestamp, one per alert."""
    out = []
    for record, ts_ms in alerts:
        ingested = session.scalar(
            select(Exposure.ingested_at)
            .join(Image, Image.exposure_id == Exposure.id)
            .join(SubtractionImage, SubtractionImage.new_image_id == Image.id)
            .where(SubtractionImage.id == record["sighting"]["subtractionId"])
        )
        if ingested is not None:
            out.append(ts_ms / 1000.0 - ingested.timestamp())
    return np.asarray(out, dtype=float)
