"""The few lines every service shares: connect, build the handler, run the shared loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from seechange.config import Settings
from seechange.models.migrate import make_engine, make_session_factory
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.runloop import Handler, RunStats, run_service

log = logging.getLogger(__name__)


def serve(settings: Settings, *, name: str, input_topic: str, input_schema: str,
          make_handler: Callable[[Settings], Handler], max_messages: int | None = None,
          idle_timeout: float | None = None, deliver_before_commit: bool = False) -> RunStats:
    """Run one stage service until SIGTERM, ``max_messages`` or ``idle_timeout``.

    ``settings`` must already name the broker and database (see ``seechange.localservices.endpoints``).
    """
    engine = make_engine(settings.database_url)
    try:
        handler = make_handler(settings)
        log.info("%s: consuming %s (group %s-%s)", name, settings.topic(input_topic),
                 settings.consumer_group_prefix, name)
        return run_service(settings, name=name, input_topic=input_topic, input_schema=input_schema,
                           handler=handler, session_factory=make_session_factory(engine),
                           registry=SchemaRegistry.load(), max_messages=max_messages, idle_timeout=idle_timeout,
                           deliver_before_commit=deliver_before_commit)
    finally:
        engine.dispose()
