"""A small simulated night through the four services as separate processes, checked against the truth.

One night of 2 fields x 5 epochs (512x1024 CCDs): the first 3 epochs of a field build its reference, the
last 2 are subtracted. The raw files are ingested in time order; the services run as ``seechange serve``
processes. Afterwards: rows per table, the alerts on the topic (read with nothing but ``schemas/`` and
fastavro), their cutouts, and the injected transients (positions, fluxes in nJy, one Object each). Then the
same night again (same files, same database and topics, fresh processes): no new row, no new alert.
"""

from __future__ import annotations

import gzip
import io
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from sqlalchemy import select

from seechange.config import Settings
from tests.integration._night import SchemasOnlyDecoder, isolated_run, message_count, read_topic, wait_drained

SEED = 20240611
N_FIELDS, N_EPOCHS, N_REF = 2, 5, 3
SIZE = (512, 1024)
MATCH_RADIUS_ARCSEC = 3.0  # an alert this close to a transient is taken to be of it ...
POSITION_TOLERANCE_ARCSEC = 1.0  # ... and must then be this close
BRIGHT_SNR = 15.0  # truth S/N (new image's sky only) above which a transient must be measured right
EDGE_MARGIN_PX = 10.0  # transients closer than this to the CCD edge are not required
CUTOUT_SIZE = 51
NIGHT_TIMEOUT_S = 300.0


def _sep_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    from seechange.pipeline.association import angular_sep_arcsec

    return angular_sep_arcsec(ra1, dec1, ra2, dec2)


def _run_night(
    settings: Settings, night: Any, sessions: Any, log_dir: Path
) -> tuple[list[int], Any, Any, dict]:
    """Start the services and a collector, ingest every exposure in time order, wait until all is through.

    Returns (exposure ids, ingest reports, the collector (stopped), service exit codes).
    """
    from producers.ingest import Ingestor
    from seechange.orchestrate import AlertCollector, ServiceProcesses, wait_for_night

    services = ServiceProcesses(settings, log_dir)
    collector = AlertCollector(settings)
    collector.start()
    assert collector.ready.wait(15), "alert collector did not get its partitions"
    services.start()
    ingestor = Ingestor(settings, sessions)
    exposure_ids: list[int] = []
    reports = []
    try:
        for e in night.exposures:
            report = ingestor.ingest([settings.data_dir / e.raw_path])
            assert report.failed == [], report.failed
            reports.append(report)
            exposure_ids.extend(report.registered)
        wait_for_night(sessions, exposure_ids, collector, timeout=NIGHT_TIMEOUT_S, services=services)
        # wait_for_night looks at the database; the alert service may still be working through
        # sighting-found: wait until every service has committed all of its input
        wait_drained(settings, timeout=NIGHT_TIMEOUT_S, services=services)
        assert all(services.alive().values()), services.alive()
    finally:
        ingestor.close()
        codes = services.stop()
        time.sleep(1.0)  # let the collector read the last alerts
        collector.stop()
    return exposure_ids, reports, collector, codes


def _subtraction_exposures(session: Any) -> dict[int, str]:
    """subtraction id -> raw path (relative) of its new image's exposure."""
    from seechange.models import Exposure, Image, SubtractionImage

    rows = session.execute(
        select(SubtractionImage.id, Exposure.filepath)
        .join(Image, SubtractionImage.new_image_id == Image.id)
        .join(Exposure, Image.exposure_id == Exposure.id)
    ).all()
    return {int(i): str(p) for i, p in rows}


def _true_transients(data_dir: Path, night: Any) -> list[dict[str, Any]]:
    """Every (transient, subtracted exposure) with flux: position, true flux in nJy and truth S/N."""
    from seechange.sim.truth import read_truth

    nx, ny = SIZE
    out = []
    for e in night.exposures:
        if e.epoch < N_REF:
            continue
        truth = read_truth(data_dir, e.expname, e.ccdnum)
        meta = truth.meta
        zp, sky_e, fwhm_px = float(meta["zp"]), float(meta["sky_e"]), float(meta["fwhm_px"])
        noise_e = math.sqrt(sky_e * 4 * math.pi * (fwhm_px / 2.355) ** 2)
        for row in truth[(truth["kind"] == "transient") & (truth["flux_e"] > 0)]:
            x, y = float(row["x"]), float(row["y"])
            if not (0 <= x < nx and 0 <= y < ny):
                continue
            flux_e = float(row["flux_e"])
            out.append(
                {
                    "id": (e.field, int(row["id"])),
                    "raw_path": e.raw_path,
                    "epoch": e.epoch,
                    "ra": float(row["ra"]),
                    "dec": float(row["dec"]),
                    "x": x,
                    "y": y,
                    "flux_njy": flux_e * 10 ** (-0.4 * (zp - 31.4)),
                    "snr": flux_e / noise_e,
                    "inside": EDGE_MARGIN_PX <= x < nx - EDGE_MARGIN_PX
                    and EDGE_MARGIN_PX <= y < ny - EDGE_MARGIN_PX,
                }
            )
    return out


def _check_cutout(blob: bytes | None, ra: float, dec: float, what: str) -> np.ndarray:
    """A gzipped single-HDU FITS stamp with a celestial WCS that puts (ra, dec) at its centre."""
    assert blob, f"{what}: no cutout"
    raw = gzip.decompress(blob)
    assert raw[:9] == b"SIMPLE  =", f"{what}: not FITS"
    with fits.open(io.BytesIO(raw)) as hdul:
        data = np.asarray(hdul[0].data, dtype=np.float32)
        header = hdul[0].header
    assert data.shape == (CUTOUT_SIZE, CUTOUT_SIZE), f"{what}: shape {data.shape}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    assert wcs.has_celestial, f"{what}: no celestial WCS in the header"
    x, y = wcs.world_to_pixel_values(ra, dec)
    centre = (CUTOUT_SIZE - 1) / 2
    assert abs(x - centre) <= 1.0 and abs(y - centre) <= 1.0, (
        f"{what}: sighting at ({x:.2f}, {y:.2f}) in the stamp"
    )
    return data


@pytest.mark.timeout(900)
def test_night_end_to_end(test_settings: Settings) -> None:
    from seechange.models import AlertLog, Sighting
    from seechange.models.session import make_engine, make_session_factory
    from seechange.orchestrate import table_counts
    from seechange.sim.night import simulate_night

    t_start = time.monotonic()
    with isolated_run(test_settings, "e2e") as settings:
        data_dir = settings.data_dir
        night = simulate_night(
            data_dir, seed=SEED, n_fields=N_FIELDS, n_epochs=N_EPOCHS, size=SIZE, n_ref_epochs=N_REF
        )
        n_exp = N_FIELDS * N_EPOCHS
        assert len(night.exposures) == n_exp
        assert [e.mjd for e in night.exposures] == sorted(e.mjd for e in night.exposures)
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        alerts_topic = settings.topic("alerts")
        try:
            # ---------------------------------------------------------------- first run
            t0 = time.monotonic()
            exposure_ids, reports, collector, codes = _run_night(
                settings, night, sessions, data_dir / "logs1"
            )
            t_night = time.monotonic() - t0
            assert codes == {f"{s}-0": 0 for s in ("reduce", "subtract", "detect", "alert")}, codes
            assert len(set(exposure_ids)) == n_exp and sum(r.new for r in reports) == n_exp

            with sessions() as s:
                counts = table_counts(s)
                sub_raw = _subtraction_exposures(s)
                logged_ids = set(s.scalars(select(AlertLog.alert_id)))
                good_sightings = set(s.scalars(select(Sighting.id).where(Sighting.is_good)))
                sighting_obj = {int(i): o for i, o in s.execute(select(Sighting.id, Sighting.object_id))}
            print(f"\nrows per table: {counts}")
            assert counts["exposures"] == n_exp
            assert counts["images"] == n_exp
            assert counts["coadd_images"] == N_FIELDS
            assert counts["subtraction_images"] == N_FIELDS * (N_EPOCHS - N_REF)
            assert counts["sightings"] == counts["photometry"] == counts["cutouts"] > 0
            assert counts["objects"] > 0
            assert counts["objects"] <= counts["sightings"]
            # one subtraction per non-reference exposure of each field, and nothing else
            expected_subs = sorted(e.raw_path for e in night.exposures if e.epoch >= N_REF)
            assert sorted(sub_raw.values()) == expected_subs

            # ---------------------------------------------------------------- the alerts on the topic
            raw_msgs = read_topic(settings.kafka_bootstrap, alerts_topic)
            decoder = SchemasOnlyDecoder()
            alerts: list[dict[str, Any]] = []
            for msg in raw_msgs:
                value = msg.value()
                assert value is not None
                assert (
                    value[0] == 0 and int.from_bytes(value[1:5], "big") == 101
                )  # alert 1.1: MAJOR*100+MINOR
                name, version, record = decoder.decode(value)
                assert (name, version) == ("alert", "1.1")
                assert msg.key() == str(record["object"]["objectId"]).encode()
                alerts.append(record)
            collected = [r for r, _ in collector.snapshot()]
            print(
                f"alerts on {alerts_topic}: {len(alerts)}; received by the collector: {len(collected)} "
                f"({collector.undecodable} undecodable); alert_log rows: {counts['alert_log']}"
            )
            assert len(alerts) > 0
            assert collector.undecodable == 0
            assert len(collected) == len(alerts) == counts["alert_log"]
            ids = [a["alertId"] for a in alerts]
            assert len(set(ids)) == len(ids), "duplicate alert ids"
            assert set(ids) == logged_ids == {a["alertId"] for a in collected}
            assert set(ids) == good_sightings  # one alert per good sighting, none for the others
            for a in alerts:
                sg, obj = a["sighting"], a["object"]
                assert a["alertId"] == sg["sightingId"] and a["schemaVersion"] == "1.1"
                assert sighting_obj[sg["sightingId"]] == sg["objectId"] == obj["objectId"]
                assert sg["subtractionId"] in sub_raw
                assert sg["isGood"] and sg["band"] == night.band
                assert math.isfinite(sg["psfFlux"]) and sg["psfFluxErr"] > 0
                assert abs(sg["snr"] - sg["psfFlux"] / sg["psfFluxErr"]) < 1e-3 * max(1.0, abs(sg["snr"]))
                assert obj["firstMjd"] <= sg["mjd"] <= obj["lastMjd"] and obj["nSightings"] >= 1
                assert (
                    _sep_arcsec(sg["ra"], sg["dec"], obj["ra"], obj["dec"])
                    <= settings.association_radius_arcsec
                )
                for p in a["prvSightings"] or []:
                    assert p["mjd"] < sg["mjd"] and sighting_obj[p["sightingId"]] == obj["objectId"]
                # forced photometry as of the sighting: its own difference image included, detected there
                forced = {p["subtractionId"]: p for p in a["prvForcedPhotometry"] or []}
                assert forced[sg["subtractionId"]]["detected"]
                assert all(sg["mjd"] - 30.0 <= p["mjd"] <= sg["mjd"] for p in forced.values())
                for p in a["prvNonDetections"] or []:
                    assert p["mjd"] < sg["mjd"] and not forced[p["subtractionId"]]["detected"]
                sci = _check_cutout(a["cutoutScience"], sg["ra"], sg["dec"], f"alert {a['alertId']} science")
                _check_cutout(a["cutoutTemplate"], sg["ra"], sg["dec"], f"alert {a['alertId']} template")
                diff = _check_cutout(
                    a["cutoutDifference"], sg["ra"], sg["dec"], f"alert {a['alertId']} difference"
                )
                c = CUTOUT_SIZE // 2
                assert np.isfinite(sci[c, c]) and np.isfinite(diff[c, c])

            # ---------------------------------------------------------------- the injected transients
            truths = _true_transients(data_dir, night)
            bright = [t for t in truths if t["snr"] > BRIGHT_SNR and t["inside"]]
            assert bright, "the simulated night has no bright transient to look for; change SEED"
            recovered, pulls, objects_of = [], [], defaultdict(set)
            for t in truths:
                near = [
                    (a, _sep_arcsec(t["ra"], t["dec"], a["sighting"]["ra"], a["sighting"]["dec"]))
                    for a in alerts
                    if sub_raw[a["sighting"]["subtractionId"]] == t["raw_path"]
                ]
                near = [(a, d) for a, d in near if d < MATCH_RADIUS_ARCSEC]
                if not near:
                    continue
                a, d = min(near, key=lambda ad: ad[1])
                objects_of[t["id"]].add(a["object"]["objectId"])
                sg = a["sighting"]
                pull = (sg["psfFlux"] - t["flux_njy"]) / sg["psfFluxErr"]
                print(
                    f"transient {t['id']} epoch {t['epoch']}: truth S/N {t['snr']:6.1f}, "
                    f'{t["flux_njy"]:9.1f} nJy; alert {a["alertId"]} at {d:.2f}", '
                    f"{sg['psfFlux']:9.1f} +- {sg['psfFluxErr']:6.1f} nJy (pull {pull:+.2f})"
                )
                if t in bright:
                    recovered.append(t)
                    pulls.append(pull)
                    assert d < POSITION_TOLERANCE_ARCSEC, f'transient {t["id"]}: alert {d:.2f}" away'
                    tol = max(5 * sg["psfFluxErr"], 0.2 * t["flux_njy"])
                    assert abs(sg["psfFlux"] - t["flux_njy"]) <= tol, (
                        f"transient {t['id']} epoch {t['epoch']}: "
                        f"{sg['psfFlux']:.1f} +- {sg['psfFluxErr']:.1f} "
                        f"nJy, truth {t['flux_njy']:.1f} nJy"
                    )
            for tid, objs in objects_of.items():
                assert len(objs) == 1, f"transient {tid} split over objects {sorted(objs)}"
            fraction = len(recovered) / len(bright)
            print(
                f"bright transient epochs (truth S/N > {BRIGHT_SNR:g}): {len(bright)}, with an alert: "
                f"{len(recovered)} ({fraction:.0%}); flux pulls {np.round(pulls, 2).tolist()}; "
                f"all transient epochs with flux on the chip: {len(truths)}, with an alert: "
                f"{sum(len(v) > 0 for v in objects_of.values())} transients"
            )
            assert recovered, "no bright injected transient produced an alert"

            # ---------------------------------------------------------------- second run: nothing new
            before_counts = counts
            before_alerts = message_count(settings.kafka_bootstrap, alerts_topic)
            before_ready = message_count(settings.kafka_bootstrap, settings.topic("exposure-ready"))
            ids2, reports2, collector2, codes2 = _run_night(settings, night, sessions, data_dir / "logs2")
            assert codes2 == codes
            assert sorted(ids2) == sorted(exposure_ids) and sum(r.new for r in reports2) == 0
            # the re-ingested events really went through (every service committed its whole input)
            assert (
                message_count(settings.kafka_bootstrap, settings.topic("exposure-ready"))
                == before_ready + n_exp
            )
            with sessions() as s:
                assert table_counts(s) == before_counts
            assert message_count(settings.kafka_bootstrap, alerts_topic) == before_alerts
            assert sorted(a["alertId"] for a, _ in collector2.snapshot()) == sorted(ids)
            for topic in ("image-reduced", "subtraction-done", "sighting-found"):
                print(
                    f"{topic}: {message_count(settings.kafka_bootstrap, settings.topic(topic))} messages "
                    f"after both runs"
                )
            print(f"first run {t_night:.1f} s; whole test {time.monotonic() - t_start:.1f} s")
        finally:
            engine.dispose()
