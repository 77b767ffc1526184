"""Benchmarks: per-stage timings in-process, and a night through the services as processes.

``bench_stages`` simulates a small night of full-size CCDs once (cached under the data dir), then times each
stage function (reduce, reference build, subtract, detect, alert building) on it, in a fresh database per
run so that everything is really recomputed; medians over the runs. ``bench_end_to_end`` runs the services
as OS processes against Kafka and PostgreSQL and measures exposure-to-alert latency, throughput and the peak
resident memory of each service. ``seechange bench`` (``seechange.commands.bench``) prints both.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seechange.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "TARGETS",
    "bench_end_to_end",
    "bench_stages",
    "cpu_seconds",
    "machine_reference",
    "peak_rss_mb",
    "simulated_night",
    "target_rows",
]

STAGES = ("reduce", "reference", "subtract", "detect", "alerts")
DEFAULT_RADIUS_ARCSEC: float = Settings.model_fields["association_radius_arcsec"].default
N_REF = 3  # reference epochs of the simulated night (ReferenceParams.n_ref_images)


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def simulated_night(
    root: Path, *, size: tuple[int, int], n_epochs: int, n_fields: int = 1, seed: int = 42
) -> list[str]:
    """Raw paths (relative to ``root``) of a night of ``n_fields`` x ``n_epochs`` CCDs, simulated only once.

    Paths are in time order: epoch 0 of every field, then epoch 1, ... (as ``simulate_night`` interleaves
    them), so path ``i`` is epoch ``i // n_fields``. The night is kept under ``root``; a ``bench-night.json``
    stamp records what it is, so a second call with the same size, fields, epochs and seed reuses it.
    """
    from seechange.sim.night import simulate_night

    stamp = root / "bench-night.json"
    want = {"size": list(size), "n_epochs": n_epochs, "n_fields": n_fields, "seed": seed}
    if stamp.exists():
        got = json.loads(stamp.read_text())
        if {k: got.get(k, 1 if k == "n_fields" else None) for k in want} == want:
            return list(got["raw_paths"])
    root.mkdir(parents=True, exist_ok=True)
    night = simulate_night(
        root, seed=seed, n_fields=n_fields, n_epochs=n_epochs, size=size, n_ref_epochs=N_REF
    )
    epochs = [e.epoch for e in night.exposures]
    if epochs != [i // n_fields for i in range(len(epochs))]:
        raise RuntimeError("simulate_night no longer interleaves fields epoch by epoch")
    raw = [str(e.raw_path) for e in night.exposures]
    stamp.write_text(json.dumps({**want, "raw_paths": raw}))
    return raw


def _one_run(
    night_dir: Path,
    raw_paths: Sequence[str],
    db_url: str,
    radius_arcsec: float,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Every stage on the night in a fresh database: per-item timings (s) and what came out."""
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.chain import InProcessChain
    from seechange.pipeline.parameters import PipelineParameters

    params = PipelineParameters()
    assert params.reference.n_ref_images == N_REF, (
        "the benchmark night is simulated for the default reference"
    )
    engine = make_engine(db_url)
    chain = InProcessChain(
        make_session_factory(engine),
        night_dir,
        params,
        radius_arcsec=radius_arcsec,
        profile_dir=profile_dir,
    )
    out: dict[str, Any] = {"images": [], "subtractions": []}
    stems: dict[int, str] = {}
    try:
        image_ids = []
        for raw in raw_paths:
            img = chain.reduce(chain.ingest(raw))
            image_ids.append(img.id)
            stems[img.id] = img.filepath
            out["images"].append(
                {
                    "zp": img.zero_point,
                    "fwhm_arcsec": img.fwhm_arcsec,
                    "astrom_rms_arcsec": img.astrom_rms_arcsec,
                    "n_stars": img.n_stars,
                }
            )
        for image_id in image_ids[N_REF:]:
            ref = chain.reference(image_id)
            assert ref is not None, "the benchmark night must give a reference after its first epochs"
            sub = chain.subtract(image_id)
            assert sub is not None, (
                f"image {image_id} is not a member of its reference but was not subtracted"
            )
            sightings = chain.detect(sub.id)
            good = [x.id for x in sightings if x.is_good]
            n_alerts = chain.alerts(good)
            name = Path(sub.filepath).name  # cutouts/<detect prov8>/<name>.cutouts.fits
            cutouts = set(night_dir.glob(f"cutouts/*/{name}.cutouts.fits")) if sightings else set()
            out["subtractions"].append(
                {
                    "score_std": sub.score_std,
                    "n_sightings": len(sightings),
                    "n_good": len(good),
                    "n_alerts": n_alerts,
                    "bytes_written": {
                        "reduced": _bytes_of(night_dir, stems[image_id]),
                        "subtraction": _bytes_of(night_dir, sub.filepath),
                        "cutouts": sum(c.stat().st_size for c in cutouts),
                    },
                }
            )
    finally:
        engine.dispose()
    # the reference is built by the first call and found by the others: its time is the first one's
    out["times"] = {k: (chain.times[k][:1] if k == "reference" else chain.times[k]) for k in STAGES}
    out["cpu_times"] = {
        k: (chain.cpu_times[k][:1] if k == "reference" else chain.cpu_times[k]) for k in STAGES
    }
    return out


def machine_reference(repeats: int = 5, shape: tuple[int, int] = (4096, 2048)) -> dict[str, float]:
    """How fast this machine is today, on work that does not depend on this project's code.

    Medians over ``repeats`` of a float32 ``rfft2`` + ``irfft2`` pair of a full-size CCD (``scipy.fft``, one
    worker and every core) and of sorting 4 M float64 values, wall seconds. The stage figures of two runs
    on different machines, or one machine on different days (a shared host's speed varies by 2x), compare
    only through these: the bench's figures scale with them.
    """
    from scipy import fft as sfft

    rng = np.random.default_rng(0)
    a = rng.random(shape, dtype=np.float32)
    v = rng.random(4 * 1024 * 1024)
    workers = os.cpu_count() or 1

    def timed(fn: Callable[[], object]) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(statistics.median(ts))

    return {
        "fft_pair_1_worker_s": timed(lambda: sfft.irfft2(sfft.rfft2(a), s=shape)),
        f"fft_pair_{workers}_workers_s": timed(
            lambda: sfft.irfft2(sfft.rfft2(a, workers=workers), s=shape, workers=workers)
        ),
        "sort_4M_s": timed(lambda: np.sort(v)),
    }


def _bytes_of(root: Path, stem: str) -> int:
    """Bytes of every file ``<stem>.*`` of a product (the four image files, the six ZOGY files)."""
    base = root / stem
    return sum(f.stat().st_size for f in base.parent.glob(f"{base.name}.*") if f.is_file())


def bench_stages(
    data_dir: Path,
    database_url: str,
    *,
    size: tuple[int, int] = (2048, 4096),
    runs: int = 3,
    n_epochs: int = 5,
    association_radius_arcsec: float = DEFAULT_RADIUS_ARCSEC,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Time each stage function in-process on a simulated night of full-size CCDs.

    Parameters
    ----------
    data_dir : Path
        Where the night is simulated (once; ``<data_dir>/bench/<nx>x<ny>``) and products are written.
    database_url : str
        SQLAlchemy URL of any database on a PostgreSQL server; each run creates (and drops) its own database
        there, so each run recomputes every product.
    size : tuple of int
        ``(nx, ny)`` of a CCD, pixels.
    runs : int
        Repetitions; times are medians over runs and items.
    n_epochs : int
        Epochs of the one field (the first three build the reference; the rest are subtracted).
    association_radius_arcsec : float
        Sighting-to-object association radius, arcsec (``settings.association_radius_arcsec``).
    profile_dir : Path, optional
        Profile every step of the first run with ``pyinstrument`` and write ``<stage>-<n>.txt/.html`` there
        (with more than one run, the profiled first run is left out of the figures: the profiler costs
        time).

    Returns
    -------
    dict
        ``machine``: :func:`machine_reference` (timed after the runs); ``stages``: per stage ``{"median_s", "min_s", "max_s", "n"}`` (reduce per CCD, reference once per
        run, subtract / detect per subtraction, alerts = building every good sighting's alert of one
        subtraction; ``cpu_median_s`` the same in CPU seconds of the process); ``per_ccd_s`` (and
        ``per_ccd_cpu_s``): reduce + subtract + detect + alerts medians (the in-process latency of a new CCD
        once its reference exists); ``per_alert_ms``: alert stage time per alert built; ``bytes_per_ccd``:
        bytes of the files kept for one subtracted CCD (reduced image, ZOGY products, cutouts); ``quality``: what the last run produced (to compare before and
        after a speed change); ``runs``: the raw timings.
    """
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.models.migrate import upgrade

    if n_epochs <= N_REF:
        raise ValueError(f"n_epochs must exceed the {N_REF} reference epochs")
    nx, ny = size
    night_dir = Path(data_dir) / "bench" / f"{nx}x{ny}"
    t0 = time.perf_counter()
    raw = simulated_night(night_dir, size=size, n_epochs=n_epochs)
    sim_s = time.perf_counter() - t0
    all_runs = []
    for i in range(runs):
        name = f"bench_{uuid.uuid4().hex[:8]}"
        url = create_database(database_url, name)
        try:
            upgrade(url)
            log.info("bench run %d of %d in database %s", i + 1, runs, name)
            prof = profile_dir if i == 0 else None
            all_runs.append(_one_run(night_dir, raw, url, association_radius_arcsec, prof))
        finally:
            drop_database(database_url, name)
    stages: dict[str, dict[str, Any]] = {}
    timed = all_runs[1:] if profile_dir is not None and len(all_runs) > 1 else all_runs
    for k in STAGES:
        vals = [t for r in timed for t in r["times"][k]]
        cpu = [t for r in timed for t in r["cpu_times"][k]]
        stages[k] = {
            "median_s": _median(vals),
            "min_s": min(vals) if vals else None,
            "max_s": max(vals) if vals else None,
            "cpu_median_s": _median(cpu),
            "n": len(vals),
        }
    per_ccd = sum(stages[k]["median_s"] or 0.0 for k in ("reduce", "subtract", "detect", "alerts"))
    per_ccd_cpu = sum(stages[k]["cpu_median_s"] or 0.0 for k in ("reduce", "subtract", "detect", "alerts"))
    per_alert = [
        1000.0 * t / q["n_alerts"]
        for r in timed
        for t, q in zip(r["times"]["alerts"], r["subtractions"], strict=True)
        if q["n_alerts"]
    ]
    written = [sum(q["bytes_written"].values()) for r in timed for q in r["subtractions"]]
    return {
        "machine": machine_reference(),
        "size": [nx, ny],
        "runs": runs,
        "n_epochs": n_epochs,
        "simulate_s": sim_s,
        "stages": stages,
        "per_ccd_s": per_ccd,
        "per_ccd_cpu_s": per_ccd_cpu,
        "per_alert_ms": _median(per_alert),
        "bytes_per_ccd": _median([float(b) for b in written]),
        "quality": {k: all_runs[-1][k] for k in ("images", "subtractions")},
        "raw_times": [r["times"] for r in all_runs],
    }


# ------------------------------------------------------------------------------------------------ end to end
def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (``VmHWM``) of a live process, MB; None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (index 0 is the state), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, tree: bool = False) -> float | None:
    """CPU time (user + system, every thread) a live process has used, seconds; None if it cannot be read.

    ``tree``: add its live descendants and its reaped children (a PostgreSQL postmaster and its backends).
    """
    fields = _stat_fields(pid)
    if fields is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = int(fields[11]) + int(fields[12])  # utime, stime
    if not tree:
        return total / tick
    total += int(fields[13]) + int(fields[14])  # cutime, cstime: children that have exited
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(f[1]), []).append(int(entry.name))
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (f := _stat_fields(child)) is not None:
            total += int(f[11]) + int(f[12])
        todo.extend(children.get(child, []))
    return total / tick


def _cpu_snapshot(services: Any, settings: Settings) -> dict[str, float | None]:
    """CPU seconds used so far by each service process, the local broker, the local PostgreSQL and this
    process (ingestion and the alert collector)."""
    from seechange.localservices.kafka import kafka_pid
    from seechange.localservices.postgres import postgres_pid

    snap = {name: cpu_seconds(p.pid) for name, p in services.procs}
    k, pg = kafka_pid(settings), postgres_pid(settings)
    snap["kafka"] = cpu_seconds(k) if k is not None else None
    snap["postgres"] = cpu_seconds(pg, tree=True) if pg is not None else None
    snap["bench driver"] = time.process_time()
    return snap


def bench_end_to_end(
    settings: Settings,
    *,
    n_exposures: int = 12,
    n_fields: int = 4,
    size: tuple[int, int] = (2048, 4096),
    cadence: float = 0.0,
    timeout: float = 900.0,
    on_progress: Callable[[Any, int], None] | None = None,
    extra_instances: Sequence[str] = (),
) -> dict[str, Any]:
    """A night through the services (one OS process each): latency, sustained throughput and memory.

    The night has ``n_fields`` fields, ten degrees apart (so on different sky tiles, hence spread over the
    topics' partitions, as the CCDs of a real night are). It runs in two phases. Warm-up, not timed: each
    field's reference epochs and its first new epoch are ingested and processed to their alerts, which builds
    every field's reference (operators prepare templates before observing: ``seechange reference build``)
    and warms the services. Timed: ``n_exposures`` more CCDs (new epochs, round-robin over the fields) are
    ingested all at once (``cadence`` 0: sustained throughput) or one every ``cadence`` seconds (latency).

    Parameters
    ----------
    settings : Settings
        Kafka and PostgreSQL addresses (resolved) and the data dir; the run uses its own database, topic
        prefix and consumer groups, so it never touches other data.
    n_exposures : int
        CCDs of the timed phase.
    n_fields : int
        Fields of the night.
    size : tuple of int
        ``(nx, ny)`` of a CCD, pixels.
    cadence : float
        Seconds between ingested exposures of the timed phase (0: all at once).
    timeout : float
        Give up on either phase after this many seconds.
    extra_instances : sequence of str
        Stages given a second service instance (the consumer group shares the topic's partitions).

    Returns
    -------
    dict
        ``latency_s`` (median, p95, max, n over the timed phase's alerts: exposure ingestion to the alert's
        broker timestamp), ``ccds_per_min`` (timed exposures / ``through_s``, the time from their first
        ingestion to their last alert's broker timestamp), ``elapsed_s`` (until the night was seen through),
        ``warmup_s``, ``peak_rss_mb`` per service (VmHWM read before stopping, so it
        covers the warm-up's reference builds too), ``cpu_s_per_ccd`` (CPU seconds each service, the local
        broker, the local PostgreSQL and the bench process itself used in the timed phase, per timed CCD),
        ``cpu_busy_fraction`` (their sum over the cores' time in the timed phase: near 1, the machine's CPU
        is the limit), ``alerts`` (of the timed phase), ``exit_codes``.
    """
    from sqlalchemy import select

    from seechange.localservices.postgres import create_database, drop_database
    from seechange.models.image import Image, SubtractionImage
    from seechange.models.migrate import upgrade
    from seechange.models.session import make_engine, make_session_factory
    from seechange.orchestrate import AlertCollector, ServiceProcesses, alert_latencies, wait_for_night
    from seechange.streaming.ingestor import Ingestor
    from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

    if n_exposures < 1 or n_fields < 1:
        raise ValueError("n_exposures and n_fields must be >= 1")
    nx, ny = size
    n_epochs = N_REF + 1 + -(-n_exposures // n_fields)
    night_dir = Path(settings.data_dir) / "bench" / f"e2e_{nx}x{ny}_{n_fields}x{n_epochs}"
    raw = simulated_night(night_dir, size=size, n_epochs=n_epochs, n_fields=n_fields)
    n_warm = (N_REF + 1) * n_fields
    warm_paths, timed_paths = raw[:n_warm], raw[n_warm : n_warm + n_exposures]
    run_id = uuid.uuid4().hex[:8]
    db_name = f"bench_e2e_{run_id}"
    db_url = create_database(settings.database_url, db_name)
    upgrade(db_url)
    run = settings.model_copy(
        update={
            "database_url": db_url,
            "data_dir": night_dir,
            "topic_prefix": f"bench{run_id}.",
            "consumer_group_prefix": f"bench{run_id}",
        }
    )
    names = topic_names(run)
    ensure_topics(run.kafka_bootstrap, names, run.partitions)
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    services = ServiceProcesses(run, night_dir / "logs" / run_id)
    collector = AlertCollector(run)
    collector.start()
    collector.ready.wait(15)
    services.start()
    for stage in extra_instances:
        services.procs.append((f"{stage}-1", services.start_one(stage, 1)))
    ingestor = Ingestor(run, sessions)
    rss: dict[str, float | None] = {}
    try:
        t_warm = time.monotonic()
        warm_ids: list[int] = []
        for path in warm_paths:
            warm_ids.extend(ingestor.ingest([night_dir / path]).registered)
        # polled once a second: the figures come from the alerts' broker timestamps, not from the polls (at
        # 5 Hz the progress queries cost ~0.6 CPU s per CCD of the driver, plus PostgreSQL's share)
        wait_for_night(sessions, warm_ids, collector, timeout=timeout, services=services, poll_s=1.0)
        warmup_s = time.monotonic() - t_warm
        n_warm_alerts = len(collector.snapshot())
        exposure_ids: list[int] = []
        cpu_start = _cpu_snapshot(services, settings)
        t_night, t_night_wall = time.monotonic(), time.time()
        for path in timed_paths:
            exposure_ids.extend(ingestor.ingest([night_dir / path]).registered)
            if cadence:
                time.sleep(cadence)
        final = wait_for_night(
            sessions,
            exposure_ids,
            collector,
            timeout=timeout,
            services=services,
            on_progress=on_progress,
            poll_s=1.0,
            received_before=n_warm_alerts,
        )
        elapsed = time.monotonic() - t_night
        cpu_end = _cpu_snapshot(services, settings)
        rss = {name: peak_rss_mb(p.pid) for name, p in services.procs}
    finally:
        ingestor.close()
        codes = services.stop()
        collector.stop()
    with sessions() as s:
        timed_subs = set(
            s.scalars(
                select(SubtractionImage.id)
                .join(Image, SubtractionImage.new_image_id == Image.id)
                .where(Image.exposure_id.in_(exposure_ids))
            )
        )
        alerts = [a for a in collector.snapshot() if a[0]["sighting"]["subtractionId"] in timed_subs]
        lat = alert_latencies(s, alerts)
    engine.dispose()
    drop_database(settings.database_url, db_name)
    delete_topics(run.kafka_bootstrap, names)
    # throughput: from the first timed ingestion to the last timed alert's broker timestamp
    through = max(ts for _, ts in alerts) / 1000.0 - t_night_wall if alerts else elapsed
    n_timed = max(1, len(exposure_ids))
    cpu_per_ccd = {
        name: (cpu_end[name] - v) / n_timed  # type: ignore[operator]
        for name, v in cpu_start.items()
        if v is not None and cpu_end.get(name) is not None
    }
    busy = sum(cpu_per_ccd.values()) * n_timed / (elapsed * (os.cpu_count() or 1)) if elapsed > 0 else None
    return {
        "size": [nx, ny],
        "n_fields": n_fields,
        "n_exposures": len(exposure_ids),
        "n_warmup_exposures": len(warm_ids),
        "cadence_s": cadence,
        "extra_instances": list(extra_instances),
        "warmup_s": warmup_s,
        "elapsed_s": elapsed,
        "ccds_per_min": 60.0 * len(exposure_ids) / through if through > 0 else None,
        "through_s": through,
        "latency_s": {
            "median": float(np.median(lat)) if lat.size else None,
            "p95": float(np.percentile(lat, 95)) if lat.size else None,
            "max": float(lat.max()) if lat.size else None,
            "n": int(lat.size),
        },
        "alerts": len(alerts),
        "alerts_logged": final.alerts_logged,
        "sightings": final.sightings,
        "peak_rss_mb": rss,
        "max_rss_mb": max((v for v in rss.values() if v is not None), default=None),
        "cpu_s_per_ccd": cpu_per_ccd,
        "cpu_busy_fraction": busy,
        "exit_codes": codes,
    }


# ------------------------------------------------------------------------------------------- the targets
#: The performance targets (issue 11): name -> (figure's path in the results, upper bound, unit); a lower
#: bound is given as a negative bound (throughput).
TARGETS: dict[str, tuple[tuple[str, ...], float, str]] = {
    "reduce per CCD": (("stages", "stages", "reduce", "median_s"), 1.0, "s"),
    "subtract per CCD (reference cached)": (("stages", "stages", "subtract", "median_s"), 1.5, "s"),
    "detect per CCD": (("stages", "stages", "detect", "median_s"), 0.6, "s"),
    "alert build per alert": (("stages", "per_alert_ms"), 5.0, "ms"),
    "in-process per CCD": (("stages", "per_ccd_s"), 3.5, "s"),
    "bytes kept per CCD": (("stages", "bytes_per_ccd"), 40e6, "B"),
    "services throughput, all queued": (("e2e", "ccds_per_min"), -30.0, "CCDs/min"),
    "latency median, one CCD per 4 s": (("cadence", "latency_s", "median"), 4.0, "s"),
    "latency p95, one CCD per 4 s": (("cadence", "latency_s", "p95"), 6.0, "s"),
    "peak RSS per service (largest)": (("e2e", "max_rss_mb"), 1200.0, "MB"),
}


def target_rows(results: dict[str, Any]) -> list[tuple[str, float | None, str, str, bool | None]]:
    """Each target against its measured figure: (name, measured, unit, target text, met or None)."""
    rows = []
    for name, (path, bound, unit) in TARGETS.items():
        v: Any = results
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        value = float(v) if isinstance(v, int | float) else None
        text = f">= {-bound:g} {unit}" if bound < 0 else f"<= {bound:g} {unit}"
        met = None if value is None else (value >= -bound if bound < 0 else value <= bound)
        rows.append((name, value, unit, text, met))
    return rows
