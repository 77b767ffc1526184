"""SASL/TLS settings reach every Kafka client configuration, and the password is never shown."""

from __future__ import annotations

from pydantic import SecretStr

from seechange.config import Settings
from seechange.orchestrate import settings_env
from seechange.streaming.kafka_config import client_config, consumer_config, producer_config
from seechange.streaming.stages import describe_settings

SECRET = "s3cr3t-pa55"


def _secure() -> Settings:
    return Settings(
        kafka_bootstrap="broker:9094",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="seechange",
        kafka_sasl_password=SecretStr(SECRET),
        kafka_ssl_ca_location="/etc/ca.pem",
        database_url="postgresql+psycopg2://u:dbpw@db/x",
    )


def test_every_client_gets_the_security_settings() -> None:
    settings = _secure()
    want = {
        "bootstrap.servers": "broker:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "seechange",
        "sasl.password": SECRET,
        "ssl.ca.location": "/etc/ca.pem",
    }
    assert client_config(settings) == want
    for config in (consumer_config(settings, "g"), producer_config(settings)):
        assert {k: config[k] for k in want} == want


def test_plain_settings_add_nothing() -> None:
    assert client_config(Settings(kafka_bootstrap="b:1")) == {"bootstrap.servers": "b:1"}


def test_passwords_are_never_logged_but_forwarded_to_children() -> None:
    settings = _secure()
    line = describe_settings(settings)
    assert SECRET not in line and "dbpw" not in line and "kafka_sasl_password=**********" in line
    assert SECRET not in repr(settings)
    assert settings_env(settings)["SEECHANGE_KAFKA_SASL_PASSWORD"] == SECRET
    assert Settings(kafka_sasl_password=SECRET).kafka_sasl_password.get_secret_value() == SECRET
