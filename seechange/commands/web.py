"""``seechange web``: the pages (recent alerts, objects, pipeline) and the JSON API, in one process."""

from __future__ import annotations

import click

from seechange.config import Settings

DEFAULT_PORT = 8765


def run_web(settings: Settings, host: str, port: int, *, latency_n: int = 50) -> None:
    """Serve ``settings``' database, data root and topics on ``host``:``port`` until Ctrl-C.

    The address is printed first; a busy ``port`` is replaced by a free one (and said so).
    """
    from seechange.web.app import create_app
    from seechange.web.server import pick_port, serve_forever

    chosen = pick_port(host, port)
    app = create_app(settings, latency_n=latency_n)
    if chosen != port and port != 0:
        click.echo(f"port {port} is busy; using {chosen}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    click.echo(f"web page: http://{shown}:{chosen}/   (JSON API: /api, /openapi.json; Ctrl-C stops it)")
    serve_forever(app, host, chosen)


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="Port (0: any free one).")
@click.option("--latency-n", default=50, show_default=True, help="Exposures in the latency plot.")
@click.option(
    "--bench",
    "bench_alerts",
    type=int,
    default=None,
    metavar="N",
    help="Instead of serving: fill a bench database with N alerts and measure the alerts page's load time.",
)
@click.option("--runs", default=7, show_default=True, help="With --bench: loads per measurement.")
@click.option("--json", "json_path", default=None, help="With --bench: write the figures to this file.")
@click.pass_obj
def web(
    settings: Settings,
    host: str,
    port: int,
    latency_n: int,
    bench_alerts: int | None,
    runs: int,
    json_path: str | None,
) -> None:
    """Serve the web pages and JSON API (read-only on the database and files) until Ctrl-C."""
    from seechange.localservices import endpoints

    if bench_alerts is not None:
        import json
        from pathlib import Path

        from seechange.localservices import up
        from seechange.web.bench import bench_alerts_page

        up(settings)  # the local services, started when they are not running
        result = bench_alerts_page(endpoints(settings), n_alerts=bench_alerts, runs=runs, echo=click.echo)
        if json_path:
            Path(json_path).write_text(json.dumps(result, indent=2))
        return
    from seechange.localservices.manager import ServiceError

    try:
        filled = endpoints(settings)
    except ServiceError as exc:  # the pages work without the broker; the pipeline page says it is down
        click.echo(f"warning: {exc}; the pipeline page will show the broker as unavailable")
        filled = endpoints(settings, kafka_needed=False)
    run_web(filled, host, port, latency_n=latency_n)
