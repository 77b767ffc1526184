"""Fixtures shared by every test.

Real services, no mocks: the first test that asks for ``endpoints`` (directly or through another fixture)
starts the local Kafka broker and PostgreSQL with ``seechange.localservices.up`` (or reuses the running
ones, or uses ``SEECHANGE_KAFKA_BOOTSTRAP`` / ``SEECHANGE_DATABASE_URL`` when set). They are left running
after the session so the next run starts in well under a second; ``seechange services down`` stops them.

Fixtures
--------
endpoints (session)      Settings with ``kafka_bootstrap`` and ``database_url`` filled in.
test_settings (session)  ``endpoints`` with a unique ``topic_prefix`` (its 9 topics created, 2 partitions
                         each, deleted at the end), ``partitions=2`` and a temporary ``data_dir``.
database_url (module)    URL of a fresh, migrated database ``seechange_test_<uuid8>`` per test module, dropped
                         at the module's end (simulated nights of different modules share sky positions, and
                         references are found by sky, so modules must not see each other's rows).
db_engine (module)       SQLAlchemy Engine on ``database_url``.
db_session (function)    SQLAlchemy Session on ``database_url``; rolled back and closed afterwards.
shared_data (function)   Path to ``../shared/data`` (real survey data); skips the test when absent.

Tests under ``tests/integration`` get the ``integration`` marker automatically (``-m "not integration"``
runs the fast unit tests only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from seechange.config import Settings, load_settings
from tests.paths import SHARED_DATA

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` with ``integration``."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def endpoints() -> Settings:
    """Settings with the addresses of the running (started or reused) Kafka and PostgreSQL."""
    from seechange.localservices import endpoints as fill_endpoints
    from seechange.localservices import up

    settings = load_settings()
    up(settings)
    return fill_endpoints(settings)


@pytest.fixture(scope="session")
def test_settings(endpoints: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """``endpoints`` isolated for this session: own topic prefix (topics created), own data directory."""
    from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

    settings = endpoints.model_copy(
        update={
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}-",
            "data_dir": tmp_path_factory.mktemp("data"),
            "partitions": 2,
        }
    )
    names = topic_names(settings)
    ensure_topics(settings.kafka_bootstrap, names, settings.partitions)
    yield settings
    delete_topics(settings.kafka_bootstrap, names)


@pytest.fixture(scope="module")
def database_url(endpoints: Settings) -> Iterator[str]:
    """A fresh database on the session's server, migrated to the newest revision; dropped afterwards."""
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.models.migrate import upgrade

    name = f"seechange_test_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(endpoints.database_url, name)


@pytest.fixture(scope="module")
def db_engine(database_url: str) -> Iterator[Engine]:
    """An Engine on the session's test database."""
    from seechange.models.session import make_engine

    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A Session on the test database; whatever it did not commit is rolled back when the test ends."""
    from seechange.models.session import make_session_factory

    session = make_session_factory(db_engine)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder ``../shared/data`` next to the repository."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
