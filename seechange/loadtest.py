"""Load test: exposures fed at a fixed rate through the services; throughput, lag and latency over time.

:func:`run_load` simulates a one-field night (small CCDs by default), starts one ``seechange serve``
process per stage (each serving ``/metrics`` on a port of its own), ingests the reference epochs and waits
for them, then ingests the rest at ``rate`` exposures per minute for ``minutes`` and keeps sampling until
the services have caught up (or ``drain_s`` ran out). Each :class:`Sample` holds, for one interval: the
exposures ingested and through detect, the throughput in the interval, every stage's consumer lag (summed
over partitions, from :func:`seechange.streaming.groups.group_lag`) and the exposure-to-alert latency
percentiles of the alerts received in the interval. :func:`held` says whether the rate was held: the lag
stayed bounded (it did not keep growing over the feed) and everything was through soon after the feed.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seechange.config import Settings
from seechange.streaming.groups import group_lag, stage_group
from seechange.streaming.stages import STAGES

log = logging.getLogger(__name__)

__all__ = ["LoadReport", "Sample", "held", "run_load"]


@dataclass
class Sample:
    """One sampling interval of the load run."""

    t_s: float  #: seconds since the timed feed started
    ingested: int  #: exposures ingested so far (timed feed only)
    through: int  #: of those, detected (or without a reference) so far
    per_min: float  #: exposures through detect per minute in this interval
    lag: dict[str, int]  #: stage -> messages of its input not yet committed
    latency_s: dict[str, float] = field(default_factory=dict)  #: p50/p95/max/n of this interval's alerts


@dataclass
class LoadReport:
    """What :func:`run_load` measured."""

    rate_per_min: float
    minutes: float
    size: tuple[int, int]
    samples: list[Sample] = field(default_factory=list)
    latency_s: dict[str, float] = field(default_factory=dict)  #: over every alert of the timed feed
    feed_s: float = 0.0  #: seconds the timed feed took
    drain_s: float | None = None  #: seconds from the last ingest until everything was through (None: never)
    metrics_sample: str = ""  #: a service's /metrics text, fetched mid-feed
    metrics_service: str = ""


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0}
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p95": round(float(np.percentile(values, 95)), 2),
        "max": round(float(values.max()), 2),
        "n": int(values.size),
    }


def _lags(settings: Settings) -> dict[str, int]:
    return {
        s.name: sum(
            group_lag(settings, stage_group(settings, s.name), settings.topic(s.input_topic)).values()
        )
        for s in STAGES
    }


def _fetch_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def held(report: LoadReport, *, drain_limit_s: float = 120.0) -> bool:
    """True when the rate was held: lag bounded over the feed and the night through within ``drain_limit_s``.

    Bounded: the mean total lag of the feed's second half is at most the first half's plus what one
    sampling interval's exposures could add (a queue that keeps growing fails this).
    """
    feed = [s for s in report.samples if s.t_s <= report.feed_s + 1e-6]
    if report.drain_s is None or report.drain_s > drain_limit_s or len(feed) < 2:
        return False
    half = len(feed) // 2
    first = np.mean([sum(s.lag.values()) for s in feed[:half]])
    second = np.mean([sum(s.lag.values()) for s in feed[half:]])
    interval_min = (feed[1].t_s - feed[0].t_s) / 60.0
    return bool(second <= first + max(2.0, report.rate_per_min * interval_min))


def run_load(
    settings: Settings,
    *,
    rate_per_min: float,
    minutes: float,
    size: tuple[int, int] = (512, 1024),
    interval_s: float = 15.0,
    drain_s: float = 300.0,
    metrics_stage: str = "subtract",
    on_sample: Callable[[Sample], None] | None = None,
) -> LoadReport:
    """Feed ``rate_per_min`` exposures a minute for ``minutes`` through the services; sample every ``interval_s``.

    Parameters
    ----------
    settings : Settings
        Kafka and PostgreSQL addresses (resolved) and the data dir; the run gets its own database, topics
        and consumer groups, removed afterwards.
    rate_per_min : float
        Exposures (CCDs) ingested per minute, evenly spaced.
    minutes : float
        Length of the timed feed, minutes.
    size : tuple of int
        ``(nx, ny)`` of a CCD, pixels.
    interval_s : float
        Seconds between samples.
    drain_s : float
        After the feed, wait at most this long for the services to catch up, seconds.
    metrics_stage : str
        Stage whose ``/metrics`` is captured mid-feed into the report.
    on_sample : callable, optional
        Called with each :class:`Sample` as it is taken.
    """
    from seechange.bench import N_REF, simulated_night
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.localservices.private import free_port
    from seechange.models.migrate import upgrade
    from seechange.models.session import make_engine, make_session_factory
    from seechange.orchestrate import (
        AlertCollector,
        ServiceProcesses,
        alert_latencies,
        progress,
        wait_for_night,
    )
    from seechange.streaming.ingestor import Ingestor
    from seechange.streaming.stages import stage_names
    from seechange.streaming.topics import delete_topics, ensure_topics, topic_names

    n_feed = max(1, math.ceil(rate_per_min * minutes))
    nx, ny = size
    night_dir = Path(settings.data_dir) / "loadtest" / f"night_{nx}x{ny}_{n_feed + N_REF}"
    raw = simulated_night(night_dir, size=size, n_epochs=n_feed + N_REF)
    run_id = uuid.uuid4().hex[:8]
    db_name = f"loadtest_{run_id}"
    db_url = create_database(settings.database_url, db_name)
    run = settings.model_copy(
        update={
            "database_url": db_url,
            "data_dir": night_dir,
            "topic_prefix": f"load{run_id}.",
            "consumer_group_prefix": f"load{run_id}",
        }
    )
    report = LoadReport(rate_per_min=rate_per_min, minutes=minutes, size=size)
    names = topic_names(run)
    engine = None
    services = ServiceProcesses(run, night_dir / "logs" / run_id)
    collector = AlertCollector(run)
    ports: dict[str, int] = {}
    try:
        upgrade(db_url)
        ensure_topics(run.kafka_bootstrap, names, run.partitions)
        engine = make_engine(db_url)
        sessions = make_session_factory(engine)
        collector.start()
        collector.ready.wait(15)
        for stage in stage_names():
            ports[stage] = free_port()
            proc = services.start_one(stage, 0, run.model_copy(update={"metrics_port": ports[stage]}))
            services.procs.append((f"{stage}-0", proc))
        ingestor = Ingestor(run, sessions)
        try:
            ref_ids: list[int] = []
            for path in raw[:N_REF]:
                ref_ids.extend(ingestor.ingest([night_dir / path]).registered)
            wait_for_night(sessions, ref_ids, collector, timeout=drain_s, services=services)
            n_ref_alerts = len(collector.snapshot())
            feed_ids: list[int] = []
            todo = raw[N_REF:]
            t0 = time.monotonic()
            next_sample, last_through, seen = t0 + interval_s, 0, n_ref_alerts
            t_last_ingest: float | None = None
            while True:
                now = time.monotonic()
                if todo and now >= t0 + len(feed_ids) * 60.0 / rate_per_min:
                    feed_ids.extend(ingestor.ingest([night_dir / todo.pop(0)]).registered)
                    if not todo:
                        t_last_ingest = time.monotonic()
                        report.feed_s = t_last_ingest - t0
                if now >= next_sample:
                    with sessions() as s:
                        p = progress(s, feed_ids)
                        alerts = collector.snapshot()
                        lat = alert_latencies(s, alerts[seen:])
                    seen = len(alerts)
                    through = p.no_reference + p.detected
                    sample = Sample(
                        t_s=round(now - t0, 1),
                        ingested=len(feed_ids),
                        through=through,
                        per_min=round((through - last_through) * 60.0 / interval_s, 2),
                        lag=_lags(run),
                        latency_s=_percentiles(lat),
                    )
                    last_through = through
                    report.samples.append(sample)
                    if on_sample:
                        on_sample(sample)
                    if not report.metrics_sample and now - t0 >= minutes * 30.0:
                        report.metrics_sample = _fetch_metrics(ports[metrics_stage])
                        report.metrics_service = metrics_stage
                    next_sample += interval_s
                    if not todo and report.drain_s is None:
                        try:
                            wait_for_night(sessions, feed_ids, collector, timeout=0.0, services=services)
                            report.drain_s = round(time.monotonic() - (t_last_ingest or t0), 1)
                        except TimeoutError:
                            pass
                    if not todo and (report.drain_s is not None or now - (t_last_ingest or t0) > drain_s):
                        break
                dead = [n for n, ok in services.alive().items() if not ok]
                if dead:
                    raise RuntimeError(f"service(s) exited during the load: {', '.join(dead)}")
                time.sleep(0.05)
            with sessions() as s:
                report.latency_s = _percentiles(alert_latencies(s, collector.snapshot()[n_ref_alerts:]))
        finally:
            ingestor.close()
    finally:
        services.stop()
        collector.stop()
        if engine is not None:
            engine.dispose()
        delete_topics(run.kafka_bootstrap, names)
        drop_database(settings.database_url, db_name)
    return report


def summary(report: LoadReport) -> dict[str, Any]:
    """The report as plain data (for JSON)."""
    return {
        "rate_per_min": report.rate_per_min,
        "minutes": report.minutes,
        "size": list(report.size),
        "feed_s": round(report.feed_s, 1),
        "drain_s": report.drain_s,
        "held": held(report),
        "latency_s": report.latency_s,
        "samples": [s.__dict__ for s in report.samples],
    }
