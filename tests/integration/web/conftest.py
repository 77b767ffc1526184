"""A small simulated night for the web tests, served by ``seechange web``'s application.

``web_night`` (package scope): settings of its own (:func:`tests.integration._night.isolated_run`: topic
prefix with its topics, fresh migrated database, data folder), one field of 6 epochs of 512x1024 CCDs
through the in-process chain with alerts logged (:mod:`tests.integration._chain_night`), forced photometry
backwards for every Object (so lightcurves have non-detection limits), one dead letter on the reduce
stage's dead-letter topic (as the reduce service writes it), and the application served on a free port
of 127.0.0.1 from a thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from tests.integration._chain_night import run_chain, simulate
from tests.integration._night import isolated_run


@dataclass
class WebNight:
    """What the web tests get: the run's settings, a writable session factory, the server's URL."""

    settings: Settings
    sessions: sessionmaker[Session]
    url: str
    dead_letter_error: str


def _dead_letter(settings: Settings) -> str:
    """One dead letter on the reduce stage's dead-letter topic, made by the services' own function."""
    from confluent_kafka import Producer

    from seechange.errors import MissingFile
    from seechange.streaming.delivery import dead_letter
    from seechange.streaming.kafka_config import client_config
    from seechange.streaming.topics import dlq_name

    topic = settings.topic("exposure-ready")
    exc = MissingFile("raw file raw/gone.fits is missing")
    item = dead_letter(
        dlq_name(topic), exc, service="reduce", key=b"1", value=b"{}", origin_topic=topic,
        origin_partition=0, origin_offset=7,
    )  # fmt: skip
    producer = Producer(client_config(settings))
    producer.produce(item.topic, key=item.key, value=item.value, headers=item.headers)
    assert producer.flush(15) == 0
    return "MissingFile"


@pytest.fixture(scope="package")
def web_night(test_settings: Settings) -> Iterator[WebNight]:
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.forced import force_objects
    from seechange.pipeline.parameters import PipelineParameters
    from seechange.web.app import create_app
    from seechange.web.server import ServerThread

    with isolated_run(test_settings, "web") as settings:
        root = Path(settings.data_dir)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        run_chain(sessions, root, simulate(root), alert=True)
        with sessions() as s, s.begin():
            force_objects(s, root, None, params=PipelineParameters().detect.forced_params)
        error = _dead_letter(settings)
        app = create_app(settings, status_ttl_s=0.0)
        server = ServerThread(app).start()
        try:
            yield WebNight(settings, sessions, server.url, error)
        finally:
            server.stop()
            app.state.sessions.kw["bind"].dispose()
            engine.dispose()
