"""``seechange subscribe``, ``seechange replay`` and ``seechange lightcurve``: the user-facing read side."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from seechange.config import Settings
from seechange.streaming.subscribe import Start


def parse_start(text: str) -> Start:
    """``now``, ``beginning``, a Unix time in seconds, or an ISO 8601 time (UTC if no zone)."""
    if text == "now":
        return "now"
    if text == "beginning":
        return "beginning"
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"expected now, beginning, Unix seconds or an ISO time, got {text!r}"
        ) from exc
    if when.tzinfo is None:
        from datetime import UTC

        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def alert_filter(
    *,
    min_snr: float | None,
    max_mag: float | None,
    band: str | None,
    object_name: str | None,
    good_only: bool,
    positive_only: bool,
) -> Any:
    """A predicate over alert records built from the command-line filter options."""

    def keep(a: dict[str, Any]) -> bool:
        s = a["sighting"]
        if min_snr is not None and abs(s["snr"]) < min_snr:
            return False
        if max_mag is not None and (s["mag"] is None or s["mag"] > max_mag):
            return False
        if band is not None and s["band"] != band:
            return False
        if object_name is not None and a["object"]["name"] != object_name:
            return False
        if good_only and not s["isGood"]:
            return False
        return not (positive_only and not s["isPositive"])

    return keep


@click.command("subscribe")
@click.option(
    "--from",
    "start",
    default="now",
    show_default=True,
    help="now | beginning | Unix seconds | ISO time (UTC).",
)
@click.option("--group", default=None, help="Consumer group (resume where it stopped; share the work).")
@click.option("--min-snr", type=float, default=None, help="Keep alerts with |SNR| at least this.")
@click.option("--max-mag", type=float, default=None, help="Keep alerts brighter than this magnitude.")
@click.option("--band", default=None, help="Keep alerts in this band.")
@click.option("--object", "object_name", default=None, help="Keep alerts of this object name.")
@click.option("--positive-only", is_flag=True, help="Only brightening sources.")
@click.option(
    "--save",
    "save_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each packet as <alertId>.avro (Confluent-framed bytes, as received).",
)
@click.option("--max", "max_messages", type=int, default=None, help="Stop after this many alerts.")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print each alert as one JSON line (without cutouts).")
@click.pass_obj
def subscribe_cmd(
    settings: Settings,
    start: str,
    group: str | None,
    min_snr: float | None,
    max_mag: float | None,
    band: str | None,
    object_name: str | None,
    positive_only: bool,
    save_dir: Path | None,
    max_messages: int | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Receive alerts from the alerts topic (from now, the beginning or a time), filter, print, save."""
    from seechange.localservices import endpoints
    from seechange.streaming.subscribe import subscribe

    settings = endpoints(settings, database_needed=False)
    keep = alert_filter(
        min_snr=min_snr,
        max_mag=max_mag,
        band=band,
        object_name=object_name,
        good_only=False,
        positive_only=positive_only,
    )
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for record, raw in subscribe(
        settings,
        "alerts",
        start=parse_start(start),
        group=group,
        filter=keep,
        max_messages=max_messages,
        timeout=timeout,
        expect="alert",
    ):
        n += 1
        if save_dir:
            (save_dir / f"{record['alertId']}.avro").write_bytes(raw)
        s, o = record["sighting"], record["object"]
        if as_json:
            slim = {k: v for k, v in record.items() if not k.startswith("cutout")}
            click.echo(json.dumps(slim, default=str))
        else:
            mag = f"{s['mag']:.2f}" if s["mag"] is not None else "  -  "
            click.echo(
                f"{record['alertId']:>10} {o['name']:<10} mjd {s['mjd']:.5f} {s['band']} "
                f"ra {s['ra']:10.6f} dec {s['dec']:+10.6f} mag {mag} snr {s['snr']:7.1f} "
                f"{'+' if s['isPositive'] else '-'} n={o['nSightings']}"
            )
    click.echo(f"{n} alert(s)", err=True)


@click.command("replay")
@click.argument(
    "topic", type=click.Choice(["exposure-ready", "image-reduced", "subtraction-done", "sighting-found"])
)
@click.option(
    "--from",
    "start",
    default="beginning",
    show_default=True,
    help="beginning | Unix seconds | ISO time (UTC): first message to replay.",
)
@click.option(
    "--until", "until", default=None, help="Unix seconds or ISO time: last message time (default now)."
)
@click.pass_obj
def replay_cmd(settings: Settings, topic: str, start: str, until: str | None) -> None:
    """Re-publish a topic's events from a time, so the next stage reprocesses them.

    With unchanged parameters the stages find their products and write nothing new; with new parameters
    (a new provenance) the new products appear beside the old ones.
    """
    from seechange.localservices import endpoints
    from seechange.streaming.replay import replay

    settings = endpoints(settings, database_needed=False)
    until_s = parse_start(until) if until else None
    n = replay(
        settings, topic, start=parse_start(start), until=until_s if isinstance(until_s, float) else None
    )
    click.echo(f"replayed {n} message(s) onto {settings.topic(topic)}")


@click.command("lightcurve")
@click.argument("name")
@click.option(
    "--ecsv", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write an ECSV table."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG plot."
)
@click.pass_obj
def lightcurve_cmd(settings: Settings, name: str, ecsv: Path | None, plot: Path | None) -> None:
    """Print (and optionally save or plot) the lightcurve of one object by name."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from seechange.lightcurve import lightcurve_table
    from seechange.localservices import endpoints
    from seechange.models.session import make_engine, make_session_factory

    settings = endpoints(settings, kafka_needed=False)
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        table = lightcurve_table(session, name)
    engine.dispose()
    rich = RichTable(
        title=f"{name}: {len(table)} sighting(s), ra {table.meta['ra']:.6f} dec {table.meta['dec']:+.6f}"
    )
    for col in ("mjd", "band", "flux_njy", "flux_njy_err", "mag", "mag_err", "snr", "is_positive", "is_good"):
        rich.add_column(col, justify="right")
    for row in table:
        rich.add_row(
            f"{row['mjd']:.5f}",
            row["band"],
            f"{row['flux_njy']:.1f}",
            f"{row['flux_njy_err']:.1f}",
            "-" if row["mag"] != row["mag"] else f"{row['mag']:.3f}",
            "-" if row["mag_err"] != row["mag_err"] else f"{row['mag_err']:.3f}",
            f"{row['snr']:.1f}",
            str(bool(row["is_positive"])),
            str(bool(row["is_good"])),
        )
    Console().print(rich)
    if ecsv:
        table.write(ecsv, format="ascii.ecsv", overwrite=True)
    if plot:
        from seechange.lightcurve import plot_lightcurve

        plot_lightcurve(table, plot)
