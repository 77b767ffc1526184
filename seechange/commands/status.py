"""``seechange status``: each stage's consumer-group lag per topic partition, dead letters, last errors."""

from __future__ import annotations

import click

from seechange.config import Settings


@click.command("status")
@click.option("--last", default=3, show_default=True, help="Newest dead letters shown per stage.")
@click.pass_obj
def status(settings: Settings, last: int) -> None:
    """Print each consumer group's lag per topic, dead-letter counts and the last errors."""
    from seechange.localservices import endpoints
    from seechange.streaming.status import pipeline_status

    run = endpoints(settings)
    for s in pipeline_status(run, last=last):
        parts = " ".join(f"[{p}]={n}" for p, n in sorted(s.lag.items())) or "(topic absent)"
        click.echo(f"{s.stage:<9} group {s.group}: lag on {s.input_topic} {s.total_lag} {parts}")
        click.echo(f"{'':<9} dead letters on {s.dlq_topic}: {s.dead_letters}")
        for d in s.last_errors:
            h = d.headers
            click.echo(
                f"{'':<11}{h.get('failed_at', '?')} {h.get('service', '?')} "
                f"{h.get('origin_topic', '?')}[{h.get('origin_partition', '')}]@{h.get('origin_offset', '')}"
                f"{' ' + h['origin_path'] if 'origin_path' in h else ''}: "
                f"{h.get('error_class', '?')}: {h.get('error_message', '')}"
            )
