"""``seechange simulate``: write a simulated night (raw CCDs, calibration frames, catalogues, truth)."""

from __future__ import annotations

from pathlib import Path

import click

from seechange.commands import parse_size
from seechange.config import Settings


@click.command("simulate")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data root to write into [settings.data_dir].",
)
@click.option("--fields", default=2, show_default=True)
@click.option("--epochs", default=6, show_default=True)
@click.option("--ref-epochs", default=3, show_default=True, help="Leading epochs without transients.")
@click.option("--size", default="2048x4096", show_default=True, help="CCD size NXxNY, pixels.")
@click.option("--band", default="r", show_default=True, type=click.Choice(["g", "r", "i", "z"]))
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--instrument",
    default="decam",
    show_default=True,
    type=click.Choice(["decam", "ls4"], case_sensitive=False),
)
@click.option("--ccds", default=1, show_default=True, help="CCDs per exposure (a subset of the camera's).")
@click.option(
    "--format",
    "fmt",
    default="single",
    show_default=True,
    type=click.Choice(["single", "mef", "mef-fz"]),
    help="One file per CCD, or one multi-extension file per exposure (mef-fz: tile-compressed .fits.fz).",
)
@click.pass_obj
def simulate(
    settings: Settings,
    out_dir: Path | None,
    fields: int,
    epochs: int,
    ref_epochs: int,
    size: str,
    band: str,
    seed: int,
    instrument: str,
    ccds: int,
    fmt: str,
) -> None:
    """Simulate a night of raw DECam or LS4 exposures with truth tables (deterministic from the seed)."""
    from rich.progress import Progress

    from seechange.sim.instrument import sim_camera
    from seechange.sim.night import simulate_night

    nx, ny = parse_size(size)
    root = out_dir or settings.data_dir
    camera = sim_camera(instrument)
    try:
        ccdnums = camera.pick_ccds(ccds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ccds") from exc
    with Progress() as bar:
        task = bar.add_task("simulating", total=fields * epochs * len(ccdnums))
        night = simulate_night(
            root,
            seed=seed,
            n_fields=fields,
            n_epochs=epochs,
            band=band,
            size=(nx, ny),
            n_ref_epochs=ref_epochs,
            exptime=camera.definition.exptime_default,
            instrument=camera.name,
            ccdnums=ccdnums,
            fmt=fmt,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    click.echo(
        f"wrote {len(night.exposures)} {camera.name} CCD exposures ({len(ccdnums)} CCD(s) each) of "
        f"{len(night.fields)} field(s) in {len(night.raw_files)} raw file(s) under {root}; "
        f"{len(night.transients)} time-variable sources in truth/night.json"
    )
    for path in night.raw_files:
        click.echo(f"  {path}")
