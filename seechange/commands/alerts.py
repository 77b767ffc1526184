"""``seechange alerts archive``: write a night's alerts into Avro container files with an index, follow the
topic as a service, or stream an archive back."""

from __future__ import annotations

import json
import signal
from datetime import date
from pathlib import Path
from types import FrameType

import click

from seechange.commands.stream import alert_line, connection_from, connection_options, json_line
from seechange.config import Settings


@click.group("alerts")
def alerts() -> None:
    """The alert archive."""


@alerts.command("archive")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--night", default=None, help="Observing night YYYY-MM-DD (dayObs: the UTC date 12 h earlier).")
@click.option("--follow", is_flag=True, help="Service mode: archive every alert as it arrives (a group).")
@click.option("--read", "read_back", is_flag=True, help="Stream the archive in DIRECTORY back.")
@click.option(
    "--per-file", type=int, default=None, help="Alerts per container file (default: one per partition)."
)
@click.option("--group", default=None, help="--follow: consumer group (default: <prefix>-archive).")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.option("--topic", default="alerts", show_default=True, help="Topic (the configured prefix is added).")
@click.option(
    "--format", "fmt", type=click.Choice(["line", "json", "index"]), default="line", help="--read output."
)
@connection_options
@click.pass_obj
def archive_cmd(
    settings: Settings,
    directory: Path,
    night: str | None,
    follow: bool,
    read_back: bool,
    per_file: int | None,
    group: str | None,
    timeout: float | None,
    topic: str,
    fmt: str,
    bootstrap: str | None,
    kafka_pairs: tuple[str, ...],
    kafka_config: Path | None,
) -> None:
    """Archive a night (--night), follow the topic (--follow), or read an archive back (--read)."""
    from seechange.streaming import archive

    if sum((night is not None and not read_back, follow, read_back)) != 1:
        raise click.UsageError("give exactly one of --night, --follow or --read")
    when = _night(night) if night else None
    if read_back:
        n = 0
        for row, record in archive.read_archive(directory, when):
            n += 1
            click.echo(
                json.dumps(row)
                if fmt == "index"
                else json_line(record)
                if fmt == "json"
                else alert_line(record)
            )
        click.echo(f"{n} alert(s) read from {directory}", err=True)
        return
    conn = connection_from(settings, bootstrap, kafka_pairs, kafka_config)
    if when is not None:
        n = archive.archive_night(
            conn, settings.topic(topic), when, directory, per_file=per_file, idle_timeout=timeout or 30.0
        )
        files = sorted((directory / when.isoformat()).glob("*.avro"))
        click.echo(
            f"archived {n} alert(s) of {when} into {len(files)} file(s) in {directory / when.isoformat()}"
        )
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through the archive's finally: files closed, offsets committed

    signal.signal(signal.SIGTERM, stop)
    try:
        n = archive.follow(
            conn,
            settings.topic(topic),
            directory,
            group=group or f"{settings.consumer_group_prefix}-archive",
            per_file=per_file,
            idle_timeout=timeout,
        )
    except KeyboardInterrupt:
        click.echo(f"stopped; the archive in {directory} is complete up to the last alert written")
        return
    click.echo(f"archived {n} alert(s) into {directory}")


def _night(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"--night must be YYYY-MM-DD, got {text!r}") from exc
