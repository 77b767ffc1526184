"""``seechange serve STAGE`` and ``seechange ingest``: run one service of the pipeline."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from seechange.config import Settings
from seechange.streaming.stages import stage_names


@click.command("serve")
@click.argument("stage", type=click.Choice(stage_names()))
@click.option("--max-messages", type=int, default=None, help="Stop after this many messages.")
@click.option("--idle-timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.pass_obj
def serve(settings: Settings, stage: str, max_messages: int | None, idle_timeout: float | None) -> None:
    """Run one pipeline service (reduce, subtract, detect, alert) until SIGTERM.

    Exits non-zero when the stage keeps failing unexpectedly (``max_consecutive_errors`` in a row).
    """
    from seechange.localservices import endpoints
    from seechange.streaming.stages import get_stage, serve_stage

    serve_stage(endpoints(settings), get_stage(stage), max_messages=max_messages, idle_timeout=idle_timeout)


@click.command("ingest")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--watch",
    "watch_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep watching this folder and ingest every new FITS file.",
)
@click.option(
    "--reduced", is_flag=True, help="The files are already reduced: emit image-reduced, skip reduce."
)
@click.option(
    "--weight",
    "weight",
    type=click.Path(path_type=Path),
    default=None,
    help="Inverse-variance map of the one --reduced image.",
)
@click.option(
    "--mask",
    "mask",
    type=click.Path(path_type=Path),
    default=None,
    help="Bad-pixel mask (non-zero = bad) of the one --reduced image.",
)
@click.option(
    "--skip-ccds",
    "skip_ccds",
    default=None,
    help="Comma-separated CCD names not to ingest (default: each instrument's list, e.g. DECam S30,N30; '' for none).",
)
@click.pass_obj
def ingest(
    settings: Settings,
    paths: tuple[Path, ...],
    watch_dir: Path | None,
    reduced: bool,
    weight: Path | None,
    mask: Path | None,
    skip_ccds: str | None,
) -> None:
    """Register raw files (inside the data root) and emit exposure-ready for each science CCD.

    A multi-extension or tile-compressed (.fits.fz) file gives one Exposure per science CCD. A refused CCD or
    file is one line on stderr and a record on exposure-ready.dlq; the others go on; the exit status is 1 when
    any failed.

    Already-reduced images (--reduced, or Community Pipeline names *_ooi_*, paired with the *_oow_* weight
    and *_ood_* mask beside them) become Exposure + Image rows and emit image-reduced instead.
    """
    from seechange.localservices import endpoints
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.ingest_reduced import CP_NAME_CODES, ReducedFiles, pair_cp_triplets
    from seechange.pipeline.parameters import load_parameters
    from seechange.streaming.ingestor import Ingestor

    if (weight or mask) and (not reduced or len(paths) != 1):
        raise click.UsageError("--weight/--mask need --reduced and exactly one image path")
    if reduced and watch_dir:
        raise click.UsageError("--watch ingests raw files only; give reduced images as paths")
    full = [p.resolve() if p.exists() else p for p in paths]
    raw = [] if reduced else [p for p in full if not any(c in p.name for c in CP_NAME_CODES)]
    triplets = pair_cp_triplets([p for p in full if p not in raw])
    if weight or mask:
        one = triplets[0] if triplets else ReducedFiles(full[0])
        triplets = [
            ReducedFiles(
                one.image,
                weight.resolve() if weight else one.weight,
                mask.resolve() if mask else one.mask,
                one.psf,
            )
        ]
    settings = endpoints(settings)
    engine = make_engine(settings.database_url)
    stop = threading.Event()
    ingestor = Ingestor(settings, make_session_factory(engine), stop=stop)
    try:
        failed = 0
        skip = (
            None
            if skip_ccds is None
            else frozenset(c.strip().upper() for c in skip_ccds.split(",") if c.strip())
        )
        if raw:
            report = ingestor.ingest(raw, skip=skip)
            click.echo(
                f"ingested {len(report.registered)} exposure(s) ({report.new} new), "
                f"{len(report.skipped)} CCD(s) skipped, {len(report.failed)} failed"
            )
            failed += len(report.failed)
        if triplets:
            # the same reduce parameters (and so provenance) as the reduce service would use
            report = ingestor.ingest_reduced(triplets, params=load_parameters(settings.params_file).reduce)
            click.echo(
                f"ingested {len(report.images)} reduced image(s) ({report.new} new), "
                f"{len(report.failed)} failed"
            )
            failed += len(report.failed)
        if failed and not watch_dir:
            raise SystemExit(1)
        if watch_dir:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            ingestor.watch(watch_dir, stop=stop.is_set, skip=skip)
    finally:
        ingestor.close()
        engine.dispose()
