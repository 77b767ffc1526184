"""confluent-kafka (librdkafka) configuration dictionaries built from :class:`~seechange.config.Settings`,
and the one policy for errors a consumer's ``poll`` returns (:func:`is_consumer_error`).

The consumer settings serve at-least-once processing: offsets are committed by hand, only after the
database commit and the downstream delivery (see :mod:`seechange.streaming.runloop`); the producer is
idempotent and waits for all in-sync replicas.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException, Message

from seechange.config import Settings

log = logging.getLogger(__name__)

#: librdkafka's default would be 45 s; a dead instance's partitions move to a live one after this long.
DEFAULT_SESSION_TIMEOUT_MS = 10_000


def bootstrap_servers(settings: Settings) -> str:
    """The broker list: ``settings.kafka_bootstrap``, or the local services' broker when it is empty.

    ``127.0.0.1`` rather than ``localhost``: librdkafka tries ``::1`` first.
    """
    return settings.kafka_bootstrap or f"127.0.0.1:{settings.kafka_port}"


def client_config(settings: Settings) -> dict[str, Any]:
    """What every Kafka client of the pipeline needs: the brokers and, when configured, SASL/TLS.

    The password comes from ``settings.kafka_sasl_password`` (a secret: never logged, never forwarded
    anywhere but here and to child services).
    """
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers(settings)}
    if settings.kafka_security_protocol:
        config["security.protocol"] = settings.kafka_security_protocol
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


def consumer_config(
    settings: Settings,
    group_id: str,
    *,
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
    **overrides: Any,
) -> dict[str, Any]:
    """Configuration of a manual-commit consumer in group ``group_id``.

    Parameters
    ----------
    settings : Settings
        Source of the bootstrap servers.
    group_id : str
        Consumer group id.
    session_timeout_ms : int
        Session timeout, milliseconds (the broker allows 6000 to 300000 by default).
    **overrides
        librdkafka properties with dots written as given (pass a dict with ``**{"a.b": 1}``).

    Returns
    -------
    dict
        Ready for ``confluent_kafka.Consumer``.
    """
    config: dict[str, Any] = {
        **client_config(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 4),
        "enable.partition.eof": False,
        "client.id": group_id,
    }
    config.update(overrides)
    return config


def producer_config(settings: Settings, *, linger_ms: int = 5, **overrides: Any) -> dict[str, Any]:
    """Configuration of an idempotent producer (``acks=all``).

    Parameters
    ----------
    settings : Settings
        Source of the bootstrap servers.
    linger_ms : int
        How long to batch before sending, milliseconds; small, for latency.
    **overrides
        librdkafka properties.

    Returns
    -------
    dict
        Ready for ``confluent_kafka.Producer``.
    """
    config: dict[str, Any] = {
        **client_config(settings),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": linger_ms,
        # A delivery that has not succeeded after this long is reported failed; the run loop re-sends it.
        "delivery.timeout.ms": 30_000,
    }
    config.update(overrides)
    return config


def is_consumer_error(msg: Message, where: str) -> bool:
    """True when a polled ``msg`` is an error event rather than a message (skip it: it has been logged).

    Raises
    ------
    confluent_kafka.KafkaException
        For a fatal client error (the consumer cannot go on).
    """
    err = msg.error()
    if err is None:
        return False
    if err.fatal():
        raise KafkaException(err)
    log.warning("%s: consumer error: %s", where, err)
    return True
