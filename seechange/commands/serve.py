"""``seechange serve STAGE`` and ``seechange ingest``: run one service of the pipeline."""

from __future__ import annotations

import importlib
import signal
import threading
from pathlib import Path

import click

from seechange.config import Settings

#: stage name -> module with NAME, INPUT_TOPIC, INPUT_SCHEMA, make_handler(settings)
STAGES = {
    "reduce": "consumers.reduce",
    "subtract": "consumers.subtract",
    "detect": "consumers.detect",
    "alert": "producers.alert",
}


def run_stage(settings: Settings, stage: str, *, max_messages: int | None = None,
              idle_timeout: float | None = None) -> None:
    """Run one stage service in this process (settings must name the broker and database)."""
    from consumers.common import serve as serve_loop

    module = importlib.import_module(STAGES[stage])
    serve_loop(settings, name=module.NAME, input_topic=module.INPUT_TOPIC, input_schema=module.INPUT_SCHEMA,
               make_handler=module.make_handler, max_messages=max_messages, idle_timeout=idle_timeout,
               deliver_before_commit=getattr(module, "DELIVER_BEFORE_COMMIT", False))


@click.command("serve")
@click.argument("stage", type=click.Choice(sorted(STAGES)))
@click.option("--max-messages", type=int, default=None, help="Stop after this many messages.")
@click.option("--idle-timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.pass_obj
def serve(settings: Settings, stage: str, max_messages: int | None, idle_timeout: float | None) -> None:
    """Run one pipeline service (reduce, subtract, detect, alert) until SIGTERM."""
    from seechange.localservices import endpoints

    run_stage(endpoints(settings), stage, max_messages=max_messages, idle_timeout=idle_timeout)


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep watching this folder and ingest every new FITS file.")
@click.pass_obj
def ingest(settings: Settings, paths: tuple[Path, ...], watch_dir: Path | None) -> None:
    """Register raw CCD files (inside the data root) and emit exposure-ready for each."""
    from producers.ingest import Ingestor
    from seechange.localservices import endpoints
    from seechange.models.migrate import make_engine, make_session_factory

    settings = endpoints(settings)
    engine = make_engine(settings.database_url)
    ingestor = Ingestor(settings, make_session_factory(engine))
    try:
        if paths:
            report = ingestor.ingest([p.resolve() if p.exists() else p for p in paths])
            click.echo(f"ingested {len(report.registered)} exposure(s) ({report.new} new), "
                       f"{len(report.failed)} failed")
            if report.failed and not watch_dir:
                raise SystemExit(1)
        if watch_dir:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            ingestor.watch(watch_dir, stop=stop.is_set)
    finally:
        ingestor.close()
        engine.dispose()
