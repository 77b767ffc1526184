"""``seechange chaos``: the long fault harness on a simulated night (see :mod:`seechange.chaos`)."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import click

from seechange.commands import parse_size
from seechange.config import Settings


@click.command("chaos")
@click.option("--kills", default=4, show_default=True, help="kill -9 of each service, this many times.")
@click.option(
    "--epochs", default=8, show_default=True, help="Epochs of the one field (3 build the reference)."
)
@click.option("--size", default="512x1024", show_default=True, help="CCD size NXxNY, pixels.")
@click.option("--seed", default=0, show_default=True, help="Seeds the order and timing of the faults.")
@click.option(
    "--extra-instances",
    default="subtract,detect,alert",
    show_default=True,
    help="Stages doubled mid-night, comma-separated ('' for none).",
)
@click.option(
    "--gap", default=(1.0, 4.0), type=(float, float), show_default=True, help="Seconds between faults."
)
@click.option(
    "--broker-outage",
    default=30.0,
    show_default=True,
    help="Seconds the Kafka broker is stopped mid-night, then restarted (0: none).",
)
@click.option(
    "--database-outage",
    default=15.0,
    show_default=True,
    help="Seconds PostgreSQL is stopped mid-night, then restarted (0: none).",
)
@click.pass_obj
def chaos(
    settings: Settings,
    kills: int,
    epochs: int,
    size: str,
    seed: int,
    extra_instances: str,
    gap: tuple[float, float],
    broker_outage: float,
    database_outage: float,
) -> None:
    """Run a night through the services while killing them; compare it with an undisturbed run.

    The disturbed run uses a Kafka broker and a PostgreSQL of its own (own cache folder and ports, stopped
    at the end), so that stopping them never disturbs anyone else's services.
    """
    from contextlib import ExitStack

    from seechange.chaos import ChaosPlan, compare, packet_differences, run_disturbed, undisturbed
    from seechange.localservices import endpoints
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.localservices.private import private_services
    from seechange.models.migrate import upgrade
    from seechange.models.session import make_engine, make_session_factory
    from seechange.sim.night import simulate_night
    from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

    stack = ExitStack()
    run = endpoints(settings)
    tag = f"chaos{uuid.uuid4().hex[:6]}"
    root = run.data_dir / "chaos" / tag
    night = simulate_night(root / "night", seed=seed, n_fields=1, n_epochs=epochs, size=parse_size(size))
    raw = [str(e.raw_path) for e in night.exposures]
    shutil.copytree(root / "night", root / "ref")
    own = (
        stack.enter_context(private_services(run, Path("/tmp") / tag))
        if broker_outage or database_outage
        else run
    )
    names = [f"{tag}_ref", f"{tag}_run"]
    urls = [create_database(run.database_url, names[0]), create_database(own.database_url, names[1])]
    disturbed = own.model_copy(
        update={
            "database_url": urls[1],
            "data_dir": root / "night",
            "topic_prefix": f"{tag}-",
            "consumer_group_prefix": tag,
        }
    )
    topics = topic_names(disturbed)
    engines = []
    try:
        for url in urls:
            upgrade(url)
            engines.append(make_engine(url))
        ensure_topics(disturbed.kafka_bootstrap, topics, disturbed.partitions)
        click.echo(f"undisturbed run of {len(raw)} CCDs ({size}) in-process ...")
        counts, keys, packets = undisturbed(make_session_factory(engines[0]), root / "ref", raw, run)
        plan = ChaosPlan(
            kills_per_service=kills,
            extra_instances=tuple(s.strip() for s in extra_instances.split(",") if s.strip()),
            gap_s=gap,
            seed=seed,
            broker_outage_s=broker_outage,
            database_outage_s=database_outage,
        )
        click.echo(f"disturbed run through the services: {plan}")
        report = run_disturbed(disturbed, raw, make_session_factory(engines[1]), root / "logs", plan)
    finally:
        for engine in engines:
            engine.dispose()
        delete_topics(disturbed.kafka_bootstrap, topics)
        drop_database(run.database_url, names[0])
        drop_database(own.database_url, names[1])
        stack.close()
    for t, what in report.actions:
        click.echo(f"  {t:7.1f} s  {what}")
    resent = len(report.alerts) - len({r["alertId"] for r in report.alerts})
    click.echo(
        f"faults: {report.kills} kill -9, {report.fault_crashes} fault-point crash(es), "
        f"{report.restarts} restarts, outages {report.outages} s; night through in {report.seconds:.0f} s"
    )
    click.echo(f"rows: {report.counts}")
    click.echo(
        f"alerts: {len(report.alerts)} received, {resent} re-sent; dead letters: {report.dead_letters}"
    )
    copies: dict[int, list[dict[str, Any]]] = {}
    for r in report.alerts:
        copies.setdefault(int(r["alertId"]), []).append(r)
    for alert_id, same in copies.items():
        for other in same[1:]:
            diff = packet_differences(same[0], other)
            click.echo(f"re-send of alert {alert_id}: " + (f"differs in {diff}" if diff else "identical"))
    problems = compare(report, counts, keys, packets)
    for p in problems:
        click.echo(f"PROBLEM: {p}", err=True)
    click.echo(
        "OK: every table, name and packet equals the undisturbed run"
        if not problems
        else f"{len(problems)} problem(s)"
    )
    click.echo(f"logs: {root / 'logs'}")
    sys.exit(1 if problems else 0)
