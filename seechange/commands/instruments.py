"""``seechange instruments``: the cameras the pipeline knows (``seechange/instruments/``)."""

from __future__ import annotations

import click


@click.command("instruments")
@click.option("--ccds", is_flag=True, help="Also list each camera's CCD numbers and names.")
def instruments(ccds: bool) -> None:
    """List the known instruments: layout, pixel scale, bands, CCDs skipped by default."""
    from seechange.instruments import INSTRUMENTS

    for inst in INSTRUMENTS:
        click.echo(inst.describe())
        if ccds:
            click.echo("       " + " ".join(f"{n}:{name}" for n, name in sorted(inst.ccds.items())))
