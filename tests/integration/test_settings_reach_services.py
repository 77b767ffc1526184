"""Every setting reaches the service processes the orchestrator starts, config-file values included."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from seechange.config import Settings, load_settings
from seechange.orchestrate import ServiceProcesses, service_env
from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

START_TIMEOUT_S = 60.0


def _config_file(tmp_path: Path, base: Settings, tag: str) -> Path:
    """A ``--config`` file naming the test broker and database, and non-default values of other settings."""
    path = tmp_path / "seechange.toml"
    path.write_text(
        "[seechange]\n"
        f'kafka_bootstrap = "{base.kafka_bootstrap}"\n'
        f'database_url = "{base.database_url}"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        f'topic_prefix = "{tag}-"\n'
        f'consumer_group_prefix = "{tag}"\n'
        "association_radius_arcsec = 2.75\n"
        'log_level = "DEBUG"\n'
        "max_consecutive_errors = 7\n"
    )
    return path


def test_service_env_has_every_setting(test_settings: Settings, tmp_path: Path) -> None:
    settings = load_settings(_config_file(tmp_path, test_settings, "env"))
    env = service_env(settings)
    assert env["SEECHANGE_ASSOCIATION_RADIUS_ARCSEC"] == "2.75"
    assert env["SEECHANGE_LOG_LEVEL"] == "DEBUG"
    for name in Settings.model_fields:
        if getattr(settings, name) is not None:
            assert f"SEECHANGE_{name.upper()}" in env, name


def test_config_file_values_reach_a_service_process(test_settings: Settings, tmp_path: Path) -> None:
    tag = f"cfg{uuid.uuid4().hex[:6]}"
    settings = load_settings(_config_file(tmp_path, test_settings, tag))
    assert (settings.association_radius_arcsec, settings.log_level) == (2.75, "DEBUG")
    names = topic_names(settings)
    ensure_topics(settings.kafka_bootstrap, names, 1)
    services = ServiceProcesses(settings, tmp_path / "logs", stages=("alert",))
    services.start()
    log_file = tmp_path / "logs" / "alert-0.log"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while not line:
            text = log_file.read_text() if log_file.exists() else ""
            line = next((ln for ln in text.splitlines() if "effective settings:" in ln), "")
            if " as group " not in text:  # wait for the loop (and its SIGTERM handler) to run
                line = ""
            if not line:
                assert all(services.alive().values()), f"the service died:\n{text}"
                if time.monotonic() > deadline:
                    pytest.fail(f"no settings line after {START_TIMEOUT_S:.0f} s:\n{text}")
                time.sleep(0.3)
    finally:
        codes = services.stop()
        delete_topics(settings.kafka_bootstrap, names)
    fields = dict(part.split("=", 1) for part in line.split("effective settings: ", 1)[1].split())
    assert fields["association_radius_arcsec"] == "2.75"
    assert fields["log_level"] == "DEBUG"
    assert fields["max_consecutive_errors"] == "7"
    assert fields["topic_prefix"] == f"{tag}-" and fields["consumer_group_prefix"] == tag
    assert fields["data_dir"] == str(tmp_path / "data")
    assert codes == {"alert-0": 0}
