"""``seechange bench``: per-stage timings in-process, then a night through the services; a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from seechange.commands import parse_size
from seechange.config import Settings


def _fmt(v: Any, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


@click.command("bench")
@click.option("--size", default="2048x4096", show_default=True, help="CCD size NXxNY, pixels.")
@click.option("--runs", default=3, show_default=True, help="In-process repetitions (medians are reported).")
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results/bench.json"),
    show_default=True,
    help="Write the results here.",
)
@click.option(
    "--e2e/--no-e2e",
    default=True,
    show_default=True,
    help="Also run a night through the services as processes (needs Kafka).",
)
@click.option("--exposures", default=10, show_default=True, help="CCDs in the end-to-end night.")
@click.option(
    "--cadence",
    default=0.0,
    show_default=True,
    help="Seconds between ingested exposures in the end-to-end night (0: all at once).",
)
@click.pass_obj
def bench(
    settings: Settings, size: str, runs: int, json_out: Path, e2e: bool, exposures: int, cadence: float
) -> None:
    """Benchmark every stage on full-size simulated CCDs, and the services end to end."""
    from rich.console import Console
    from rich.table import Table

    from seechange.bench import bench_end_to_end, bench_stages
    from seechange.localservices import endpoints

    console = Console()
    nx, ny = parse_size(size)
    run = endpoints(settings, kafka_needed=e2e)
    results: dict[str, Any] = {}
    with console.status(f"timing the stages on {nx}x{ny} CCDs ({runs} run(s))"):
        results["stages"] = bench_stages(
            run.data_dir,
            run.database_url,
            size=(nx, ny),
            runs=runs,
            association_radius_arcsec=run.association_radius_arcsec,
        )
    st = results["stages"]
    table = Table(title=f"stage timings, {nx}x{ny}, median of {runs} run(s)")
    for col in ("stage", "median", "min", "max", "n"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, v in st["stages"].items():
        table.add_row(
            name, _fmt(v["median_s"], " s"), _fmt(v["min_s"], " s"), _fmt(v["max_s"], " s"), str(v["n"])
        )
    table.add_row("per CCD", _fmt(st["per_ccd_s"], " s"), "", "", "")
    console.print(table)
    subs = st["quality"]["subtractions"]
    console.print(
        "subtractions: "
        + "; ".join(
            f"S_corr std {s['score_std']:.3f}, {s['n_sightings']} sightings, {s['n_good']} good" for s in subs
        )
    )

    if e2e:
        with console.status(f"a night of {exposures} CCDs through the services"):
            results["e2e"] = bench_end_to_end(run, n_exposures=exposures, size=(nx, ny), cadence=cadence)
        e = results["e2e"]
        t2 = Table(title=f"end to end: {e['n_exposures']} CCDs, cadence {cadence:g} s")
        t2.add_column("metric")
        t2.add_column("value", justify="right")
        lat = e["latency_s"]
        t2.add_row("latency median", _fmt(lat["median"], " s"))
        t2.add_row("latency p95", _fmt(lat["p95"], " s"))
        t2.add_row("latency max", _fmt(lat["max"], " s"))
        t2.add_row("alerts", f"{e['alerts']} received / {e['alerts_logged']} logged")
        t2.add_row("throughput", _fmt(e["ccds_per_min"], " CCDs/min", 1))
        for name, mb in e["peak_rss_mb"].items():
            t2.add_row(f"peak RSS {name}", _fmt(mb, " MB", 0))
        t2.add_row("exit codes", ", ".join(f"{k}={v}" for k, v in e["exit_codes"].items()))
        console.print(t2)

    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results written to {json_out}")
