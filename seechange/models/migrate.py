"""Database migrations: ``upgrade`` (concurrency-safe) and ``head_revision``.

The URL is always passed in; nothing here reads the environment.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool, text

log = logging.getLogger(__name__)

#: ``pg_advisory_xact_lock`` key serialising concurrent migrations (ASCII "SEECHMIG" as a signed int64).
MIGRATION_LOCK_KEY = int.from_bytes(b"SEECHMIG", "big", signed=True)

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


def alembic_config(database_url: str | None = None) -> Config:
    """The alembic configuration of the package's migrations.

    Parameters
    ----------
    database_url : str or None
        SQLAlchemy URL stored as ``sqlalchemy.url`` (used by command-line style invocations).

    Returns
    -------
    alembic.config.Config
        Configuration pointing at ``seechange/models/migrations``.
    """
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ALEMBIC_INI.parent / "migrations"))
    if database_url is not None:
        # '%' would be read as interpolation by configparser
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """Revision id of the newest migration shipped with the code.

    Returns
    -------
    str
        The single head revision.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no alembic revisions found")
    return head


def upgrade(database_url: str) -> None:
    """Migrate the database to the newest revision.

    Safe to call from several processes at once: the whole upgrade runs in one transaction that first takes
    a transaction-level advisory lock, so later callers wait and then find nothing to do.

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL of an existing PostgreSQL database.
    """
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            before = MigrationContext.configure(conn).get_current_revision()
            command.upgrade(cfg, "head")
            after = MigrationContext.configure(conn).get_current_revision()
        if before != after:
            log.info("database migrated from %s to %s", before, after)
    finally:
        engine.dispose()
