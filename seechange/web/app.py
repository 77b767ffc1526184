"""The web application: HTML pages and the JSON API behind them (FastAPI; OpenAPI at ``/openapi.json``).

Read-only: every database connection is opened with ``default_transaction_read_only=on`` (PostgreSQL
refuses any write), files are only read, and the broker is only asked for watermarks, committed offsets
and the newest dead letters (:mod:`seechange.streaming.status`). Everything a page needs (scripts, style
sheet, images) is served by the app itself; FastAPI's Swagger/ReDoc pages load their scripts from a CDN,
so they are switched off and ``/api`` lists the endpoints from the OpenAPI description instead.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.models import Sighting
from seechange.web import images, pipeline, queries

__all__ = ["create_app", "read_only_sessions"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: matplotlib's pyplot keeps global state; the threads serving requests draw one figure at a time
_PLOT_LOCK = threading.Lock()
PNG = {"content": {"image/png": {}}, "description": "PNG image"}


def read_only_sessions(database_url: str) -> sessionmaker[Session]:
    """A session factory whose connections PostgreSQL keeps read-only (``default_transaction_read_only``)."""
    from seechange.models.session import make_engine, make_session_factory

    engine = make_engine(
        database_url,
        connect_args={"options": "-c default_transaction_read_only=on"},
        pool_size=5,
        max_overflow=5,
    )
    return make_session_factory(engine)


def _float(params: Any, key: str) -> float | None:
    value = params.get(key)
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise HTTPException(400, f"{key} must be a number, got {value!r}") from None


def _alert_query(
    bands: list[str] | None,
    min_mag: float | None,
    max_mag: float | None,
    min_snr: float | None,
    max_snr: float | None,
    ra: float | None,
    dec: float | None,
    radius: float | None,
    new_only: bool,
    page: int,
    per_page: int,
    after_id: int | None,
) -> queries.AlertQuery:
    given = [v is not None for v in (ra, dec, radius)]
    if any(given) and not all(given):
        raise HTTPException(400, "a cone needs ra, dec and radius (deg, deg, arcsec)")
    cone = (float(ra), float(dec), float(radius)) if all(given) else None  # type: ignore[arg-type]
    clean = tuple(b for b in (bands or []) if b)
    return queries.AlertQuery(
        bands=clean or None,
        min_mag=min_mag,
        max_mag=max_mag,
        min_snr=min_snr,
        max_snr=max_snr,
        cone=cone,
        new_only=new_only,
        page=page,
        per_page=per_page,
        after_id=after_id,
    )


def create_app(
    settings: Settings, *, latency_n: int = 50, status_ttl_s: float = 5.0, png_cache: int = 4096
) -> FastAPI:
    """The application serving ``settings``' database, data root and topics.

    Parameters
    ----------
    settings : Settings
        Filled-in settings (``database_url``, ``kafka_bootstrap``, ``data_dir``, ``topic_prefix``).
    latency_n : int
        Exposures in the pipeline page's latency plot.
    status_ttl_s : float
        Seconds the broker's view of the stages is kept between asks.
    png_cache : int
        Cutout PNGs kept in memory (0: every one drawn when asked).
    """
    app = FastAPI(
        title="SeeChange",
        version="1.0",
        summary="Alerts, objects (lightcurves, cutouts, provenance) and the pipeline's state, read-only.",
        docs_url=None,
        redoc_url=None,
    )
    sessions = read_only_sessions(settings.database_url)
    cutouts = images.CutoutImages(Path(settings.data_dir), max_pngs=png_cache)
    status = pipeline.StatusCache(settings, ttl_s=status_ttl_s)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.sessions = sessions

    @contextmanager
    def session() -> Iterator[Session]:
        with sessions() as s:
            yield s
            s.rollback()

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"prefix": settings.topic_prefix, **context})

    # ---------------------------------------------------------------- JSON API

    @app.get("/api/alerts", tags=["alerts"])
    def api_alerts(
        band: Annotated[list[str] | None, Query(description="Bands to keep (repeat).")] = None,
        min_mag: Annotated[float | None, Query(description="Brightest magnitude kept, AB.")] = None,
        max_mag: Annotated[float | None, Query(description="Faintest magnitude kept, AB.")] = None,
        min_snr: Annotated[float | None, Query(description="Smallest |SNR| kept.")] = None,
        max_snr: Annotated[float | None, Query(description="Largest |SNR| kept.")] = None,
        ra: Annotated[float | None, Query(description="Cone centre RA, deg.")] = None,
        dec: Annotated[float | None, Query(description="Cone centre Dec, deg.")] = None,
        radius: Annotated[float | None, Query(description="Cone radius, arcsec.")] = None,
        new_only: Annotated[bool, Query(description="Only the first sighting of each Object.")] = False,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=500)] = 50,
        after_id: Annotated[
            int | None, Query(description="Only alerts logged after this log id (polling).")
        ] = None,
    ) -> dict[str, Any]:
        """Alerts newest first with the subscriber's filters; ``total`` matching and one page of them."""
        q = _alert_query(
            band, min_mag, max_mag, min_snr, max_snr, ra, dec, radius, new_only, page, per_page, after_id
        )
        with session() as s:
            return queries.alerts_page(s, q)

    @app.get("/api/objects", tags=["objects"])
    def api_objects(
        name: Annotated[str | None, Query(description="Name or the start of a name.")] = None,
        ra: Annotated[float | None, Query(description="Cone centre RA, deg.")] = None,
        dec: Annotated[float | None, Query(description="Cone centre Dec, deg.")] = None,
        radius: Annotated[float, Query(gt=0, le=36000, description="Cone radius, arcsec.")] = 5.0,
    ) -> list[dict[str, Any]]:
        """Objects by name prefix, or within a cone (nearest first, with ``sep_arcsec``)."""
        with session() as s:
            if name:
                return queries.find_objects_by_name(s, name)
            if ra is None or dec is None:
                raise HTTPException(400, "give a name, or ra and dec (and radius)")
            return queries.cone_objects(s, ra, dec, radius)

    @app.get("/api/objects/{name}", tags=["objects"])
    def api_object(name: str) -> dict[str, Any]:
        """An Object: position, its detections, forced points and limits (its lightcurve rows)."""
        with session() as s:
            try:
                return queries.object_detail(s, name)
            except queries.UnknownObject as exc:
                raise HTTPException(404, str(exc)) from None

    @app.get(
        "/api/objects/{name}/lightcurve.png", tags=["objects"], response_class=Response, responses={200: PNG}
    )
    def api_lightcurve(name: str) -> Response:
        """The lightcurve plot: flux per band, detections, forced points, limits as arrows (800 x 450)."""
        with session() as s, _PLOT_LOCK:
            try:
                return Response(images.lightcurve_png(s, name), media_type="image/png")
            except queries.UnknownObject as exc:
                raise HTTPException(404, str(exc)) from None

    @app.get("/api/sightings/{sighting_id}/provenance", tags=["objects"])
    def api_provenance(sighting_id: int) -> list[dict[str, Any]]:
        """Every product behind a sighting (exposure to photometry) with its provenance."""
        with session() as s:
            out = queries.sighting_provenance(s, sighting_id)
        if not out:
            raise HTTPException(404, f"no sighting {sighting_id}")
        return out

    @app.get(
        "/api/sightings/{sighting_id}/cutouts/{which}.png",
        tags=["objects"],
        response_class=Response,
        responses={200: PNG},
    )
    def api_cutout(
        sighting_id: int,
        which: Literal["new", "ref", "diff"],
        stretch: Annotated[Literal["zscale", "asinh"], Query()] = "zscale",
        scale: Annotated[int, Query(ge=1, le=16, description="Screen pixels per stamp pixel.")] = 1,
    ) -> Response:
        """One cutout stamp at full resolution: (size x scale) pixels on a side, north of row 0 up."""
        with session() as s:
            row = s.get(Sighting, sighting_id)
            c = row.cutouts if row is not None else None
            if c is None:
                raise HTTPException(404, f"sighting {sighting_id} has no cutouts")
            filepath, hdu = c.filepath, getattr(c, images.WHICH[which])
        try:
            with _PLOT_LOCK:
                png = cutouts.png(filepath, hdu, stretch=stretch, scale=scale)
        except (FileNotFoundError, KeyError) as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def pipeline_state(n: int) -> dict[str, Any]:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        with session() as s:
            processed = pipeline.processed_since(s, since)
            latency = pipeline.recent_latencies(s, n)
            night = pipeline.latest_night(s)
        broker = status.get()
        return {
            "topic_prefix": settings.topic_prefix,
            "broker": broker,
            "processed_last_hour": processed,
            "latency": latency,
            "night": night.isoformat() if night else None,
        }

    @app.get("/api/pipeline", tags=["pipeline"])
    def api_pipeline(n: Annotated[int, Query(ge=1, le=1000)] = latency_n) -> dict[str, Any]:
        """Per stage: lag, dead letters and last errors (broker); rows written in the last hour;
        exposure-to-alert latency of the last ``n`` exposures that sent alerts."""
        return pipeline_state(n)

    @app.get("/api/pipeline/exposures", tags=["pipeline"])
    def api_exposures(
        night: Annotated[
            dt.date | None, Query(description="Observing night (dayObs); default the newest.")
        ] = None,
    ) -> dict[str, Any]:
        """The exposures of a night in time order with their state in each stage."""
        with session() as s:
            night = night or pipeline.latest_night(s)
            rows = pipeline.night_exposures(s, night) if night else []
        return {"night": night.isoformat() if night else None, "exposures": rows}

    @app.get("/api/pipeline/latency.png", tags=["pipeline"], response_class=Response, responses={200: PNG})
    def api_latency_png(n: Annotated[int, Query(ge=1, le=1000)] = latency_n) -> Response:
        """Exposure-to-alert latency of the last ``n`` exposures (first and last alert), 800 x 350."""
        with session() as s:
            points = pipeline.recent_latencies(s, n)
        with _PLOT_LOCK:
            return Response(images.latency_png(points), media_type="image/png")

    # ---------------------------------------------------------------- pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def alerts_html(request: Request) -> HTMLResponse:
        p = request.query_params
        q = _alert_query(
            p.getlist("band"),
            _float(p, "min_mag"),
            _float(p, "max_mag"),
            _float(p, "min_snr"),
            _float(p, "max_snr"),
            _float(p, "ra"),
            _float(p, "dec"),
            _float(p, "radius"),
            p.get("new_only") in ("1", "true", "on"),
            int(_float(p, "page") or 1),
            int(_float(p, "per_page") or 50),
            None,
        )
        with session() as s:
            result = queries.alerts_page(s, q)
            bands = sorted(s.scalars(select(Sighting.band).distinct()))
        return page(request, "alerts.html", result=result, q=q, bands=bands, params=dict(p))

    @app.get("/objects/{name}", response_class=HTMLResponse, include_in_schema=False)
    def object_html(request: Request, name: str) -> HTMLResponse:
        p = request.query_params
        stretch = p.get("stretch", "zscale")
        stretch = stretch if stretch in images.STRETCHES else "zscale"
        scale = int(min(max(_float(p, "scale") or 4, 1), 16))
        with session() as s:
            try:
                obj = queries.object_detail(s, name)
            except queries.UnknownObject as exc:
                raise HTTPException(404, str(exc)) from None
            with_cutouts = [d["sighting_id"] for d in obj["detections"] if d["has_cutouts"]]
            chosen = int(_float(p, "sighting") or (with_cutouts[-1] if with_cutouts else 0)) or None
            prov = queries.sighting_provenance(s, chosen) if chosen else []
        return page(
            request, "object.html", obj=obj, sighting=chosen, stretch=stretch, scale=scale, provenance=prov
        )

    @app.get("/search", response_class=HTMLResponse, include_in_schema=False)
    def search_html(request: Request) -> Response:
        p = request.query_params
        name = (p.get("name") or "").strip()
        with session() as s:
            if name:
                found = queries.find_objects_by_name(s, name)
                exact = [o for o in found if o["name"].lower() == name.lower()]
                if exact or len(found) == 1:
                    target = (exact or found)[0]["name"]
                    return RedirectResponse(f"/objects/{target}", status_code=303)
                return page(request, "search.html", found=found, what=f"names starting with {name!r}")
            ra, dec, radius = _float(p, "ra"), _float(p, "dec"), _float(p, "radius") or 5.0
            if ra is None or dec is None:
                return page(request, "search.html", found=[], what="nothing: give a name or RA and Dec")
            found = queries.cone_objects(s, ra, dec, radius)
        what = f'within {radius:g}" of RA {ra:.6f}, Dec {dec:.6f}'
        return page(request, "search.html", found=found, what=what)

    @app.get("/pipeline", response_class=HTMLResponse, include_in_schema=False)
    def pipeline_html(request: Request) -> HTMLResponse:
        state = pipeline_state(latency_n)
        with session() as s:
            night = pipeline.latest_night(s)
            exposures = pipeline.night_exposures(s, night) if night else []
        return page(request, "pipeline.html", state=state, exposures=exposures, latency_n=latency_n)

    @app.get("/api", response_class=HTMLResponse, include_in_schema=False)
    def api_html(request: Request) -> HTMLResponse:
        return page(request, "api.html", openapi=app.openapi())

    return app
