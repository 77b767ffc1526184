"""The JSON API of ``seechange web`` against a real PostgreSQL filled by a small simulated night.

The expected values come from the database by other routes: the alert packets the pipeline builds
(:func:`seechange.pipeline.alert.build_alert`) filtered by the subscriber's own
:class:`seechange.client.AlertFilter`, :func:`seechange.lightcurve.lightcurve_table`, and row counts.
"""

from __future__ import annotations

import io
import json
import math
import re
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from seechange.client import AlertFilter
from seechange.lightcurve import lightcurve_table
from seechange.models import AlertLog, Cutouts, Exposure, Image, Object, Sighting, SubtractionImage
from seechange.pipeline.alert import build_alert
from tests.integration._chain_night import N_EPOCHS, N_REF
from tests.integration.web.conftest import WebNight


def get(night: WebNight, path: str) -> Any:
    with urllib.request.urlopen(night.url + path, timeout=60) as r:
        assert r.status == 200
        return json.loads(r.read())


def get_bytes(night: WebNight, path: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(night.url + path, timeout=60) as r:
        return r.read(), r.headers["Content-Type"]


@pytest.fixture(scope="module")
def packets(web_night: WebNight) -> list[dict[str, Any]]:
    """The packet of every alert sent, newest ``alert_log`` row first."""
    with web_night.sessions() as s:
        out = []
        for log in s.scalars(select(AlertLog).order_by(AlertLog.id.desc())):
            sighting = s.get(Sighting, log.sighting_id)
            assert sighting is not None
            out.append(build_alert(s, web_night.settings.data_dir, sighting))
        return out


def _ids(night: WebNight, query: str) -> list[int]:
    data = get(night, f"/api/alerts?per_page=500&{query}")
    assert data["total"] == len(data["alerts"])
    return [a["alert_id"] for a in data["alerts"]]


def test_alerts_newest_first_with_the_packet_values(
    web_night: WebNight, packets: list[dict[str, Any]]
) -> None:
    data = get(web_night, "/api/alerts?per_page=500")
    assert len(packets) >= 10, "the night should send alerts"
    assert data["total"] == len(packets)
    assert [a["alert_id"] for a in data["alerts"]] == [p["alertId"] for p in packets]
    log_ids = [a["log_id"] for a in data["alerts"]]
    assert log_ids == sorted(log_ids, reverse=True) and data["newest_log_id"] == log_ids[0]
    for a, p in zip(data["alerts"], packets, strict=True):
        s = p["sighting"]
        assert a["object_name"] == p["object"]["name"]
        assert a["band"] == s["band"] and a["mjd"] == pytest.approx(s["mjd"], abs=1e-9)
        assert a["ra"] == pytest.approx(s["ra"], abs=1e-9) and a["dec"] == pytest.approx(s["dec"], abs=1e-9)
        assert a["snr"] == pytest.approx(s["snr"], rel=1e-9)
        assert (a["mag"] is None) == (s["mag"] is None)
        if s["mag"] is not None:
            assert a["mag"] == pytest.approx(s["mag"], rel=1e-9)
        assert a["flags"] == s["flags"] and a["is_good"] == s["isGood"]
        assert a["is_new"] == (p["object"]["nSightings"] == 1)
        assert a["has_cutouts"] == (p["cutoutDifference"] is not None)


def test_filters_mean_what_the_subscribers_filters_mean(
    web_night: WebNight, packets: list[dict[str, Any]]
) -> None:
    mags = sorted(p["sighting"]["mag"] for p in packets if p["sighting"]["mag"] is not None)
    snrs = sorted(abs(p["sighting"]["snr"]) for p in packets)
    mid_mag, mid_snr = mags[len(mags) // 2], snrs[len(snrs) // 2]
    centre = packets[len(packets) // 2]["sighting"]
    cases: list[tuple[str, AlertFilter]] = [
        ("band=r", AlertFilter(bands=("r",))),
        ("band=g", AlertFilter(bands=("g",))),
        (f"min_mag={mid_mag}", AlertFilter(min_mag=mid_mag)),
        (f"max_mag={mid_mag}", AlertFilter(max_mag=mid_mag)),
        (f"min_snr={mid_snr}", AlertFilter(min_snr=mid_snr)),
        (f"max_snr={mid_snr}&min_snr=5", AlertFilter(min_snr=5, max_snr=mid_snr)),
        (
            f"ra={centre['ra']}&dec={centre['dec']}&radius=90",
            AlertFilter(cone=(centre["ra"], centre["dec"], 90.0)),
        ),
        ("new_only=true", AlertFilter(new_only=True)),
        (
            f"new_only=true&band=r&max_mag={mags[-3]}",
            AlertFilter(new_only=True, bands=("r",), max_mag=mags[-3]),
        ),
    ]
    sizes = []
    for query, keep in cases:
        expected = [p["alertId"] for p in packets if keep(p)]
        assert _ids(web_night, query) == expected, query
        sizes.append(len(expected))
    assert 0 < sizes[2] < len(packets) and 0 < sizes[6] < len(packets) and 0 < sizes[7] < len(packets)
    assert sizes[0] == len(packets) and sizes[1] == 0


def test_paging_and_polling(web_night: WebNight, packets: list[dict[str, Any]]) -> None:
    per = 7
    first = get(web_night, f"/api/alerts?per_page={per}")
    assert first["pages"] == math.ceil(len(packets) / per)
    seen: list[int] = []
    for page in range(1, first["pages"] + 1):
        data = get(web_night, f"/api/alerts?per_page={per}&page={page}")
        assert len(data["alerts"]) == min(per, len(packets) - (page - 1) * per)
        seen += [a["alert_id"] for a in data["alerts"]]
    assert seen == [p["alertId"] for p in packets]
    newest = first["newest_log_id"]
    assert get(web_night, f"/api/alerts?after_id={newest}")["alerts"] == []
    after = get(web_night, f"/api/alerts?after_id={newest - 3}")
    assert [a["log_id"] for a in after["alerts"]] == [newest, newest - 1, newest - 2]


def test_bad_queries_are_refused(web_night: WebNight) -> None:
    for path, code in (
        ("/api/alerts?ra=10&dec=3", 400),
        ("/api/alerts?min_mag=bright", 422),
        ("/api/objects/SC00nothing", 404),
        ("/api/sightings/999999999/cutouts/new.png", 404),
        ("/api/sightings/1/cutouts/weird.png", 422),
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(web_night.url + path, timeout=30)
        assert err.value.code == code, path


def test_object_lightcurve_rows_and_searches(web_night: WebNight) -> None:
    with web_night.sessions() as s:
        obj = s.scalars(select(Object).order_by(Object.n_sightings.desc(), Object.id)).first()
        assert obj is not None
        table = lightcurve_table(s, obj.name)
        alerted = set(s.scalars(select(AlertLog.sighting_id).where(AlertLog.object_id == obj.id)))
    data = get(web_night, f"/api/objects/{obj.name}")
    assert (
        data["name"] == obj.name
        and data["ra"] == pytest.approx(obj.ra)
        and data["n_sightings"] == obj.n_sightings
    )
    kinds = list(table["kind"])
    assert len(data["detections"]) == kinds.count("detection") == obj.n_sightings
    assert len(data["forced"]) == kinds.count("forced") and len(data["limits"]) == kinds.count("limit")
    det = table[table["kind"] == "detection"]
    assert [d["sighting_id"] for d in data["detections"]] == [int(x) for x in det["sighting_id"]]
    assert [d["flux_njy"] for d in data["detections"]] == pytest.approx([float(x) for x in det["flux_njy"]])
    assert {d["sighting_id"] for d in data["detections"] if d["alert_id"]} == alerted
    forced = table[table["kind"] == "forced"]
    assert [f["flux_njy"] for f in data["forced"]] == pytest.approx([float(x) for x in forced["flux_njy"]])

    near = get(web_night, f"/api/objects?ra={obj.ra + 0.5 / 3600}&dec={obj.dec}&radius=3")
    assert near[0]["name"] == obj.name and near[0]["sep_arcsec"] == pytest.approx(
        0.5 * math.cos(math.radians(obj.dec)), abs=0.01
    )
    assert obj.name in [o["name"] for o in get(web_night, f"/api/objects?name={obj.name[:-2].lower()}")]


def test_some_lightcurve_has_limits(web_night: WebNight) -> None:
    with web_night.sessions() as s:
        names = list(s.scalars(select(Object.name)))
    assert any(get(web_night, f"/api/objects/{n}")["limits"] for n in names), "forced backwards gives limits"


def _png(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("L"), dtype=float)


def test_cutout_and_plot_images_are_real_images_of_the_right_size(web_night: WebNight) -> None:
    with web_night.sessions() as s:
        row = s.execute(
            select(Cutouts.sighting_id, Cutouts.size)
            .join(AlertLog, AlertLog.sighting_id == Cutouts.sighting_id)
            .join(Sighting, Sighting.id == Cutouts.sighting_id)
            .where(Sighting.is_positive.is_(True), Sighting.score > 20)
            .order_by(Sighting.score.desc())
        ).first()
        assert row is not None
        sid, size = row
        name = s.scalar(
            select(Object.name).join(Sighting, Sighting.object_id == Object.id).where(Sighting.id == sid)
        )
    for which in ("new", "ref", "diff"):
        for stretch, scale in (("zscale", 1), ("asinh", 3)):
            data, ctype = get_bytes(
                web_night, f"/api/sightings/{sid}/cutouts/{which}.png?stretch={stretch}&scale={scale}"
            )
            assert ctype == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"
            img = _png(data)
            assert img.shape == (size * scale, size * scale)
            assert img.std() > 5, "not a blank image"
    diff = _png(get_bytes(web_night, f"/api/sightings/{sid}/cutouts/diff.png")[0])
    c = size // 2
    assert diff[c - 2 : c + 3, c - 2 : c + 3].mean() > diff[:5, :].mean() + 50, "the source is at the centre"
    lc, ctype = get_bytes(web_night, f"/api/objects/{name}/lightcurve.png")
    assert ctype == "image/png" and PILImage.open(io.BytesIO(lc)).size == (800, 450)
    lat, _ = get_bytes(web_night, "/api/pipeline/latency.png?n=10")
    assert PILImage.open(io.BytesIO(lat)).size == (800, 350)


def test_provenance_of_a_sightings_products(web_night: WebNight) -> None:
    with web_night.sessions() as s:
        sighting = s.scalars(select(Sighting).join(AlertLog, AlertLog.sighting_id == Sighting.id)).first()
        assert sighting is not None
        sub = s.get(SubtractionImage, sighting.subtraction_id)
        assert sub is not None
        new = s.get(Image, sub.new_image_id)
        assert new is not None
        exp = s.get(Exposure, new.exposure_id)
        assert exp is not None
        expected = {
            "exposure": exp.provenance_id,
            "image": new.provenance_id,
            "reference": sub.reference.provenance_id,
            "difference": sub.provenance_id,
            "sighting": sighting.provenance_id,
            "photometry": sighting.photometry[-1].provenance_id,
        }
    got = get(web_night, f"/api/sightings/{sighting.id}/provenance")
    assert {p["product"]: p["provenance"]["id"] for p in got} == expected
    assert {p["product"]: p["provenance"]["process"] for p in got}["difference"] == "subtract"


def test_pipeline_state_from_the_database_and_the_broker(web_night: WebNight) -> None:
    data = get(web_night, "/api/pipeline?n=50")
    with web_night.sessions() as s:
        n_exp = s.scalar(select(func.count(Exposure.id)))
        n_img = s.scalar(select(func.count(Image.id)))
        n_sub = s.scalar(select(func.count(SubtractionImage.id)))
        n_sig = s.scalar(select(func.count(Sighting.id)))
        n_alerts = s.scalar(select(func.count(AlertLog.id)))
        per_sub = dict(
            s.execute(
                select(Sighting.subtraction_id, func.count(AlertLog.id))
                .join(AlertLog, AlertLog.sighting_id == Sighting.id)
                .group_by(Sighting.subtraction_id)
            ).all()
        )
    hour = data["processed_last_hour"]
    assert [hour[k]["count"] for k in ("ingest", "reduce", "subtract", "detect", "alert")] == [
        n_exp, n_img, n_sub, n_sig, n_alerts,
    ]  # fmt: skip
    assert data["broker"]["error"] is None
    stages = {st["stage"]: st for st in data["broker"]["stages"]}
    assert set(stages) == {"reduce", "subtract", "detect", "alert"}
    assert stages["reduce"]["dead_letters"] == 1 and stages["detect"]["dead_letters"] == 0
    assert stages["reduce"]["last_errors"][0]["headers"]["error_class"] == web_night.dead_letter_error
    assert all(st["total_lag"] == 0 for st in stages.values())  # the chain ran in-process: topics are empty
    assert len(data["latency"]) == len(per_sub)
    assert all(0 < p["first_s"] <= p["last_s"] for p in data["latency"])

    exposures = get(web_night, "/api/pipeline/exposures")["exposures"]
    assert len(exposures) == n_exp == N_EPOCHS
    assert all(e["reduced"] for e in exposures)
    assert [e["subtract"] == "done" for e in exposures] == [False] * N_REF + [True] * (N_EPOCHS - N_REF)
    assert all(e["subtract"] != "pending" for e in exposures), "reference members say so"
    assert [e["alerts"] for e in exposures if e["subtraction_id"]] == [
        per_sub.get(e["subtraction_id"], 0) for e in exposures if e["subtraction_id"]
    ]


def test_openapi_and_no_outside_addresses(web_night: WebNight) -> None:
    spec = get(web_night, "/openapi.json")
    for path in (
        "/api/alerts",
        "/api/objects",
        "/api/objects/{name}",
        "/api/objects/{name}/lightcurve.png",
        "/api/sightings/{sighting_id}/cutouts/{which}.png",
        "/api/sightings/{sighting_id}/provenance",
        "/api/pipeline",
        "/api/pipeline/exposures",
        "/api/pipeline/latency.png",
    ):
        assert path in spec["paths"], path
    names = {p["name"] for p in spec["paths"]["/api/alerts"]["get"]["parameters"]}
    assert {"band", "min_mag", "max_mag", "min_snr", "max_snr", "ra", "dec", "radius", "new_only"} <= names
    with web_night.sessions() as s:
        name = s.scalar(select(Object.name).order_by(Object.id))
    outside = re.compile(r"""(src|href)\s*=\s*["'](https?:)?//""", re.IGNORECASE)
    for path in ("/", f"/objects/{name}", "/pipeline", "/api", "/static/alerts.js", "/static/style.css"):
        body, _ = get_bytes(web_night, path)
        assert not outside.search(body.decode()), f"{path} loads something from outside"


def test_the_app_cannot_write(web_night: WebNight) -> None:
    from seechange.web.app import read_only_sessions

    sessions = read_only_sessions(web_night.settings.database_url)
    with sessions() as s, pytest.raises(DBAPIError, match="read-only transaction"):
        s.execute(text("delete from alert_log"))
    sessions.kw["bind"].dispose()
    with web_night.sessions() as s:
        assert s.scalar(select(func.count(AlertLog.id)))
