"""Process and port helpers shared by the local Kafka and PostgreSQL services.

Everything here is POSIX (Linux first): detached children are started in their own session so that they
outlive the ``seechange services up`` process, and are found again through pid files.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A local service could not be fetched, started, reached or stopped.

    The first line of the message is meant to be shown to the user as is.
    """


def require_tool(name: str, purpose: str) -> str:
    """Return the absolute path of the executable ``name`` or raise a one-line :class:`ServiceError`.

    Parameters
    ----------
    name : str
        Executable to look for on ``PATH`` (e.g. ``"java"``, ``"mvn"``).
    purpose : str
        What it is needed for, quoted in the error message.
    """
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH; it is needed to {purpose}")
    return path


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (reaping it if it is our own dead child)."""
    if pid <= 0:
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: somebody else reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (e.g. the embedded PostgreSQL system user)
    stat = Path(f"/proc/{pid}/stat")
    try:
        # the state letter follows the parenthesised command name
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_cmdline(pid: int) -> str:
    """The command line of ``pid`` joined by spaces, or ``""`` when unknown."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path) -> int | None:
    """The pid stored in ``pid_file`` (first line), or None when absent or unreadable."""
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def port_open(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def terminate(pid: int, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` seconds, then SIGKILL it.

    Returns
    -------
    bool
        True when the process ended after ``sig``, False when it had to be killed (or was already gone).
    """
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    logger.warning("process %d did not stop within %.0f s; sending SIGKILL", pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    while pid_alive(pid):
        time.sleep(0.05)
    return False


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file (empty string if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
