"""A private Kafka broker and PostgreSQL of their own (own cache directory, own ports), e.g. for a fault test.

The fault harness stops and restarts the broker and the database mid-night; on a machine where other runs
share the local services, it must do that to services of its own. :func:`private_services` starts a broker
and a cluster under ``root`` (the broker jars are linked from the shared cache, not fetched again), yields
settings pointing at them, and stops both on exit whatever happened.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seechange.config import Settings
from seechange.localservices import kafka, manager

logger = logging.getLogger(__name__)

__all__ = ["free_port", "private_services"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((kafka.HOST, 0))
        return int(s.getsockname()[1])


def _traversable(root: Path) -> None:
    """Let other users pass through ``root``'s folders (as root, PostgreSQL runs as a user of its own).

    pytest's temporary folders are mode 0700: the server starts (it works relative to pgdata) but its
    checkpointer then fails on the absolute path of ``global/pg_control`` and the server panics.
    """
    if os.geteuid() != 0:
        return
    for folder in (root.resolve(), *root.resolve().parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXGRP | stat.S_IXOTH)


@contextmanager
def private_services(base: Settings, root: Path) -> Iterator[Settings]:
    """Start a broker and a PostgreSQL cluster of their own under ``root``; stop both on exit.

    Parameters
    ----------
    base : Settings
        Everything else (versions, partitions, security, ...); its cache directory lends the broker jars.
    root : Path
        The private cache directory (``kafka/``, ``pgdata/``); a short path keeps the socket in it.

    Yields
    ------
    Settings
        ``base`` with ``cache_dir = root``, free ports and ``kafka_bootstrap`` / ``database_url`` filled in.
        :mod:`seechange.localservices.kafka` / ``postgres`` stop and start them through these settings.
    """
    root.mkdir(parents=True, exist_ok=True)
    _traversable(root)
    shared_jars = kafka.kafka_paths(base).libs.parent
    mine = root / shared_jars.name
    if shared_jars.is_dir() and not mine.exists():
        mine.symlink_to(shared_jars.resolve(), target_is_directory=True)
    private = base.model_copy(
        update={
            "cache_dir": root,
            "kafka_bootstrap": "",
            "database_url": "",
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
        }
    )
    try:
        manager.up(private, create_topics=False)
        yield manager.endpoints(private)
    finally:
        stopped = manager.down(private)
        logger.info("private services under %s stopped: %s", root, stopped)
