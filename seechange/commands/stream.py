"""``seechange subscribe``, ``seechange replay`` and ``seechange lightcurve``: the user-facing read side."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from seechange.client import Alert, AlertFilter, Connection, Skipped, Start, container_bytes, cutout_fits
from seechange.config import Settings


def parse_start(text: str) -> Start:
    """``now``, ``beginning``, ``committed``, a Unix time in seconds, or an ISO 8601 time (UTC if no zone)."""
    if text in ("now", "beginning", "committed"):
        return text  # type: ignore[return-value]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"expected now, beginning, committed, Unix seconds or an ISO time, got {text!r}"
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_until(text: str | None) -> float | None:
    """``--until``: a Unix time in seconds or an ISO time (UTC if no zone); None when not given."""
    if text is None:
        return None
    when = parse_start(text)
    if not isinstance(when, float):
        raise click.BadParameter(f"--until needs a time, got {text!r}")
    return when


def kafka_options(pairs: tuple[str, ...], config_file: Path | None) -> dict[str, str]:
    """librdkafka properties from a ``key=value`` properties file and ``-X key=value`` options (these win).

    The file is the usual Kafka client ``.properties`` format (``#`` comments); keep passwords there
    rather than on the command line.
    """
    lines = list(config_file.read_text().splitlines()) if config_file else []
    out: dict[str, str] = {}
    for where, line in [*((str(config_file), ln) for ln in lines), *(("-X", p) for p in pairs)]:
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{where}: expected key=value, got {line.split('=')[0]!r}...")
        out[key.strip()] = value.strip()
    return out


def connection_from(
    settings: Settings, bootstrap: str | None, pairs: tuple[str, ...], config_file: Path | None
) -> Connection:
    """The client connection of the command-line options (default broker: the configured one)."""
    if bootstrap is None:
        from seechange.localservices import endpoints
        from seechange.streaming.kafka_config import bootstrap_servers

        bootstrap = bootstrap_servers(endpoints(settings, database_needed=False))
    return Connection(bootstrap, kafka_options(pairs, config_file))


def connection_options(fn: Any) -> Any:
    """The ``--bootstrap``, ``-X key=value`` and ``--kafka-config FILE`` options of a command."""
    fn = click.option(
        "--kafka-config",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="Kafka client properties file (key=value lines: security.protocol, sasl.*, ssl.*).",
    )(fn)
    fn = click.option(
        "-X", "--kafka-option", "kafka_pairs", multiple=True, help="librdkafka key=value (repeat)."
    )(fn)
    return click.option(
        "--bootstrap", default=None, help="Broker list host:port[,...] (default: configured)."
    )(fn)


def alert_line(record: dict[str, Any]) -> str:
    """One line describing an alert packet (id, object, time, band, position, magnitude, SNR, sign, n)."""
    s, o = record["sighting"], record["object"]
    mag = f"{s['mag']:.2f}" if s["mag"] is not None else "  -  "
    return (
        f"{record['alertId']:>10} {o['name']:<10} mjd {s['mjd']:.5f} {s['band']} "
        f"ra {s['ra']:10.6f} dec {s['dec']:+10.6f} mag {mag} snr {s['snr']:7.1f} "
        f"{'+' if s['isPositive'] else '-'} n={o['nSightings']}"
    )


def json_line(record: dict[str, Any]) -> str:
    """The packet as one JSON line, without the cutout bytes."""
    slim = {k: v for k, v in record.items() if not k.startswith("cutout")}
    return json.dumps(slim, default=str)


def save_alert(alert: Alert, directory: Path, *, cutouts: bool) -> None:
    """Write ``<alertId>.avro`` (an Avro container file, schema embedded) and optionally the cutouts as
    ``<alertId>_<kind>.fits`` beside it."""
    from seechange.imageio import write_bytes_atomic

    write_bytes_atomic(directory / f"{alert.alert_id}.avro", container_bytes([alert.record], alert.schema))
    if cutouts:
        for kind, data in cutout_fits(alert.record).items():
            write_bytes_atomic(directory / f"{alert.alert_id}_{kind}.fits", data)


@click.command("subscribe")
@click.option(
    "--from",
    "start",
    default="now",
    show_default=True,
    help="now | beginning | committed (the group's offsets) | Unix seconds | ISO time (UTC).",
)
@click.option("--until", default=None, help="Stop at this time (Unix seconds or ISO time, UTC).")
@click.option("--max", "max_messages", type=int, default=None, help="Stop after this many alerts.")
@click.option("--to-end", is_flag=True, help="Stop at the end of the stream (every partition read).")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.option("--group", default=None, help="Consumer group (resume where it stopped; share the work).")
@click.option("--topic", default="alerts", show_default=True, help="Topic (the configured prefix is added).")
@connection_options
@click.option("--min-mag", type=float, default=None, help="Keep alerts at least this faint (mag).")
@click.option("--max-mag", type=float, default=None, help="Keep alerts at most this faint (mag).")
@click.option("--min-snr", type=float, default=None, help="Keep alerts with |SNR| at least this.")
@click.option("--max-snr", type=float, default=None, help="Keep alerts with |SNR| at most this.")
@click.option("--band", "bands", multiple=True, help="Keep alerts in this band (repeat for several).")
@click.option("--cone", nargs=3, type=float, default=None, help="RA DEC RADIUS: degrees, degrees, arcsec.")
@click.option("--new-only", is_flag=True, help="Only the first sighting of each object.")
@click.option("--good-only", is_flag=True, help="Only sightings that passed the quality cuts.")
@click.option("--positive-only", is_flag=True, help="Only brightening sources.")
@click.option("--min-detections", type=int, default=None, help="Objects with at least this many sightings.")
@click.option("--object", "object_name", default=None, help="Keep alerts of this object name.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["line", "json", "none"]),
    default="line",
    show_default=True,
    help="One line per alert, JSON lines (without cutouts), or nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--save",
    "save_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each packet as <alertId>.avro, an Avro container file with the schema embedded.",
)
@click.option("--cutouts", is_flag=True, help="With --save: also write <alertId>_<kind>.fits.")
@click.pass_obj
def subscribe_cmd(
    settings: Settings,
    start: str,
    until: str | None,
    max_messages: int | None,
    to_end: bool,
    timeout: float | None,
    group: str | None,
    topic: str,
    bootstrap: str | None,
    kafka_pairs: tuple[str, ...],
    kafka_config: Path | None,
    min_mag: float | None,
    max_mag: float | None,
    min_snr: float | None,
    max_snr: float | None,
    bands: tuple[str, ...],
    cone: tuple[float, float, float] | None,
    new_only: bool,
    good_only: bool,
    positive_only: bool,
    min_detections: int | None,
    object_name: str | None,
    fmt: str,
    as_json: bool,
    save_dir: Path | None,
    cutouts: bool,
) -> None:
    """Receive alerts (from now, the beginning, a time or the group's offsets), filter, print, save."""
    from seechange.client import stream_alerts

    keep = AlertFilter(
        min_mag=min_mag,
        max_mag=max_mag,
        min_snr=min_snr,
        max_snr=max_snr,
        bands=bands or None,
        cone=cone or None,
        new_only=new_only,
        good_only=good_only,
        positive_only=positive_only,
        min_detections=min_detections,
        object_name=object_name,
    )
    fmt = "json" if as_json else fmt
    skipped: list[Skipped] = []
    n = 0
    for alert in stream_alerts(
        connection_from(settings, bootstrap, kafka_pairs, kafka_config),
        settings.topic(topic),
        start=parse_start(start),
        group=group,
        keep=keep,
        max_alerts=max_messages,
        until=parse_until(until),
        stop_at_end=to_end,
        idle_timeout=timeout,
        on_skip=skipped.append,
        private_group_prefix=f"{settings.consumer_group_prefix}-subscribe",
    ):
        n += 1
        if save_dir:
            save_alert(alert, save_dir, cutouts=cutouts)
        if fmt == "line":
            click.echo(alert_line(alert.record))
        elif fmt == "json":
            click.echo(json_line(alert.record))
    for s in skipped:
        click.echo(f"skipped {s.topic}[{s.partition}]@{s.offset}: {s.reason}", err=True)
    click.echo(f"{n} alert(s)" + (f", {len(skipped)} undecodable skipped" if skipped else ""), err=True)


@click.command("replay")
@click.argument(
    "topic",
    required=False,
    type=click.Choice(["exposure-ready", "image-reduced", "subtraction-done", "sighting-found"]),
)
@click.option(
    "--stage",
    type=click.Choice(["reduce", "subtract", "detect", "alert"]),
    default=None,
    help="Replay the input topic of this stage (instead of naming TOPIC).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="STEP.KEY=VALUE",
    help="Reprocess with this parameter changed (repeat): the stage runs here, under a group of its own.",
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
@click.option("--idle-timeout", type=float, default=60.0, show_default=True, help="--set: give up after.")
@click.pass_obj
def replay_cmd(
    settings: Settings,
    topic: str | None,
    stage: str | None,
    sets: tuple[str, ...],
    start: str,
    until: str | None,
    idle_timeout: float,
) -> None:
    """Re-publish a topic's events from a time, so the next stage reprocesses them; or, with --set,
    reprocess one stage with changed parameters.

    Without --set: with unchanged parameters the stages find their products and write nothing new. With
    --set (and --stage): the changed parameters are written to a parameters file, the stage runs in this
    process over its input topic with them (a one-off consumer group; the running services are left
    alone) and its events go downstream as usual; the new products (a new provenance) appear beside the
    old ones. Compare them with ``seechange provenance diff``.
    """
    from seechange.localservices import endpoints
    from seechange.streaming.stages import get_stage

    if (topic is None) == (stage is None):
        raise click.UsageError("name a TOPIC or a --stage (one of them)")
    if sets and stage is None:
        raise click.UsageError("--set needs --stage: the stage that runs with the changed parameters")
    if stage is not None:
        topic = get_stage(stage).input_topic
    assert topic is not None
    if not sets:
        from seechange.streaming.replay import replay

        settings = endpoints(settings, database_needed=False)
        n = replay(settings, topic, start=parse_start(start), until=parse_until(until))
        click.echo(f"replayed {n} message(s) onto {settings.topic(topic)}")
        return
    assert stage is not None
    from seechange.pipeline.overrides import changed_steps, write_params_file
    from seechange.pipeline.parameters import load_parameters
    from seechange.streaming.replay import reprocess

    if until is not None:
        raise click.UsageError("--until is not supported with --set (the stage reads to the end)")
    settings = endpoints(settings)
    folder = Path(settings.data_dir) / "params"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_params_file(settings.params_file, list(sets), folder)
    changes = changed_steps(load_parameters(settings.params_file), load_parameters(path))
    click.echo(f"parameters: {path}")
    for step, critical in changes.items():
        click.echo(
            f"  {step}: {'critical change, new provenance' if critical else 'non-critical change only'}"
        )
    if not any(changes.values()):
        click.echo("no critical parameter changed: the provenance is the same, nothing would be reprocessed")
        return
    one_off = settings.model_copy(update={"params_file": path})
    done = reprocess(
        one_off, get_stage(stage), start=parse_start(start), tag=path.stem[-10:], idle_timeout=idle_timeout
    )
    handled = (done.stats.processed, done.stats.dead_lettered) if done.stats else (0, 0)
    click.echo(
        f"reprocessed {handled[0]} of {done.messages} message(s) of {settings.topic(topic)} with {stage} "
        f"(group {done.group}; {handled[1]} dead-lettered)"
    )
    click.echo(
        f"to run the live {stage} service with these parameters: SEECHANGE_PARAMS_FILE={path} seechange serve {stage}"
    )
    click.echo(f"to compare: seechange provenance diff --step {stage}")


@click.command("lightcurve")
@click.argument("name")
@click.option(
    "--ecsv", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write an ECSV table."
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write CSV."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG plot."
)
@click.pass_obj
def lightcurve_cmd(
    settings: Settings, name: str, ecsv: Path | None, csv_path: Path | None, plot: Path | None
) -> None:
    """Print (and optionally save or plot) an object's detections, forced points and limits."""
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
    counts = {k: int(sum(table["kind"] == k)) for k in ("detection", "forced", "limit")}
    rich = RichTable(
        title=(
            f"{name}: {counts['detection']} detection(s), {counts['forced']} forced point(s), "
            f"{counts['limit']} limit(s); ra {table.meta['ra']:.6f} dec {table.meta['dec']:+.6f}"
        )
    )
    for col in ("mjd", "band", "kind", "flux_njy", "flux_njy_err", "mag", "mag_err", "snr", "is_good"):
        rich.add_column(col, justify="right")

    def fmt(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    for row in table:
        rich.add_row(
            f"{row['mjd']:.5f}",
            row["band"],
            row["kind"],
            fmt(row["flux_njy"], ".1f"),
            fmt(row["flux_njy_err"], ".1f"),
            (">" if row["kind"] == "limit" else "") + fmt(row["mag"], ".3f"),
            fmt(row["mag_err"], ".3f"),
            fmt(row["snr"], ".1f"),
            str(bool(row["is_good"])),
        )
    console = Console()
    if not console.is_terminal:  # piped or redirected: the whole table, not cut to 80 columns
        console = Console(width=120)
    console.print(rich)
    if ecsv:
        table.write(ecsv, format="ascii.ecsv", overwrite=True)
    if csv_path:
        table.write(csv_path, format="ascii.csv", overwrite=True)
    if plot:
        from seechange.lightcurve import plot_lightcurve

        plot_lightcurve(table, plot)
