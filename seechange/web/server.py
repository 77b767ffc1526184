"""Serving the web application with uvicorn: in the foreground (``seechange web``, the demo) or in a
background thread (tests, the bench)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ServerThread", "free_port", "pick_port", "serve_forever"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_port(host: str, port: int) -> int:
    """``port`` when it can be bound on ``host``, else a free one (0 asks for a free one)."""
    if port == 0:
        return free_port(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return free_port(host)
    return port


def _config(app: Any, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off")


def serve_forever(app: Any, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve ``app`` until SIGINT or SIGTERM (uvicorn's graceful shutdown), then return.

    Uvicorn raises the signal it caught again once it has shut down; a Ctrl-C (``KeyboardInterrupt``) is
    the user's way to stop, so it ends this call normally.
    """
    import uvicorn

    try:
        uvicorn.Server(_config(app, host, port, log_level)).run()
    except KeyboardInterrupt:
        pass


class ServerThread:
    """``app`` served on ``host``:``port`` from a daemon thread; :meth:`stop` shuts it down.

    Parameters
    ----------
    app : ASGI application
        What to serve.
    host : str
        Address to listen on.
    port : int
        Port (0: a free one).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.host, self.port = host, pick_port(host, port)
        self._server = uvicorn.Server(_config(app, self.host, self.port, "warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="seechange-web")

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerThread:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
