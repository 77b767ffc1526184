"""The one table of the pipeline's stages: what each consumes and produces, and who handles it.

The CLI (``seechange serve <stage>``), the orchestrator (``seechange demo`` / ``bench``), the topic
creation and the docker-compose check all read :data:`STAGES`. Handlers live in the service packages
(``consumers/``, ``producers/``), which import this library; the library never imports them. So a stage
names its handler factory by import path (``"consumers.reduce:make_handler"``), resolved when the stage is
served.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from seechange.config import Settings

if TYPE_CHECKING:
    from seechange.streaming.runloop import Handler, RunStats

log = logging.getLogger(__name__)

__all__ = [
    "INGEST",
    "INPUT_TOPICS",
    "STAGES",
    "TOPICS",
    "Source",
    "Stage",
    "get_stage",
    "serve_stage",
    "stage_names",
]


@dataclass(frozen=True)
class Source:
    """A producer at the head of the pipeline: files in, events out (no input topic)."""

    name: str
    output_topic: str  #: unprefixed, e.g. ``"exposure-ready"``
    output_schema: str  #: schema name, e.g. ``"exposure_ready"``
    dlq_topic: str  #: unprefixed input topic whose ``.dlq`` receives the files it cannot take
    reduced_topic: str  #: where already-reduced images go (skipping reduce)
    reduced_schema: str


@dataclass(frozen=True)
class Stage:
    """One stage service: consumes ``input_topic``, calls its handler, produces ``output_topic``."""

    name: str  #: service name: ``seechange serve <name>``, consumer group suffix, compose service
    input_topic: str  #: unprefixed, e.g. ``"exposure-ready"``; its dead letters go to ``<input_topic>.dlq``
    input_schema: str  #: schema name every input message must have
    output_topic: str
    output_schema: str
    handler_factory: str  #: ``"package.module:function"``, ``function(settings) -> Handler``

    def load_handler_factory(self) -> Callable[[Settings], Handler]:
        """Import and return the handler factory named by :attr:`handler_factory`."""
        module_name, _, attr = self.handler_factory.partition(":")
        factory: Callable[[Settings], Handler] = getattr(importlib.import_module(module_name), attr)
        return factory


INGEST = Source(
    name="ingest",
    output_topic="exposure-ready",
    output_schema="exposure_ready",
    dlq_topic="exposure-ready",
    reduced_topic="image-reduced",
    reduced_schema="image_reduced",
)

#: the stage services in pipeline order
STAGES: tuple[Stage, ...] = (
    Stage(
        "reduce",
        "exposure-ready",
        "exposure_ready",
        "image-reduced",
        "image_reduced",
        "consumers.reduce:make_handler",
    ),
    Stage(
        "subtract",
        "image-reduced",
        "image_reduced",
        "subtraction-done",
        "subtraction_done",
        "consumers.subtract:make_handler",
    ),
    Stage(
        "detect",
        "subtraction-done",
        "subtraction_done",
        "sighting-found",
        "sighting_found",
        "consumers.detect:make_handler",
    ),
    Stage(
        "alert",
        "sighting-found",
        "sighting_found",
        "alerts",
        "alert",
        "producers.alert:make_handler",
    ),
)

#: every pipeline topic (unprefixed), in pipeline order
TOPICS: tuple[str, ...] = (INGEST.output_topic, *(s.output_topic for s in STAGES))
#: the topics some service consumes: each has a dead-letter topic
INPUT_TOPICS: tuple[str, ...] = tuple(s.input_topic for s in STAGES)


def stage_names() -> tuple[str, ...]:
    """Names of the stage services, in pipeline order."""
    return tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    """The stage called ``name``; ``KeyError`` naming the known ones otherwise."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {', '.join(stage_names())}")


def describe_settings(settings: Settings) -> str:
    """Every setting as ``name=value`` on one line, the database password hidden (for start-up logs)."""
    from sqlalchemy.engine import make_url

    parts = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "database_url" and value:
            value = make_url(value).render_as_string(hide_password=True)
        parts.append(f"{name}={value}")
    return " ".join(parts)


def serve_stage(
    settings: Settings, stage: Stage, *, max_messages: int | None = None, idle_timeout: float | None = None
) -> RunStats:
    """Run one stage service in this process until SIGTERM, ``max_messages`` or ``idle_timeout``.

    ``settings`` must already name the broker and database (see ``seechange.localservices.endpoints``).
    Raises :class:`~seechange.streaming.runloop.TooManyErrors` when the handler keeps failing unexpectedly.
    """
    from seechange.models.session import make_engine, make_session_factory
    from seechange.streaming.registry import SchemaRegistry
    from seechange.streaming.runloop import run_service

    log.info("%s: effective settings: %s", stage.name, describe_settings(settings))
    engine = make_engine(settings.database_url)
    try:
        handler = stage.load_handler_factory()(settings)
        return run_service(
            settings,
            name=stage.name,
            input_topic=stage.input_topic,
            input_schema=stage.input_schema,
            handler=handler,
            session_factory=make_session_factory(engine),
            registry=SchemaRegistry.load(),
            max_messages=max_messages,
            idle_timeout=idle_timeout,
        )
    finally:
        engine.dispose()
