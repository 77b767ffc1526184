"""The local services answer for real: Kafka round trip, PostgreSQL queries, idempotent up, down, CLI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.orm
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from seechange.cli import main
from seechange.config import Settings, load_settings
from seechange.localservices import ServiceError, down, endpoints, status, up
from seechange.localservices.postgres import create_database, database_answers, drop_database
from seechange.localservices.process import port_open
from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

# ports for the throw-away services of test_down (not the session's 39092/39093)
DOWN_KAFKA_PORT, DOWN_CONTROLLER_PORT = 39492, 39493


def test_topic_names_has_all_nine_with_prefix() -> None:
    names = topic_names(load_settings(topic_prefix="p1-"))
    assert names == [
        "p1-exposure-ready", "p1-image-reduced", "p1-subtraction-done", "p1-sighting-found", "p1-alerts",
        "p1-exposure-ready.dlq", "p1-image-reduced.dlq", "p1-subtraction-done.dlq", "p1-sighting-found.dlq",
    ]  # fmt: skip


def test_up_is_idempotent(endpoints: Settings) -> None:
    again = up(load_settings())
    assert again.started == []
    assert again.kafka_bootstrap == endpoints.kafka_bootstrap
    assert again.database_url == endpoints.database_url
    rows = {row.service: row for row in status(load_settings())}
    assert rows["kafka"].running and rows["postgres"].running


def test_test_settings_topics_exist_with_two_partitions(test_settings: Settings) -> None:
    metadata = AdminClient({"bootstrap.servers": test_settings.kafka_bootstrap}).list_topics(timeout=10)
    for name in topic_names(test_settings):
        assert name.startswith(test_settings.topic_prefix)
        assert len(metadata.topics[name].partitions) == 2


def test_kafka_round_trip_is_byte_exact(test_settings: Settings) -> None:
    bootstrap = test_settings.kafka_bootstrap
    topic = f"{test_settings.topic_prefix}roundtrip"
    ensure_topics(bootstrap, [topic], 1)
    ensure_topics(bootstrap, [topic], 1)  # idempotent
    payload = bytes(range(256)) + b"\x00seechange\xff"
    try:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        producer.produce(topic, key=b"exp-42", value=payload, headers=[("origin", b"test")])
        assert producer.flush(15) == 0
        consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"{topic}-g", "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        })  # fmt: skip
        consumer.subscribe([topic])
        try:
            message = None
            for _ in range(60):
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    break
            assert message is not None and message.error() is None
            assert message.value() == payload
            assert message.key() == b"exp-42"
            assert message.headers() == [("origin", b"test")]
        finally:
            consumer.close()
    finally:
        delete_topics(bootstrap, [topic])


def test_postgres_answers_and_databases_come_and_go(endpoints: Settings) -> None:
    engine = sa.create_engine(endpoints.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar_one() == 1
        assert conn.execute(sa.text("select current_database()")).scalar_one() == "seechange"
    engine.dispose()
    name = f"seechange_tmp_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    assert create_database(endpoints.database_url, name) == url  # idempotent
    assert database_answers(url)
    drop_database(endpoints.database_url, name)
    assert not database_answers(url)


def test_configured_services_are_used_not_started(endpoints: Settings, tmp_path: Path) -> None:
    external = load_settings(
        cache_dir=tmp_path, kafka_bootstrap=endpoints.kafka_bootstrap, database_url=endpoints.database_url
    )
    result = up(external, create_topics=False)
    assert result.started == []
    assert (result.kafka_bootstrap, result.database_url) == (
        endpoints.kafka_bootstrap,
        endpoints.database_url,
    )
    assert [row.managed for row in status(external)] == ["external", "external"]
    assert down(external) == []  # nothing of ours to stop
    assert database_answers(endpoints.database_url)


def test_unreachable_configured_database_is_a_clear_error(endpoints: Settings, tmp_path: Path) -> None:
    bad = load_settings(
        cache_dir=tmp_path,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        database_url=f"postgresql+psycopg2://postgres@/seechange?host={tmp_path}",
    )
    with pytest.raises(ServiceError, match="configured database .* does not answer"):
        up(bad, create_topics=False)
    assert not (tmp_path / "pgdata").exists()  # nothing local was started instead


def test_down_stops_only_what_up_started(tmp_path: Path) -> None:
    # ports of its own: other checkouts on this machine may run this test at the same time
    kafka_port, controller_port = _free_port(), _free_port()
    settings = load_settings(
        cache_dir=tmp_path / "cache",
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        kafka_bootstrap="",
        database_url="",
    )
    first = up(settings)
    try:
        assert sorted(first.started) == ["kafka", "postgres"]
        assert first.kafka_bootstrap == f"127.0.0.1:{kafka_port}"
        filled = endpoints(settings)
        assert filled.kafka_bootstrap == first.kafka_bootstrap and filled.database_url == first.database_url
        assert database_answers(first.database_url)
        pids = {row.service: row.pid for row in status(settings)}
        assert all(pid is not None for pid in pids.values())
    finally:
        stopped = down(settings)
    assert sorted(stopped) == ["kafka", "postgres"]
    assert not port_open("127.0.0.1", kafka_port)
    assert [row.running for row in status(settings)] == [False, False]
    with pytest.raises(ServiceError, match="not running"):
        endpoints(settings)
    assert down(settings) == []


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_error_policy_is_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {
        "SEECHANGE_CACHE_DIR": str(tmp_path),
        "SEECHANGE_KAFKA_BOOTSTRAP": "",
        "SEECHANGE_DATABASE_URL": "",
        "SEECHANGE_KAFKA_PORT": str(_free_port()),  # no broker there, not even another checkout's
    }
    result = runner.invoke(main, ["topics", "create"], env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "seechange: error: Kafka is not running: run `seechange services up` or set SEECHANGE_KAFKA_BOOTSTRAP"
    ]
    debug = runner.invoke(main, ["--debug", "topics", "create"], env=env)
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith("or set SEECHANGE_KAFKA_BOOTSTRAP")


def test_cli_services_status_lists_both(endpoints: Settings) -> None:
    result = CliRunner().invoke(main, ["services", "status"])
    assert result.exit_code == 0, result.output
    assert "kafka" in result.stdout and "postgres" in result.stdout
    assert "yes" in result.stdout


def test_database_fixture_is_fresh_and_migrated(database_url: str, db_session: sa.orm.Session) -> None:
    from seechange.models.migrate import head_revision

    assert db_session.execute(sa.text("select current_database()")).scalar_one().startswith("seechange_test_")
    version = db_session.execute(sa.text("select version_num from alembic_version")).scalar_one()
    assert version == head_revision()


def test_shared_data_fixture_points_at_the_shared_folder(shared_data: Path) -> None:
    assert shared_data.name == "data" and shared_data.parent.name == "shared"
    assert any(shared_data.iterdir())


def test_missing_java_or_maven_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil

    from seechange.localservices.kafka import start_kafka

    java = shutil.which("java")
    settings = load_settings(cache_dir=tmp_path / "cache", kafka_port=DOWN_KAFKA_PORT + 10,
                             kafka_controller_port=DOWN_CONTROLLER_PORT + 10)  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ServiceError, match=r"^`java` not found on PATH"):
        start_kafka(settings)
    if java is not None:
        (bin_dir / "java").symlink_to(java)
        with pytest.raises(ServiceError, match=r"^`mvn` not found on PATH"):
            start_kafka(settings)
    assert not (tmp_path / "cache" / "kafka" / "kafka.pid").exists()
