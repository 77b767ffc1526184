"""``seechange demo``: services up, a simulated night through every service as its own process, alerts
received by a real subscriber, and a summary (rows per table, alerts, transients recovered, latency)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from seechange.commands import parse_size
from seechange.config import Settings

DEMO_PREFIX = "demo."
DEMO_DATABASE = "seechange_demo"


def recovered_transients(
    session: Any, data_dir: Path, alerts: list[tuple[dict[str, Any], int]], radius_arcsec: float
) -> tuple[int, int, int]:
    """(transients visible after the reference epochs, of which with an alert, distinct objects per one).

    A transient counts as recovered when an alert lies within ``radius_arcsec`` of its true position.
    """
    from seechange.pipeline.association import angular_sep_arcsec

    night = json.loads((data_dir / "truth" / "night.json").read_text())
    last_mjd = max(e["mjd"] for e in night["exposures"])
    visible = [t for t in night["transients"] if t["kind"] == "transient" and t["t_start"] < last_mjd]
    found, split = 0, 0
    for t in visible:
        objs = {
            a["object"]["objectId"]
            for a, _ in alerts
            if angular_sep_arcsec(t["ra"], t["dec"], a["sighting"]["ra"], a["sighting"]["dec"])
            < radius_arcsec
        }
        found += bool(objs)
        split += len(objs) > 1
    return len(visible), found, split


@click.command("demo")
@click.option("--fields", default=2, show_default=True, help="Simulated fields.")
@click.option(
    "--epochs", default=6, show_default=True, help="Epochs per field (the first 3 build references)."
)
@click.option("--size", default="2048x4096", show_default=True, help="CCD size NXxNY, pixels.")
@click.option("--seed", default=42, show_default=True)
@click.option(
    "--cadence",
    default=6.0,
    show_default=True,
    help="Seconds between ingested exposures, like a telescope's (0: all at once, which measures "
    "queueing rather than processing latency).",
)
@click.option("--timeout", default=900.0, show_default=True, help="Give up after this many seconds.")
@click.option(
    "--instrument",
    default="decam",
    show_default=True,
    type=click.Choice(["decam", "ls4"], case_sensitive=False),
)
@click.option("--ccds", default=1, show_default=True, help="CCDs per exposure.")
@click.option(
    "--format",
    "fmt",
    default="mef-fz",
    show_default=True,
    type=click.Choice(["single", "mef", "mef-fz"]),
    help="Raw files as archives deliver them: one tile-compressed multi-extension file per exposure.",
)
@click.option(
    "--web/--no-web",
    default=True,
    show_default=True,
    help="Afterwards serve the web page on the demo's night (address printed) until Ctrl-C.",
)
@click.option(
    "--web-port", default=8765, show_default=True, help="Port of the web page (busy: any free one)."
)
@click.option(
    "--topic-prefix",
    default=DEMO_PREFIX,
    show_default=True,
    help="Prefix of the demo's topics (its topics are deleted and re-created at the start).",
)
@click.option(
    "--database",
    default=DEMO_DATABASE,
    show_default=True,
    help="The demo's database on the local PostgreSQL (dropped and re-created at the start).",
)
@click.pass_obj
def demo(
    settings: Settings,
    fields: int,
    epochs: int,
    size: str,
    seed: int,
    cadence: float,
    timeout: float,
    instrument: str,
    ccds: int,
    fmt: str,
    web: bool,
    web_port: int,
    topic_prefix: str,
    database: str,
) -> None:
    """Run a simulated night through every service and print what came out."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn
    from rich.table import Table

    from seechange.localservices import up
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.models.migrate import upgrade
    from seechange.models.session import make_engine, make_session_factory
    from seechange.orchestrate import (
        AlertCollector,
        ServiceProcesses,
        alert_latencies,
        table_counts,
        wait_for_night,
    )
    from seechange.sim.instrument import sim_camera
    from seechange.sim.night import simulate_night
    from seechange.streaming.ingestor import Ingestor
    from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

    console = Console()
    nx, ny = parse_size(size)
    t_start = time.monotonic()
    with console.status("starting Kafka and PostgreSQL"):
        ep = up(settings)
    run_id = time.strftime("%H%M%S")
    data_dir = settings.data_dir / "demo"
    db_name = database
    drop_database(ep.database_url, db_name)
    db_url = create_database(ep.database_url, db_name)
    upgrade(db_url)
    run = settings.model_copy(
        update={
            "kafka_bootstrap": ep.kafka_bootstrap,
            "database_url": db_url,
            "data_dir": data_dir,
            "topic_prefix": topic_prefix,
            "consumer_group_prefix": f"demo{run_id}",
        }
    )
    admin_names = topic_names(run)
    delete_topics(run.kafka_bootstrap, admin_names)  # the previous demo's events
    ensure_topics(run.kafka_bootstrap, admin_names, run.partitions)
    console.print(
        f"services up in {time.monotonic() - t_start:.1f} s: kafka {ep.kafka_bootstrap}, "
        f"database {db_name}, topics prefix {run.topic_prefix!r}"
    )

    shutil.rmtree(data_dir, ignore_errors=True)
    t0 = time.monotonic()
    camera = sim_camera(instrument)
    ccdnums = camera.pick_ccds(ccds)
    with console.status(
        f"simulating {fields} field(s) x {epochs} epochs of {len(ccdnums)} {camera.name} {nx}x{ny} CCD(s)"
    ):
        night = simulate_night(
            data_dir,
            seed=seed,
            n_fields=fields,
            n_epochs=epochs,
            size=(nx, ny),
            exptime=camera.definition.exptime_default,
            instrument=camera.name,
            ccdnums=ccdnums,
            fmt=fmt,
        )
    console.print(
        f"simulated {len(night.exposures)} CCD exposures in {len(night.raw_files)} {fmt} file(s) in "
        f"{time.monotonic() - t0:.1f} s under {data_dir}"
    )

    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    services = ServiceProcesses(run, data_dir / "logs")
    collector = AlertCollector(run)
    collector.start()
    collector.ready.wait(15)
    services.start()
    ingestor = Ingestor(run, sessions)
    t_night = time.monotonic()
    try:
        exposure_ids: list[int] = []
        with Progress(
            TextColumn("{task.description:>11}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[extra]}"),
            console=console,
        ) as bar:
            n = len(night.exposures)
            tasks = {
                k: bar.add_task(k, total=n, extra="")
                for k in ("ingested", "reduced", "subtracted", "detected")
            }
            alerts_task = bar.add_task("alerts", total=None, extra="")

            def show(p: Any, received: int) -> None:
                bar.update(tasks["ingested"], completed=len(exposure_ids))
                bar.update(tasks["reduced"], completed=p.reduced)
                bar.update(
                    tasks["subtracted"],
                    completed=p.through_subtract,
                    extra=f"({p.no_reference} reference members or without reference)",
                )
                bar.update(
                    tasks["detected"], completed=p.detected + p.no_reference, extra=f"{p.sightings} sightings"
                )
                bar.update(
                    alerts_task, completed=received, extra=f"{p.alerts_logged} sent, {received} received"
                )

            for raw_file in night.raw_files:
                report = ingestor.ingest([data_dir / raw_file])
                exposure_ids.extend(report.registered)
                if cadence:
                    time.sleep(cadence)
            final = wait_for_night(
                sessions, exposure_ids, collector, timeout=timeout, on_progress=show, services=services
            )
            show(final, len(collector.snapshot()))
        elapsed = time.monotonic() - t_night
    finally:
        ingestor.close()
        codes = services.stop()
        collector.stop()
    alerts = collector.snapshot()
    with sessions() as s:
        counts = table_counts(s)
        latencies = alert_latencies(s, alerts)
        n_vis, n_found, n_split = recovered_transients(s, data_dir, alerts, run.association_radius_arcsec)
    engine.dispose()

    table = Table(title="rows per table")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    console.print(table)
    console.print(
        f"night of {len(exposure_ids)} exposures through every service in {elapsed:.1f} s "
        f"({60 * len(exposure_ids) / elapsed:.1f} CCDs/min)"
    )
    console.print(
        f"alerts received by a subscriber on {run.topic('alerts')}: {len(alerts)} "
        f"({collector.undecodable} undecodable)"
    )
    console.print(
        f"injected transients visible after the reference epochs: {n_vis}; with an alert: {n_found}; "
        f"split over several objects: {n_split}"
    )
    if len(latencies):
        console.print(
            f"exposure-to-alert latency: median {np.median(latencies):.1f} s, "
            f"p95 {np.percentile(latencies, 95):.1f} s (n={len(latencies)})"
        )
    console.print(f"services stopped: {', '.join(f'{k}={v}' for k, v in codes.items())}")
    click.echo(
        "explore it (the demo keeps its topics, database and files until the next demo): in each terminal\n"
        f"  export SEECHANGE_TOPIC_PREFIX={topic_prefix} SEECHANGE_DATABASE_URL='{db_url}' "
        f"SEECHANGE_DATA_DIR={data_dir}\n"
        "  seechange subscribe --from beginning --to-end\n"
        "  seechange lightcurve <object name>"
    )
    if any(c != 0 for c in codes.values()):
        raise RuntimeError(
            "a service did not shut down cleanly (exit code above); see " + str(data_dir / "logs")
        )
    if web:
        from seechange.commands.web import run_web

        run_web(run, "127.0.0.1", web_port)
