"""``seechange bench``: per-stage timings in-process, then nights through the services; tables and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from seechange.commands import parse_size
from seechange.config import Settings

#: stages that run as a service, as named by ``seechange serve`` (the in-process "alerts" is "alert")
_SERVICE_OF = {"reduce": "reduce", "subtract": "subtract", "detect": "detect", "alerts": "alert"}


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
    help="Also run nights through the services as processes (needs Kafka).",
)
@click.option(
    "--exposures",
    default=12,
    show_default=True,
    help="Timed CCDs of each end-to-end night (after a warm-up that builds each field's reference).",
)
@click.option(
    "--fields",
    default=4,
    show_default=True,
    help="Fields of the end-to-end nights (on different sky tiles, so spread over the partitions).",
)
@click.option(
    "--cadence",
    default=4.0,
    show_default=True,
    help="Seconds between ingested exposures in the latency night (0: skip that night).",
)
@click.option(
    "--second-instance/--no-second-instance",
    default=True,
    show_default=True,
    help="Also run the all-queued night with a second instance of the slowest in-process stage.",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Profile every stage of the first in-process run (pyinstrument) and write one profile per step here.",
)
@click.pass_obj
def bench(
    settings: Settings,
    size: str,
    runs: int,
    json_out: Path,
    e2e: bool,
    exposures: int,
    fields: int,
    cadence: float,
    second_instance: bool,
    profile_dir: Path | None,
) -> None:
    """Benchmark every stage on full-size simulated CCDs, and the services end to end, against the targets."""
    from rich.console import Console
    from rich.table import Table

    from seechange.bench import bench_end_to_end, bench_stages, target_rows
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
            profile_dir=profile_dir,
        )
    st = results["stages"]
    table = Table(title=f"stage timings, {nx}x{ny}, median of {runs} run(s)")
    for col in ("stage", "median", "CPU", "min", "max", "n"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, v in st["stages"].items():
        table.add_row(
            name,
            _fmt(v["median_s"], " s"),
            _fmt(v["cpu_median_s"], " s"),
            _fmt(v["min_s"], " s"),
            _fmt(v["max_s"], " s"),
            str(v["n"]),
        )
    table.add_row("per CCD", _fmt(st["per_ccd_s"], " s"), _fmt(st["per_ccd_cpu_s"], " s"), "", "", "")
    console.print(table)
    subs = st["quality"]["subtractions"]
    console.print(
        "subtractions: "
        + "; ".join(
            f"S_corr std {s['score_std']:.3f}, {s['n_sightings']} sightings, {s['n_good']} good, "
            f"{sum(s['bytes_written'].values()) / 1e6:.1f} MB written"
            for s in subs
        )
    )
    if profile_dir is not None:
        console.print(f"profiles (one per step of run 1) written to {profile_dir}")
    console.print(
        "this machine today (the stage figures scale with it): "
        + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.3f} s" for k, v in st["machine"].items())
    )

    if e2e:
        nights: list[tuple[str, float, tuple[str, ...]]] = [("e2e", 0.0, ())]
        if cadence > 0:
            nights.append(("cadence", cadence, ()))
        if second_instance:
            slowest = max(_SERVICE_OF, key=lambda k: st["stages"][k]["median_s"] or 0.0)
            nights.append(("e2e_second", 0.0, (_SERVICE_OF[slowest],)))
        for key, cad, extra in nights:
            what = f"{exposures} CCDs of {fields} fields, cadence {cad:g} s" + (
                f", 2 x {extra[0]}" if extra else ""
            )
            with console.status(f"a night through the services: {what}"):
                results[key] = bench_end_to_end(
                    run,
                    n_exposures=exposures,
                    n_fields=fields,
                    size=(nx, ny),
                    cadence=cad,
                    extra_instances=extra,
                )
            e = results[key]
            t2 = Table(title=f"end to end: {what}")
            t2.add_column("metric")
            t2.add_column("value", justify="right")
            lat = e["latency_s"]
            t2.add_row("latency median", _fmt(lat["median"], " s"))
            t2.add_row("latency p95", _fmt(lat["p95"], " s"))
            t2.add_row("latency max", _fmt(lat["max"], " s"))
            t2.add_row("alerts", f"{e['alerts']} received / {e['alerts_logged']} logged")
            t2.add_row("throughput", _fmt(e["ccds_per_min"], " CCDs/min", 1))
            t2.add_row("warm-up (references built)", _fmt(e["warmup_s"], " s", 1))
            for name, mb in e["peak_rss_mb"].items():
                t2.add_row(f"peak RSS {name}", _fmt(mb, " MB", 0))
            for name, cpu in e["cpu_s_per_ccd"].items():
                t2.add_row(f"CPU per CCD {name}", _fmt(cpu, " s"))
            t2.add_row("CPU busy (all cores)", _fmt(100 * (e["cpu_busy_fraction"] or 0), " %", 0))
            t2.add_row("exit codes", ", ".join(f"{k}={v}" for k, v in e["exit_codes"].items()))
            console.print(t2)

    t3 = Table(title="targets (issue 11)")
    for col in ("target", "measured", "goal", "met"):
        t3.add_column(col, justify="left" if col == "target" else "right")
    for name, value, unit, goal, met in target_rows(results):
        shown = "-" if value is None else (f"{value / 1e6:.1f} MB" if unit == "B" else f"{value:.2f} {unit}")
        t3.add_row(
            name, shown, goal.replace("4e+07 B", "40 MB"), "-" if met is None else ("yes" if met else "NO")
        )
    console.print(t3)

    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results written to {json_out}")
