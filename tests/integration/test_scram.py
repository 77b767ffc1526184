"""The client against a broker that wants SASL/SCRAM-SHA-512: a second local KRaft broker of its own (the
jars of the local services, a SASL_PLAINTEXT listener, users created when its storage is formatted).

Right credentials: every alert; a wrong password: none, and no password in the log."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from seechange.client import Connection, stream_alerts
from seechange.commands.stream import subscribe_cmd
from seechange.config import Settings
from seechange.localservices.kafka import kafka_paths, log4j2_properties
from seechange.streaming.framing import encode
from seechange.streaming.registry import SchemaRegistry
from tests.integration._alerts import TABLE, make_alert

HOST = "127.0.0.1"
ADMIN = ("admin", "admin-secret")
USER = ("alice", "alice-s3cret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _sasl(user: tuple[str, str]) -> dict[str, str]:
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user[0],
        "sasl.password": user[1],
    }


def _wait_until_it_answers(bootstrap: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **_sasl(ADMIN)})
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            admin.list_topics(timeout=2)
            return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def scram_broker(endpoints: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a SCRAM-SHA-512 broker started for this module (stopped afterwards)."""
    java = shutil.which("java")
    libs = kafka_paths(endpoints).libs
    if java is None or not libs.is_dir():
        pytest.skip("no java or no Kafka jars for a second broker")
    root = tmp_path_factory.mktemp("scram")
    port, cport = _free_port(), _free_port()
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN[0]}" password="{ADMIN[1]}";'
    )
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{cport}",
        "listeners": f"SASL_PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
        "advertised.listeners": f"SASL_PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
        "log.dirs": str(root / "data"),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
    }
    (root / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (root / "log4j2.properties").write_text(log4j2_properties(root / "kafka.log"))
    base = [java, "-Xms128m", "-Xmx384m", f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}"]
    base += ["-cp", f"{libs}/*"]
    users = [f"SCRAM-SHA-512=[name={u},password={p}]" for u, p in (ADMIN, USER)]
    fmt = [*base, "kafka.tools.StorageTool", "format", "-t", "c2NyYW0tdGVzdC1jbHVzdGVy", "-c"]
    fmt += [str(root / "server.properties")]
    for u in users:
        fmt += ["--add-scram", u]
    subprocess.run(fmt, check=True, capture_output=True, timeout=120)
    with open(root / "stdout.log", "wb") as out:
        proc = subprocess.Popen(
            [*base, "kafka.Kafka", str(root / "server.properties")], stdout=out, stderr=out
        )
    bootstrap = f"{HOST}:{port}"
    try:
        _wait_until_it_answers(bootstrap, proc, root / "kafka.log")
        yield bootstrap
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_scram_connection(scram_broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = SchemaRegistry.load()
    admin = AdminClient({"bootstrap.servers": scram_broker, **_sasl(ADMIN)})
    for future in admin.create_topics([NewTopic("alerts", 2, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": scram_broker, **_sasl(ADMIN)})
    for i in TABLE:
        producer.produce("alerts", key=str(i), value=encode(registry, "alert", make_alert(i)))
    assert producer.flush(30) == 0
    del admin, producer  # their threads would go on calling the broker after it stops

    conn = Connection(scram_broker, _sasl(USER))
    got = list(
        stream_alerts(conn, "alerts", start="beginning", stop_at_end=True, idle_timeout=30, registry=registry)
    )
    assert sorted(a.alert_id for a in got) == sorted(TABLE)

    props = tmp_path / "client.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in _sasl(USER).items()))
    out = CliRunner().invoke(
        subscribe_cmd,
        [
            "--bootstrap",
            scram_broker,
            "--kafka-config",
            str(props),
            "--from",
            "beginning",
            "--to-end",
            "--band",
            "r",
        ],
        obj=Settings(topic_prefix=""),
    )
    assert out.exit_code == 0, out.output
    assert sorted(int(line.split()[0]) for line in out.stdout.splitlines()) == [2, 3]

    caplog.set_level(logging.DEBUG)
    wrong = Connection(scram_broker, _sasl((USER[0], "not-the-password")))
    assert list(stream_alerts(wrong, "alerts", start="beginning", stop_at_end=True, idle_timeout=8)) == []
    assert USER[1] not in caplog.text and "not-the-password" not in caplog.text
