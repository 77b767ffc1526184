"""A single-node Apache Kafka broker (KRaft, loopback only) run from the Maven Central jars.

Layout under ``settings.cache_dir``::

    kafka-<version>/libs/       broker jars (fetched once with Maven; ``.complete`` marks a finished fetch)
    kafka/server.properties     broker + controller configuration (rewritten at each start)
    kafka/log4j2.properties     Log4j 2 configuration; broker log in kafka/kafka.log
    kafka/data/                 log.dirs (formatted once)
    kafka/stdout.log, kafka.pid the detached JVM's console output and pid
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from seechange.config import Settings
from seechange.localservices.process import (
    ServiceError,
    pid_alive,
    pid_cmdline,
    port_open,
    read_pid,
    require_tool,
    tail,
    terminate,
)

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAIN_CLASS = "kafka.Kafka"
JVM_HEAP = ("-Xms256m", "-Xmx512m")
POM_RESOURCE = "kafka-broker.pom.xml"


@dataclass(frozen=True)
class KafkaPaths:
    """Where the local broker keeps its jars, configuration, data, logs and pid."""

    libs: Path
    fetched_marker: Path
    root: Path

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def broker_log(self) -> Path:
        return self.root / "kafka.log"

    @property
    def stdout_log(self) -> Path:
        return self.root / "stdout.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"


def kafka_paths(settings: Settings) -> KafkaPaths:
    """The file layout of the local broker for ``settings.cache_dir`` and ``settings.kafka_version``."""
    cache = settings.cache_dir.resolve()
    version_dir = cache / f"kafka-{settings.kafka_version}"
    return KafkaPaths(
        libs=version_dir / "libs", fetched_marker=version_dir / ".complete", root=cache / "kafka"
    )


def bootstrap_address(settings: Settings) -> str:
    """``host:port`` of the local broker's client listener."""
    return f"{HOST}:{settings.kafka_port}"


def fetch_jars(settings: Settings) -> Path:
    """Fetch the broker jars with Maven into the cache (once), and return the ``libs`` directory.

    Raises
    ------
    ServiceError
        If ``mvn`` is missing or the fetch fails (the message ends with Maven's output tail).
    """
    paths = kafka_paths(settings)
    if paths.fetched_marker.exists() and any(paths.libs.glob("kafka_2.13-*.jar")):
        return paths.libs
    mvn = require_tool("mvn", f"fetch the Kafka {settings.kafka_version} broker jars from Maven Central")
    version_dir = paths.libs.parent
    version_dir.mkdir(parents=True, exist_ok=True)
    pom = version_dir / "pom.xml"
    pom.write_bytes(resources.files("seechange.localservices").joinpath(POM_RESOURCE).read_bytes())
    partial = version_dir / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    mvn_log = version_dir / "mvn.log"
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), f"-Dkafka.version={settings.kafka_version}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={partial}",
    ]  # fmt: skip
    logger.info("fetching Kafka %s jars with Maven into %s", settings.kafka_version, paths.libs)
    started = time.monotonic()
    with open(mvn_log, "wb") as out:
        rc = subprocess.run(
            cmd, cwd=version_dir, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    if rc != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        raise ServiceError(
            f"Maven could not fetch Kafka {settings.kafka_version} (exit {rc}; log {mvn_log}):\n{tail(mvn_log)}"
        )
    shutil.rmtree(paths.libs, ignore_errors=True)
    partial.rename(paths.libs)
    paths.fetched_marker.write_text(f"{settings.kafka_version}\n")
    logger.info("fetched %d jars in %.1f s", len(list(paths.libs.glob("*.jar"))), time.monotonic() - started)
    return paths.libs


def server_properties(settings: Settings, data_dir: Path) -> str:
    """The broker configuration: one KRaft node acting as broker and controller on 127.0.0.1."""
    port, cport = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{cport}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # one broker: the internal topics must not wait for replicas that will never exist
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": str(settings.partitions),
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def log4j2_properties(log_file: Path) -> str:
    """A Log4j 2 configuration sending INFO and above to ``log_file`` (the Kafka request log stays quiet)."""
    return (
        "status=warn\n"
        "appender.file.type=File\n"
        "appender.file.name=FILE\n"
        f"appender.file.fileName={log_file}\n"
        "appender.file.layout.type=PatternLayout\n"
        "appender.file.layout.pattern=[%d] %p %m (%c)%n\n"
        "rootLogger.level=INFO\n"
        "rootLogger.appenderRef.file.ref=FILE\n"
        "logger.request.name=kafka.request.logger\n"
        "logger.request.level=WARN\n"
        "logger.state.name=state.change.logger\n"
        "logger.state.level=WARN\n"
    )


def _java_command(java: str, paths: KafkaPaths, main_class: str, *args: str) -> list[str]:
    return [
        java, *JVM_HEAP, "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.log4j_properties}",
        "-cp", f"{paths.libs}/*", main_class, *args,
    ]  # fmt: skip


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes in URL-safe base64 without padding (never starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def format_storage(settings: Settings, java: str) -> None:
    """Format ``log.dirs`` once (skipped when ``meta.properties`` already exists)."""
    paths = kafka_paths(settings)
    if (paths.data / "meta.properties").exists():
        return
    paths.data.mkdir(parents=True, exist_ok=True)
    out_file = paths.root / "format.log"
    # with a static controller.quorum.voters the storage is formatted WITHOUT --standalone
    cmd = _java_command(java, paths, "kafka.tools.StorageTool", "format", "-t", _new_cluster_id(),
                        "-c", str(paths.server_properties), "-g")  # fmt: skip
    with open(out_file, "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise ServiceError(f"formatting Kafka storage failed (exit {rc}):\n{tail(out_file)}")


def kafka_pid(settings: Settings) -> int | None:
    """The pid of the running local broker of this cache directory, or None."""
    pid = read_pid(kafka_paths(settings).pid_file)
    if pid is None or not pid_alive(pid):
        return None
    cmdline = pid_cmdline(pid)
    if cmdline and MAIN_CLASS not in cmdline.split():
        return None  # the pid was reused by another program
    return pid


def kafka_answers(bootstrap: str, *, timeout: float = 5.0) -> bool:
    """True when a Kafka AdminClient gets cluster metadata from ``bootstrap`` within ``timeout`` seconds."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000})
    try:
        admin.list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False


def start_kafka(settings: Settings, *, timeout: float = 60.0) -> int:
    """Fetch the jars if needed, configure, format and start the broker detached; wait until it answers.

    Equivalent to :func:`launch_kafka` followed by :func:`wait_for_kafka`.

    Parameters
    ----------
    settings : Settings
        Uses ``cache_dir``, ``kafka_version``, ``kafka_port``, ``kafka_controller_port``, ``partitions``.
    timeout : float
        Seconds to wait for the client port and an AdminClient metadata answer.

    Returns
    -------
    int
        The broker's pid (also written to ``kafka/kafka.pid``).

    Raises
    ------
    ServiceError
        If java or mvn is missing, a port is taken by another program, or the broker dies or does not
        answer in time (the message then ends with the tail of its log).
    """
    return wait_for_kafka(settings, launch_kafka(settings), timeout=timeout)


def launch_kafka(settings: Settings) -> subprocess.Popen[bytes]:
    """Fetch the jars if needed, configure, format and start the broker detached, without waiting for it.

    Raises
    ------
    ServiceError
        If java or mvn is missing, a port is taken by another program, or formatting fails.
    """
    java = require_tool("java", "run the local Kafka broker (install a JDK 17+)")
    for port in (settings.kafka_port, settings.kafka_controller_port):
        if port_open(HOST, port):
            raise ServiceError(
                f"port {HOST}:{port} is already in use by another program; "
                "set SEECHANGE_KAFKA_PORT / SEECHANGE_KAFKA_CONTROLLER_PORT or stop it"
            )
    fetch_jars(settings)
    paths = kafka_paths(settings)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.server_properties.write_text(server_properties(settings, paths.data))
    paths.log4j_properties.write_text(log4j2_properties(paths.broker_log))
    format_storage(settings, java)

    cmd = _java_command(java, paths, MAIN_CLASS, str(paths.server_properties))
    with open(paths.stdout_log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=paths.root, start_new_session=True)  # fmt: skip
    paths.pid_file.write_text(f"{proc.pid}\n")
    logger.info("started Kafka broker pid %d on %s", proc.pid, bootstrap_address(settings))
    return proc


def wait_for_kafka(settings: Settings, proc: subprocess.Popen[bytes], *, timeout: float = 60.0) -> int:
    """Wait until the broker started by :func:`launch_kafka` answers; return its pid.

    Raises
    ------
    ServiceError
        If the broker exits or does not answer within ``timeout`` seconds (it is then stopped).
    """
    paths = kafka_paths(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            paths.pid_file.unlink(missing_ok=True)
            raise ServiceError(
                f"the Kafka broker exited with status {proc.returncode} during start-up "
                f"(logs {paths.broker_log}, {paths.stdout_log}):\n{tail(paths.broker_log)}\n{tail(paths.stdout_log)}"
            )
        if port_open(HOST, settings.kafka_port) and kafka_answers(bootstrap_address(settings), timeout=2.0):
            return proc.pid
        time.sleep(0.2)
    terminate(proc.pid, timeout=10.0)
    paths.pid_file.unlink(missing_ok=True)
    raise ServiceError(
        f"the Kafka broker did not answer within {timeout:.0f} s (log {paths.broker_log}):\n"
        f"{tail(paths.broker_log)}"
    )


def stop_kafka(settings: Settings, *, timeout: float = 30.0) -> bool:
    """Stop the local broker (SIGTERM, then SIGKILL after ``timeout`` seconds).

    Returns
    -------
    bool
        True when a running broker was stopped, False when none was running.
    """
    paths = kafka_paths(settings)
    pid = kafka_pid(settings)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return False
    logger.info("stopping Kafka broker pid %d", pid)
    terminate(pid, timeout=timeout)
    paths.pid_file.unlink(missing_ok=True)
    return True
