"""Settings, read once at start-up from an optional TOML file plus ``SEECHANGE_*`` environment variables.

Library code never reads the environment: ``main()`` builds one frozen :class:`Settings` and passes it down.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from seechange.parameters import default_threads

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """All service settings. Empty ``kafka_bootstrap`` / ``database_url`` mean "the local services"."""

    model_config = SettingsConfigDict(env_prefix="SEECHANGE_", frozen=True, extra="ignore")

    kafka_bootstrap: str = ""
    database_url: str = ""
    data_dir: Path = Field(default=PROJECT_ROOT / "data")
    cache_dir: Path = Field(default=PROJECT_ROOT / ".cache")
    topic_prefix: str = ""
    # Kafka security, passed to every client (seechange.streaming.kafka_config.client_config); empty = plain
    kafka_security_protocol: str = ""  #: e.g. "SASL_SSL", "SSL"
    kafka_sasl_mechanism: str = ""  #: e.g. "SCRAM-SHA-512", "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")  #: never logged (shown as **********)
    kafka_ssl_ca_location: str = ""  #: CA certificate file of the brokers
    partitions: int = 4
    kafka_port: int = 39092
    kafka_controller_port: int = 39093
    kafka_version: str = "4.1.1"
    consumer_group_prefix: str = "seechange"
    association_radius_arcsec: float = 1.5
    alert_history_days: float = 30.0  #: window of the packets' forced photometry and limits, days
    params_file: Path | None = None  # TOML with [reduce], [reference], [subtract], [detect] tables
    log_level: str = "INFO"
    log_format: str = "text"  #: "json": one JSON object per log line (seechange.logformat)
    threads: int = Field(default_factory=default_threads, ge=1)  # per process; default: the machine's cores
    # error policy of the stage services (see seechange.streaming.runloop)
    max_consecutive_errors: int = 3  #: unexpected handler failures in a row before a service stops
    # operations (seechange.streaming.metrics): /metrics, /healthz, /readyz of a service on this port
    metrics_port: int | None = None  #: None: no HTTP server; 0: any free port (tests)
    metrics_host: str = "127.0.0.1"  #: "0.0.0.0" to be scraped from other hosts / containers
    health_stall_s: float = Field(
        default=300.0, gt=0
    )  #: /healthz fails when the loop has not turned for this long
    # TEST ONLY (seechange.streaming.faults): "<service>:<point>" kills that service there; empty = never
    fault_point: str = ""
    fault_after: int = Field(default=1, ge=1)  #: the fault fires on this pass through its point

    def topic(self, name: str) -> str:
        """Full topic name with the configured prefix."""
        return f"{self.topic_prefix}{name}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings: defaults < config file (TOML, keys as field names) < environment < ``overrides``."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            file_values = tomllib.load(fh).get("seechange", {})
    env_only = Settings()
    merged: dict[str, Any] = dict(file_values)
    for name in Settings.model_fields:
        if name in env_only.model_fields_set:
            merged[name] = getattr(env_only, name)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return Settings.model_validate(merged) if not merged else Settings(**merged)
