"""At least once in, idempotent out, with real processes: SIGKILL between the DB commit and the offset commit,
and a clean exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from seechange.config import PROJECT_ROOT, Settings
from seechange.streaming.framing import decode, encode
from seechange.streaming.registry import SchemaRegistry
from tests.integration._runloop_worker import (
    consume_all,
    create_tables,
    drop_tables,
    exposure_record,
    isolated_topics,
    produce_values,
    topic_size,
)


@pytest.fixture()
def settings(test_settings: Settings) -> Iterator[Settings]:
    with isolated_topics(test_settings, "alo") as isolated:
        yield isolated


@pytest.fixture()
def table(db_engine: Engine) -> Iterator[str]:
    name = f"alo_{uuid.uuid4().hex[:8]}"
    create_tables(db_engine, name)
    yield name
    drop_tables(db_engine, name)


def _start_worker(settings: Settings, database_url: str, table: str, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEECHANGE_", "WORKER_"))}
    env.update(
        {
            "SEECHANGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "SEECHANGE_DATABASE_URL": database_url,
            "SEECHANGE_TOPIC_PREFIX": settings.topic_prefix,
            "SEECHANGE_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
            "WORKER_TABLE": table,
            **extra,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration._runloop_worker"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


class _StderrWatcher:
    """Collects a worker's stderr in a thread and lets the test wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(needle in line for line in self.lines), timeout)

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)


def _rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql)).all()]


def test_sigkill_after_db_commit_redelivers_and_writes_once(
    settings: Settings, database_url: str, db_engine: Engine, table: str
) -> None:
    registry = SchemaRegistry.load()
    [(partition, offset)] = produce_values(
        settings, "exposure-ready", [("exp-7", encode(registry, "exposure_ready", exposure_record(7)))]
    )

    first = _start_worker(
        settings, database_url, table, WORKER_KILL_AFTER_DB_COMMIT="1", WORKER_IDLE_TIMEOUT="30"
    )
    log1 = _StderrWatcher(first)
    assert first.wait(timeout=30) == -signal.SIGKILL, log1.text()
    assert _rows(db_engine, f"SELECT exposure_id, topic_offset FROM {table}_attempts") == [(7, offset)]
    assert topic_size(settings, "image-reduced") == 0  # killed before producing and before the offset commit

    second = _start_worker(settings, database_url, table, WORKER_MAX_MESSAGES="1", WORKER_IDLE_TIMEOUT="30")
    log2 = _StderrWatcher(second)
    assert second.wait(timeout=40) == 0, log2.text()

    attempts = _rows(db_engine, f"SELECT exposure_id, topic_offset, pid FROM {table}_attempts ORDER BY id")
    assert [(e, o) for e, o, _ in attempts] == [(7, offset), (7, offset)]  # the same message, twice
    assert [p for _, _, p in attempts] == [first.pid, second.pid]
    assert _rows(db_engine, f"SELECT exposure_id, image_id, field FROM {table}_rows") == [(7, 1007, "COSMOS")]
    out = consume_all(settings, "image-reduced", expect=1)
    assert [decode(registry, m.value() or b"", expect="image_reduced")[1]["exposure_id"] for m in out] == [7]
    assert topic_size(settings, "exposure-ready.dlq") == 0
    assert "processed=1 dead_lettered=0" in log2.text()
    assert partition in (0, 1)


def test_sigterm_exits_cleanly(settings: Settings, database_url: str, table: str) -> None:
    worker = _start_worker(settings, database_url, table)  # idle topic, no stop rule but the signal
    log = _StderrWatcher(worker)
    try:
        assert log.wait_for("assigned", timeout=30), log.text()
        start = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0
        elapsed = time.monotonic() - start
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert elapsed < 5.0
    text_ = log.text()
    assert "received SIGTERM" in text_ and "worker: closed: processed=0" in text_
