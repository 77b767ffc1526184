"""``seechange reference build``: references prepared ahead of a night from reduced or raw images, or an archive."""

from __future__ import annotations

from pathlib import Path

import click

from seechange.config import Settings


@click.group("reference")
def reference() -> None:
    """References (templates) on the sky."""


@reference.command("build")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def reference_build(settings: Settings, paths: tuple[Path, ...]) -> None:
    """Register the images PATHS (files or folders inside the data root: CP triplets, plain reduced images,
    or raw exposures such as c4d_*_ori.fits.fz, which are ingested and reduced first with the data root's
    calib/ frames and refcat/ catalogue, as the reduce service does) and build the reference of each one's
    sky from the first n_ref_images good images covering it, with the pipeline's parameters
    (SEECHANGE_PARAMS_FILE), so that the subtract step of a later image finds it. Nothing is sent to
    Kafka. Exit status 1 when a file (or a raw CCD) could not be registered."""
    from seechange.localservices import endpoints
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.parameters import load_parameters
    from seechange.pipeline.reference_build import build_references

    params = load_parameters(settings.params_file)
    settings = endpoints(settings, kafka_needed=False)
    engine = make_engine(settings.database_url)
    try:
        report = build_references(
            make_session_factory(engine),
            Path(settings.data_dir),
            [p.resolve() for p in paths],
            reduce_params=params.reduce,
            ref_params=params.reference,
        )
    finally:
        engine.dispose()
    for image_id, ref_id in report.built:
        click.echo(f"image {image_id}: built reference {ref_id}")
    for image_id, why in report.not_built:
        click.echo(f"image {image_id}: no reference: {why}")
    for path, why in report.failed:
        click.echo(f"{path}: not registered: {why}", err=True)
    click.echo(
        f"{len(report.images)} image(s), {len(report.built)} reference(s) built, "
        f"{len(report.covered)} image(s) already covered, {len(report.not_built)} without one, "
        f"{len(report.failed)} failed"
    )
    if report.failed:
        raise SystemExit(1)
