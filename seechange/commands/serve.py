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
@click.option("--reduced", is_flag=True, help="The files are already reduced: emit image-reduced, skip reduce.")
@click.option("--weight", "weight", type=click.Path(path_type=Path), default=None,
              help="Inverse-variance map of the one --reduced image.")
@click.option("--mask", "mask", type=click.Path(path_type=Path), default=None,
              help="Bad-pixel mask (non-zero = bad) of the one --reduced image.")
@click.pass_obj
def ingest(settings: Settings, paths: tuple[Path, ...], watch_dir: Path | None, reduced: bool,
           weight: Path | None, mask: Path | None) -> None:
    """Register raw CCD files (inside the data root) and emit exposure-ready for each.

    Already-reduced images (--reduced, or Community Pipeline names *_ooi_*, paired with the *_oow_* weight
    and *_ood_* mask beside them) become Exposure + Image rows and emit image-reduced instead.
    """
    from producers.ingest import Ingestor
    from seechange.localservices import endpoints
    from seechange.models.migrate import make_engine, make_session_factory
    from seechange.pipeline.ingest_reduced import CP_NAME_CODES, ReducedFiles, pair_cp_triplets

    if (weight or mask) and (not reduced or len(paths) != 1):
        raise click.UsageError("--weight/--mask need --reduced and exactly one image path")
    if reduced and watch_dir:
        raise click.UsageError("--watch ingests raw files only; give reduced images as paths")
    full = [p.resolve() if p.exists() else p for p in paths]
    raw = [] if reduced else [p for p in full if not any(c in p.name for c in CP_NAME_CODES)]
    triplets = pair_cp_triplets([p for p in full if p not in raw])
    if weight or mask:
        one = triplets[0] if triplets else ReducedFiles(full[0])
        triplets = [ReducedFiles(one.image, weight.resolve() if weight else one.weight,
                                 mask.resolve() if mask else one.mask)]
    settings = endpoints(settings)
    engine = make_engine(settings.database_url)
    ingestor = Ingestor(settings, make_session_factory(engine))
    try:
        failed = 0
        if raw:
            report = ingestor.ingest(raw)
            click.echo(f"ingested {len(report.registered)} exposure(s) ({report.new} new), "
                       f"{len(report.failed)} failed")
            failed += len(report.failed)
        if triplets:
            report = ingestor.ingest_reduced(triplets)
            click.echo(f"ingested {len(report.images)} reduced image(s) ({report.new} new), "
                       f"{len(report.failed)} failed")
            failed += len(report.failed)
        if failed and not watch_dir:
            raise SystemExit(1)
        if watch_dir:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            ingestor.watch(watch_dir, stop=stop.is_set)
    finally:
        ingestor.close()
        engine.dispose()
