"""``seechange services up / down / status``: the local Kafka broker and PostgreSQL, or the configured ones.

A service whose address is configured (``SEECHANGE_KAFKA_BOOTSTRAP`` / ``SEECHANGE_DATABASE_URL``) is only
checked, never started or stopped. Otherwise the local one is started (or reused when it already runs).
``cache_dir/services.json`` records what ``up`` started, so that ``down`` stops exactly that.
"""

from __future__ import annotations

import fcntl
import json
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from seechange.config import Settings
from seechange.localservices import kafka, postgres
from seechange.localservices.process import ServiceError
from seechange.streaming.topics import ensure_topics, topic_names

logger = logging.getLogger(__name__)

KAFKA = "kafka"
POSTGRES = "postgres"


@dataclass(frozen=True)
class Endpoints:
    """Where the services answer, and which of them this call started."""

    kafka_bootstrap: str
    database_url: str
    started: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``seechange services status``."""

    service: str
    where: str
    running: bool
    pid: int | None
    managed: str  # "local" (started by `services up`) or "external" (configured address)


def _state_file(settings: Settings) -> Path:
    return settings.cache_dir.resolve() / "services.json"


def _read_state(settings: Settings) -> set[str]:
    try:
        return set(json.loads(_state_file(settings).read_text()).get("started", []))
    except (OSError, ValueError):
        return set()


def _write_state(settings: Settings, started: set[str]) -> None:
    path = _state_file(settings)
    if started:
        path.write_text(json.dumps({"started": sorted(started)}) + "\n")
    else:
        path.unlink(missing_ok=True)


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialise up/down between processes sharing one cache directory (e.g. parallel test workers)."""
    cache = settings.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "services.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_external_kafka(bootstrap: str) -> None:
    if not kafka.kafka_answers(bootstrap, timeout=10.0):
        raise ServiceError(f"the configured Kafka ({bootstrap}, SEECHANGE_KAFKA_BOOTSTRAP) does not answer")


def _check_external_database(url: str) -> None:
    if not postgres.database_answers(url):
        shown = url.split("@")[-1]
        raise ServiceError(f"the configured database (…@{shown}, SEECHANGE_DATABASE_URL) does not answer")


def up(settings: Settings, *, create_topics: bool = True) -> Endpoints:
    """Make Kafka and PostgreSQL available and create the pipeline topics.

    Parameters
    ----------
    settings : Settings
        Configured addresses win; empty ones mean the local services of ``settings.cache_dir``.
    create_topics : bool
        Create :func:`seechange.streaming.topics.topic_names` with ``settings.partitions`` partitions.

    Returns
    -------
    Endpoints
        The addresses, and the names of the services this call started (empty when all were reused or
        external, so a second call returns the same addresses and ``started == []``).

    Raises
    ------
    ServiceError
        A configured service does not answer, a tool is missing, or a local service fails to start.
    """
    started: list[str] = []
    with _locked(settings):
        recorded = _read_state(settings)
        broker: subprocess.Popen[bytes] | None = None
        if settings.kafka_bootstrap:
            _check_external_kafka(settings.kafka_bootstrap)
            bootstrap = settings.kafka_bootstrap
        else:
            if kafka.kafka_pid(settings) is None and _foreign_broker(settings):
                # a broker another checkout (or a person) started on our port: reuse it, never stop it
                logger.info(
                    "reusing the Kafka broker already answering on %s", kafka.bootstrap_address(settings)
                )
            elif kafka.kafka_pid(settings) is None:
                broker = kafka.launch_kafka(settings)  # the JVM boots while PostgreSQL starts
                started.append(KAFKA)
                recorded.add(KAFKA)
                _write_state(settings, recorded)
            bootstrap = kafka.bootstrap_address(settings)
        if settings.database_url:
            _check_external_database(settings.database_url)
            database_url = settings.database_url
        else:
            if postgres.postgres_pid(settings) is None:
                started.append(POSTGRES)
                recorded.add(POSTGRES)
            postgres.start_postgres(settings)  # also reuses, and creates database `seechange` if missing
            database_url = postgres.local_url(settings)
        _write_state(settings, recorded)
        if broker is not None:
            kafka.wait_for_kafka(settings, broker)
    if create_topics:
        ensure_topics(bootstrap, topic_names(settings), settings.partitions)
    return Endpoints(kafka_bootstrap=bootstrap, database_url=database_url, started=started)


def _foreign_broker(settings: Settings) -> bool:
    """True when a Kafka broker we did not start answers on the configured local port."""
    return kafka.port_open(kafka.HOST, settings.kafka_port) and kafka.kafka_answers(
        kafka.bootstrap_address(settings), timeout=3.0
    )


def down(settings: Settings) -> list[str]:
    """Stop the local services that ``up`` started for this cache directory.

    Returns
    -------
    list of str
        Names of the services that were running and are now stopped.
    """
    stopped: list[str] = []
    with _locked(settings):
        recorded = _read_state(settings)
        if KAFKA in recorded and kafka.stop_kafka(settings):
            stopped.append(KAFKA)
        if POSTGRES in recorded and postgres.stop_postgres(settings):
            stopped.append(POSTGRES)
        _write_state(settings, set())
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    """One row per service: where it is, whether it answers, and the local pid."""
    rows = []
    if settings.kafka_bootstrap:
        ok = kafka.kafka_answers(settings.kafka_bootstrap, timeout=3.0)
        rows.append(ServiceStatus(KAFKA, settings.kafka_bootstrap, ok, None, "external"))
    else:
        pid = kafka.kafka_pid(settings)
        if pid is None and _foreign_broker(settings):
            rows.append(ServiceStatus(KAFKA, kafka.bootstrap_address(settings), True, None, "reused"))
        else:
            rows.append(
                ServiceStatus(KAFKA, kafka.bootstrap_address(settings), pid is not None, pid, "local")
            )
    if settings.database_url:
        ok = postgres.database_answers(settings.database_url)
        rows.append(ServiceStatus(POSTGRES, settings.database_url.split("@")[-1], ok, None, "external"))
    else:
        pid = postgres.postgres_pid(settings)
        where = str(postgres.pgdata_dir(settings)) if pid is None else postgres.local_url(settings)
        rows.append(ServiceStatus(POSTGRES, where, pid is not None, pid, "local"))
    return rows


def endpoints(settings: Settings, *, kafka_needed: bool = True, database_needed: bool = True) -> Settings:
    """A copy of ``settings`` with empty ``kafka_bootstrap`` / ``database_url`` filled from the local services.

    Every command that connects calls this first. Nothing is started or checked for configured addresses.

    Raises
    ------
    ServiceError
        If a needed local service is not running (the message says to run ``seechange services up``).
    """
    update: dict[str, str] = {}
    if kafka_needed and not settings.kafka_bootstrap:
        if kafka.kafka_pid(settings) is None and not _foreign_broker(settings):
            raise ServiceError(
                "Kafka is not running: run `seechange services up` or set SEECHANGE_KAFKA_BOOTSTRAP"
            )
        update["kafka_bootstrap"] = kafka.bootstrap_address(settings)
    if database_needed and not settings.database_url:
        if postgres.postgres_pid(settings) is None:
            raise ServiceError(
                "PostgreSQL is not running: run `seechange services up` or set SEECHANGE_DATABASE_URL"
            )
        update["database_url"] = postgres.local_url(settings)
    return settings.model_copy(update=update)
