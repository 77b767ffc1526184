"""Connections: the one engine and session factory every service, command and test uses.

The URL is always passed in; nothing here reads the environment.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["make_engine", "make_session_factory"]


def make_engine(database_url: str, **kwargs: object) -> Engine:
    """An engine for services and tests (``pool_pre_ping=True`` so a restarted server is survived).

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL.
    **kwargs
        Passed on to :func:`sqlalchemy.create_engine` (e.g. ``pool_size``).

    Returns
    -------
    sqlalchemy.Engine
        The engine.
    """
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(database_url, **kwargs)  # type: ignore[arg-type]


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``.

    Sessions do not expire their objects on commit, so a service can still read the rows it wrote
    (ids, paths) when it builds the next event after committing.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The engine.

    Returns
    -------
    sqlalchemy.orm.sessionmaker
        Call it (``with factory() as session, session.begin(): ...``) for one transaction.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)
