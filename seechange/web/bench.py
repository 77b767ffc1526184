"""``seechange web --bench N``: the alerts page's load time with N alerts in the database.

A bench database of its own (``seechange_webbench``, made anew) is filled by a small simulated night run
through the in-process chain (:class:`seechange.pipeline.chain.InProcessChain`: real sightings, cutouts
and alerts), then its alerted sightings are copied, with their photometry, cutouts rows and alert log
rows, at whole-day MJD offsets (the same sky seen on later nights, the same stamps) until N alerts are
logged. The application is served from a thread and timed from a client on the same machine: the page
with its 150 thumbnails fetched over 6 connections (as a browser does), each drawn and from the app's PNG
cache, the page alone, the JSON first page, a filtered page and a deep page; medians of ``runs`` loads,
before and after the copies.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

from seechange.config import Settings
from seechange.models import AlertLog, Cutouts, Photometry

__all__ = ["BENCH_DATABASE", "bench_alerts_page", "copy_alerts"]

BENCH_DATABASE = "seechange_webbench"
_OFFSET = 100_000  #: index_in_image offset of the k-th copy of a sighting: k * _OFFSET


def copy_alerts(engine: Engine, n_alerts: int) -> int:
    """Copy the alerted sightings (and their photometry, cutouts and alert rows) until ``n_alerts`` alerts
    are logged; the k-th copy is ``k`` days later. Returns the alerts logged afterwards."""
    with engine.begin() as conn:
        base = int(conn.scalar(select(func.count(AlertLog.id))) or 0)
        need = n_alerts - base
        if need <= 0 or base == 0:
            return base
        copies = math.ceil(need / base)
        conn.execute(
            text(
                "insert into sightings (subtraction_id, provenance_id, index_in_image, x, y, ra, dec, ra_err,"
                " dec_err, score, is_positive, flags, is_good, mjd, band, healpix, object_id)"
                " select s.subtraction_id, s.provenance_id, s.index_in_image + k * :off, s.x, s.y, s.ra, s.dec,"
                " s.ra_err, s.dec_err, s.score, s.is_positive, s.flags, s.is_good, s.mjd + k, s.band,"
                " s.healpix, s.object_id"
                " from alert_log a join sightings s on s.id = a.sighting_id"
                " cross join generate_series(1, :copies) k order by k, s.id limit :need"
            ),
            {"off": _OFFSET, "copies": copies, "need": need},
        )
        origin = (
            " from sightings n join sightings s on s.subtraction_id = n.subtraction_id"
            " and s.provenance_id = n.provenance_id and s.index_in_image = n.index_in_image % :off"
        )
        for table, model in (("photometry", Photometry), ("cutouts", Cutouts)):
            cols = [
                c.name for c in model.__table__.columns if c.name not in ("id", "sighting_id", "created_at")
            ]
            conn.execute(
                text(
                    f"insert into {table} (sighting_id, {', '.join(cols)})"
                    f" select n.id, {', '.join('p.' + c for c in cols)}{origin}"
                    f" join {table} p on p.sighting_id = s.id where n.index_in_image >= :off order by n.id"
                ),
                {"off": _OFFSET},
            )
        conn.execute(
            text(
                "insert into alert_log (alert_id, sighting_id, object_id, topic)"
                f" select n.id, n.id, n.object_id, a.topic{origin}"
                " join alert_log a on a.sighting_id = s.id where n.index_in_image >= :off order by n.id"
            ),
            {"off": _OFFSET},
        )
        total = int(conn.scalar(select(func.count(AlertLog.id))) or 0)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("analyze"))
    return total


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.srcs.append(src)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return bytes(r.read())


def _page_with_images(base: str, path: str, pool: ThreadPoolExecutor) -> tuple[float, int]:
    """Seconds to fetch a page and then all its images over the pool's connections; images fetched."""
    t0 = time.perf_counter()
    parser = _Images()
    parser.feed(_get(base + path).decode())
    list(pool.map(lambda src: _get(base + src), parser.srcs))
    return time.perf_counter() - t0, len(parser.srcs)


def _median_s(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm: connection pool, first query plans, stamp cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(base: str, drawing: str, runs: int) -> dict[str, float]:
    """The figures from the app at ``base``; the page with every thumbnail drawn from the app at
    ``drawing`` (no PNG cache: the bench's copies share their stamps, so a cache would hide the cost)."""
    with ThreadPoolExecutor(6) as pool:
        drawn = [_page_with_images(drawing, "/", pool)[0] for _ in range(max(1, runs // 2))]
        out = {
            "page_with_thumbnails_drawn_s": statistics.median(drawn),
            "page_with_thumbnails_cached_s": statistics.median(
                [_page_with_images(base, "/", pool)[0] for _ in range(max(1, runs // 2))]
            ),
            "page_s": _median_s(lambda: _get(base + "/"), runs),
            "api_first_page_s": _median_s(lambda: _get(base + "/api/alerts"), runs),
            "filtered_page_s": _median_s(lambda: _get(base + "/?band=r&min_snr=10&new_only=1"), runs),
            "page_100_s": _median_s(lambda: _get(base + "/?page=100"), runs),
        }
    return out


def bench_alerts_page(
    settings: Settings, *, n_alerts: int, runs: int = 7, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Fill the bench database, serve it and time the alerts page; the figures (seconds) as a dict.

    Parameters
    ----------
    settings : Settings
        Filled-in settings of the local services (``database_url`` names the server; the bench uses a
        database of its own on it, and ``<data_dir>/webbench`` for its files).
    n_alerts : int
        Alerts in the database when timed.
    runs : int
        Loads per figure (median).
    """
    from seechange.localservices.postgres import create_database, drop_database
    from seechange.models.migrate import upgrade
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.chain import InProcessChain
    from seechange.pipeline.parameters import PipelineParameters
    from seechange.sim.night import simulate_night
    from seechange.web.app import create_app
    from seechange.web.server import ServerThread

    drop_database(settings.database_url, BENCH_DATABASE)
    url = create_database(settings.database_url, BENCH_DATABASE)
    upgrade(url)
    root = Path(settings.data_dir) / "webbench"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.monotonic()
    night = simulate_night(root, seed=12, n_fields=1, n_epochs=6, size=(512, 1024), n_ref_epochs=3)
    engine = make_engine(url)
    chain = InProcessChain(make_session_factory(engine), root, PipelineParameters(), radius_arcsec=1.5)
    chain.night([str(e.raw_path) for e in night.exposures], alert=True)
    with engine.connect() as conn:
        base = int(conn.scalar(select(func.count(AlertLog.id))) or 0)
    echo(f"simulated night through the chain in {time.monotonic() - t0:.0f} s: {base} alerts")
    run = settings.model_copy(update={"database_url": url, "data_dir": root})
    apps = [create_app(run), create_app(run, png_cache=0)]
    servers = [ServerThread(a).start() for a in apps]
    try:
        before = _measure(servers[0].url, servers[1].url, runs)
        t1 = time.monotonic()
        total = copy_alerts(engine, n_alerts)
        echo(f"copied to {total} alerts in {time.monotonic() - t1:.1f} s")
        after = _measure(servers[0].url, servers[1].url, runs)
    finally:
        for server, app in zip(servers, apps, strict=True):
            server.stop()
            app.state.sessions.kw["bind"].dispose()
        engine.dispose()
    result: dict[str, Any] = {
        "alerts_before": base,
        "alerts": total,
        "runs": runs,
        "before": before,
        "after": after,
    }
    echo(f"{'figure (median, s)':<34} {base:>8} alerts {total:>8} alerts")
    for key in before:
        echo(f"{key:<34} {before[key]:>15.3f} {after[key]:>15.3f}")
    return result
