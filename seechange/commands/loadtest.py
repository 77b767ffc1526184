"""``seechange loadtest``: exposures at a fixed rate through the services (see :mod:`seechange.loadtest`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from seechange.commands import parse_size
from seechange.config import Settings


@click.command("loadtest")
@click.option("--rate", type=float, required=True, help="Exposures (CCDs) ingested per minute.")
@click.option("--minutes", type=float, default=5.0, show_default=True, help="Length of the timed feed.")
@click.option("--size", default="512x1024", show_default=True, help="CCD size NXxNY, pixels.")
@click.option("--interval", default=15.0, show_default=True, help="Seconds between samples.")
@click.option("--drain", default=300.0, show_default=True, help="Seconds to wait for catching up after.")
@click.option("--metrics-stage", default="subtract", show_default=True, help="Whose /metrics to capture.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here."
)
@click.pass_obj
def loadtest(
    settings: Settings,
    rate: float,
    minutes: float,
    size: str,
    interval: float,
    drain: float,
    metrics_stage: str,
    json_out: Path | None,
) -> None:
    """Feed exposures at RATE a minute for MINUTES; print throughput, lag and latency percentiles over time."""
    from seechange.loadtest import Sample, held, run_load, summary
    from seechange.localservices import endpoints

    click.echo(
        f"{'t/s':>7} {'in':>4} {'thru':>4} {'/min':>6}  lag per stage            latency p50/p95/max s"
    )

    def show(s: Sample) -> None:
        lag = " ".join(f"{k[:4]}={v}" for k, v in s.lag.items())
        lat = s.latency_s
        lat_txt = f"{lat['p50']}/{lat['p95']}/{lat['max']} (n={lat['n']})" if lat.get("n") else "-"
        click.echo(f"{s.t_s:7.1f} {s.ingested:4d} {s.through:4d} {s.per_min:6.2f}  {lag:<24} {lat_txt}")

    report = run_load(
        endpoints(settings),
        rate_per_min=rate,
        minutes=minutes,
        size=parse_size(size),
        interval_s=interval,
        drain_s=drain,
        metrics_stage=metrics_stage,
        on_sample=show,
    )
    ok = held(report)
    click.echo(
        f"feed {report.feed_s:.0f} s; caught up {report.drain_s} s after the last ingest; "
        f"latency over the feed {report.latency_s}"
    )
    click.echo(f"rate {rate:g}/min {'HELD (lag bounded)' if ok else 'NOT held (lag grew or no catch-up)'}")
    if report.metrics_sample:
        lines = [ln for ln in report.metrics_sample.splitlines() if ln.startswith("seechange_")]
        click.echo(f"/metrics of {report.metrics_service} mid-feed ({len(lines)} seechange_ samples):")
        for ln in lines:
            click.echo(f"  {ln}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({**summary(report), "metrics": report.metrics_sample}, indent=1))
    sys.exit(0 if ok else 1)
