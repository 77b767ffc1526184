"""A service's /healthz, /readyz and /metrics, from a run loop against the real broker and PostgreSQL.

The loop runs in a thread on a free port; three good messages and one bad one go through it. /metrics then
counts 3 processed and 1 dead-lettered with 3 observations in the processing-seconds histogram and the
lag gauges at 0; /healthz and /readyz answer 200. A loop whose database does not exist answers /readyz with
503 naming the database, while /healthz stays 200 (the loop turns).
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.errors import ImpossibleValue
from seechange.streaming.framing import encode
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import MessageContext, OutEvent, run_service
from tests.integration._runloop_worker import exposure_record, image_event, isolated_topics, produce_values


@pytest.fixture()
def settings(test_settings: Settings) -> Iterator[Settings]:
    with isolated_topics(test_settings, "met") as isolated:
        yield isolated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(port, "/healthz")
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing on port {port}")


def _samples(text: str, service: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("service") == service and "le" not in s.labels:
                key = s.name + "".join(f"[{s.labels[k]}]" for k in ("partition",) if k in s.labels)
                out[key] = s.value
    return out


def _start(
    settings: Settings, name: str, sessions: sessionmaker[Session], stop: threading.Event
) -> threading.Thread:
    def handler(session: Session, record: dict[str, Any], ctx: MessageContext) -> list[OutEvent]:
        if record["field"] == "BAD":
            raise ImpossibleValue(f"exposure {record['exposure_id']}: field BAD")
        return [image_event(record, record["exposure_id"] + 1000)]

    thread = threading.Thread(
        target=run_service,
        kwargs={
            "settings": settings,
            "name": name,
            "input_topic": "exposure-ready",
            "input_schema": "exposure_ready",
            "handler": handler,
            "session_factory": sessions,
            "stop_event": stop,
            "install_signal_handlers": False,
        },
        daemon=True,
    )
    thread.start()
    return thread


def test_metrics_health_and_readiness(settings: Settings, db_engine: Engine) -> None:
    registry = SchemaRegistry.load()
    name = f"met{uuid.uuid4().hex[:6]}"
    port = _free_port()
    served = settings.model_copy(update={"metrics_port": port})
    records = [exposure_record(i) for i in (1, 2, 3)] + [exposure_record(4, field="BAD")]
    produce_values(
        settings,
        "exposure-ready",
        [(str(r["exposure_id"]), encode(registry, "exposure_ready", r)) for r in records],
    )
    stop = threading.Event()
    thread = _start(served, name, sessionmaker(db_engine), stop)
    try:
        _wait_http(port)
        deadline = time.monotonic() + 60
        while True:
            samples = _samples(_get(port, "/metrics")[1], name)
            done = samples.get("seechange_messages_processed_total", 0) + samples.get(
                "seechange_messages_dead_lettered_total", 0
            )
            if done >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert samples["seechange_messages_processed_total"] == 3
        assert samples["seechange_messages_dead_lettered_total"] == 1
        assert samples.get("seechange_messages_failed_total", 0) == 0
        assert samples["seechange_processing_seconds_count"] == 3
        assert samples["seechange_processing_seconds_sum"] > 0
        time.sleep(6)  # one lag update (every 5 s)
        lags = {
            k: v
            for k, v in _samples(_get(port, "/metrics")[1], name).items()
            if k.startswith("seechange_consumer_lag")
        }
        assert sorted(lags) == ["seechange_consumer_lag[0]", "seechange_consumer_lag[1]"] and set(
            lags.values()
        ) == {0}
        code, body = _get(port, "/healthz")
        assert code == 200 and body.startswith("ok"), body
        code, body = _get(port, "/readyz")
        assert (code, body) == (200, "ready\n")
        assert _get(port, "/nope")[0] == 404
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_readyz_names_the_database_that_does_not_answer(settings: Settings) -> None:
    broken = create_engine(settings.database_url.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:6]}")
    port = _free_port()
    stop = threading.Event()
    thread = _start(
        settings.model_copy(update={"metrics_port": port}), "metbroken", sessionmaker(broken), stop
    )
    try:
        _wait_http(port)
        code, body = _get(port, "/readyz")
        assert code == 503 and body.startswith("database: OperationalError"), body
        assert _get(port, "/healthz")[0] == 200
    finally:
        stop.set()
        thread.join(30)
        broken.dispose()


def test_status_shows_lag_dead_letters_and_last_errors(settings: Settings, db_engine: Engine) -> None:
    from click.testing import CliRunner

    from seechange.commands.status import status
    from seechange.streaming.status import pipeline_status

    registry = SchemaRegistry.load()
    records = [exposure_record(i) for i in (1, 2)] + [exposure_record(3, field="BAD")]
    produce_values(
        settings,
        "exposure-ready",
        [(str(r["exposure_id"]), encode(registry, "exposure_ready", r)) for r in records],
    )
    before = {s.stage: s for s in pipeline_status(settings)}
    assert before["reduce"].total_lag == 3 and before["reduce"].dead_letters == 0
    stop = threading.Event()
    thread = _start(settings, "reduce", sessionmaker(db_engine), stop)  # as the reduce service's group
    try:
        deadline = time.monotonic() + 60
        while pipeline_status(settings)[0].total_lag and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    after = {s.stage: s for s in pipeline_status(settings)}
    reduce = after["reduce"]
    assert reduce.total_lag == 0 and sorted(reduce.lag) == [0, 1]
    assert reduce.dead_letters == 1
    [error] = reduce.last_errors
    assert error.headers["error_class"] == "ImpossibleValue" and "field BAD" in error.headers["error_message"]
    assert after["subtract"].total_lag == 2  # the two image-reduced events, not consumed by anyone
    result = CliRunner().invoke(status, ["--last", "1"], obj=settings)
    assert result.exit_code == 0, result.output
    assert f"lag on {settings.topic('exposure-ready')} 0 [0]=0 [1]=0" in result.output
    assert f"dead letters on {settings.topic('exposure-ready')}.dlq: 1" in result.output
    assert "ImpossibleValue: exposure 3: field BAD" in result.output
