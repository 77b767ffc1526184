"""What a service shows an operator: Prometheus metrics, ``/healthz`` and ``/readyz`` on one HTTP port.

:class:`ServiceMonitor` serves, when ``settings.metrics_port`` is set (None, the default, serves nothing; 0 takes any free port):

- ``/metrics``: Prometheus text format (``prometheus-client``): messages processed, failed (retried
  attempts) and dead-lettered, processing seconds per message (histogram), consumer lag per partition and,
  at the alert service, the exposure-to-alert latency (histogram);
- ``/healthz``: 200 while the run loop is turning (it ticked within ``settings.health_stall_s``), else 503;
- ``/readyz``: 200 when the broker answers a metadata request and the database a ``SELECT 1``, else 503
  with the reason.

The metrics live in the process's default registry, labelled with the service name; the run loop updates
them whether or not the port is served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from seechange.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "ALERT_LATENCY",
    "DEAD_LETTERED",
    "FAILED",
    "LAG",
    "PROCESSED",
    "PROCESSING_SECONDS",
    "ServiceMonitor",
]

PROCESSED = Counter("seechange_messages_processed", "Messages handled and committed", ["service"])
FAILED = Counter(
    "seechange_messages_failed", "Failed attempts (infrastructure or unexpected errors, retried)", ["service"]
)
DEAD_LETTERED = Counter(
    "seechange_messages_dead_lettered", "Messages sent to the dead-letter topic", ["service"]
)
PROCESSING_SECONDS = Histogram(
    "seechange_processing_seconds",
    "Seconds per message, from poll to offset commit",
    ["service"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
LAG = Gauge(
    "seechange_consumer_lag",
    "Messages not yet consumed per assigned partition",
    ["service", "topic", "partition"],
)
ALERT_LATENCY = Histogram(
    "seechange_exposure_to_alert_seconds",
    "Seconds from an exposure's ingestion to its alert's delivery",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)

Check = Callable[[], None]  #: raises when the dependency does not answer


class ServiceMonitor:
    """The HTTP endpoints of one service; :meth:`tick` from the loop, :meth:`close` at the end.

    Parameters
    ----------
    settings : Settings
        ``metrics_port`` (None: no server; 0: any free port), ``metrics_host`` and ``health_stall_s``.
    name : str
        Service name (log lines).
    ready_checks : dict of str to callable
        Name -> check raising when that dependency does not answer (``/readyz``).
    """

    def __init__(self, settings: Settings, name: str, ready_checks: dict[str, Check]) -> None:
        self.name, self.stall_s, self.ready_checks = name, float(settings.health_stall_s), ready_checks
        self.last_tick = time.monotonic()
        self.server: ThreadingHTTPServer | None = None
        if settings.metrics_port is not None:
            self.server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), self._handler())
            self.server.daemon_threads = True
            threading.Thread(target=self.server.serve_forever, name=f"{name}-http", daemon=True).start()
            log.info("%s: /metrics /healthz /readyz on port %d", name, self.port)

    @property
    def port(self) -> int:
        """The port served (the one chosen by the OS when ``metrics_port`` asked for any); 0 when off."""
        return int(self.server.server_address[1]) if self.server is not None else 0

    def tick(self) -> None:
        """The loop turned."""
        self.last_tick = time.monotonic()

    def health(self) -> tuple[int, str]:
        idle = time.monotonic() - self.last_tick
        if idle > self.stall_s:
            return 503, f"loop stalled for {idle:.0f} s\n"
        return 200, f"ok: loop turned {idle:.1f} s ago\n"

    def readiness(self) -> tuple[int, str]:
        failed = []
        for what, check in self.ready_checks.items():
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - reported as not ready, with the reason
                failed.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return (503, "\n".join(failed) + "\n") if failed else (200, "ready\n")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    code, body, ctype = 200, generate_latest(), CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    code, text = monitor.health()
                    body, ctype = text.encode(), "text/plain; charset=utf-8"
                elif path == "/readyz":
                    code, text = monitor.readiness()
                    body, ctype = text.encode(), "text/plain; charset=utf-8"
                else:
                    code, body, ctype = 404, b"not found\n", "text/plain; charset=utf-8"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s: http: " + format, monitor.name, *args)

        return Handler

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
