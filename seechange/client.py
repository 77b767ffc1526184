"""The alert-stream client for brokers and scientists (the public name of :mod:`seechange.streaming.client`).

Importable without the pipeline: confluent-kafka, fastavro and the packaged schemas only. See
:func:`stream_alerts`, :class:`Connection`, :class:`AlertFilter` and the README's "Subscribing to alerts".
"""

from seechange.sphere import angular_sep_arcsec
from seechange.streaming.client import (
    Alert,
    AlertFilter,
    Connection,
    Skipped,
    Start,
    container_bytes,
    cutout_fits,
    read_container,
    start_offsets,
    stream_alerts,
)

__all__ = [
    "Alert",
    "AlertFilter",
    "Connection",
    "Skipped",
    "Start",
    "angular_sep_arcsec",
    "container_bytes",
    "cutout_fits",
    "read_container",
    "start_offsets",
    "stream_alerts",
]
