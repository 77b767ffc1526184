"""The short fault harness: a night through the four services as processes while they are killed.

One field of 6 epochs (512x1024 CCDs) is run twice: undisturbed, in-process through the chain into one
database; and through ``seechange serve`` processes (:func:`seechange.chaos.run_disturbed`) into another,
while each service is ``kill -9``-ed once at a random moment (restarted at once), the alert service dies
once at its test fault point between a delivery and marking its outbox row sent, and a second subtract, a
second detect and a second alert instance each join their group and leave it; mid-night the Kafka broker is
stopped for 6 s and restarted, and so is PostgreSQL (4 s). The disturbed run uses a broker and a PostgreSQL of its own
(:func:`seechange.localservices.private.private_services`: own cache directory under the test's tmp, own
ports, both stopped at the end), never the ones the session shares with other runs. Afterwards the two databases hold the same rows
(counts and natural keys: the same Objects with the same names, positions and counts, the same memberships
and forced points), the epochs reached detect in time order, every stored alert packet equals the
undisturbed run's field by field (ids compared through natural keys), every alert received equals its
stored packet (so the one re-send is identical), every bright injected transient was alerted, and no
dead-letter topic holds a message. ``seechange chaos`` runs the long variant.
"""

from __future__ import annotations

import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from seechange.chaos import ChaosPlan, compare, run_disturbed
from seechange.config import Settings
from seechange.localservices.postgres import create_database, drop_database
from seechange.localservices.private import private_services
from seechange.models.migrate import upgrade
from seechange.models.session import make_engine, make_session_factory
from seechange.natural_keys import natural_keys, stored_packets
from seechange.orchestrate import table_counts
from seechange.pipeline.association import angular_sep_arcsec
from tests.integration._chain_night import bright_transients, run_chain, simulate_summary
from tests.integration._night import isolated_run

MATCH_ARCSEC = 2.0
SAME_EXPOSURE_DAYS = 1e-3  # a sighting's MJD is its exposure's mid-time (exposures are 10+ min apart)


def _undisturbed(
    endpoints: Settings, root: Path, raw: list[str]
) -> tuple[dict[str, int], dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    name = f"chaos_ref_{uuid.uuid4().hex[:6]}"
    url = create_database(endpoints.database_url, name)
    engine = make_engine(url)
    try:
        upgrade(url)
        sessions = make_session_factory(engine)
        run_chain(sessions, root, raw, alert=True)
        with sessions() as s:
            return table_counts(s), natural_keys(s), stored_packets(s)
    finally:
        engine.dispose()
        drop_database(endpoints.database_url, name)


@pytest.mark.timeout(900)
def test_night_survives_kills_restarts_outages_and_a_second_instance(
    endpoints: Settings, test_settings: Settings, tmp_path: Path
) -> None:
    night = tmp_path / "night"
    summary = simulate_summary(night)
    raw = [str(e.raw_path) for e in summary.exposures]
    counts_ref, keys_ref, packets_ref = _undisturbed(endpoints, shutil.copytree(night, tmp_path / "ref"), raw)

    extra = ("subtract", "detect", "alert")
    plan = ChaosPlan(seed=3, broker_outage_s=6.0, database_outage_s=4.0, extra_instances=extra)
    with (
        private_services(test_settings, tmp_path / "svc") as own,
        isolated_run(own, "chaos") as settings,
    ):
        shutil.copytree(night, settings.data_dir, dirs_exist_ok=True)
        engine = make_engine(settings.database_url)
        try:
            sessions = make_session_factory(engine)
            report = run_disturbed(settings, raw, sessions, tmp_path / "logs", plan)
        finally:
            engine.dispose()
    print(f"\nchaos: {report.actions} in {report.seconds:.0f} s; rows {report.counts}")

    # the faults happened
    assert report.kills == 4 and report.fault_crashes == 1
    assert set(report.outages) == {"kafka", "postgres"}, report.actions
    assert report.outages["kafka"] >= 6.0 and report.outages["postgres"] >= 4.0
    for stage in extra:
        assert any(f"{stage}-1 joined" in a for _, a in report.actions), stage
        assert any(f"{stage}-1 left" in a for _, a in report.actions), stage
    assert set(report.exit_codes.values()) == {0}, report.exit_codes

    # each sky tile's epochs reached detect in the order they were ingested (one partition per tile)
    assert report.in_time_order

    # nothing lost, nothing duplicated: the same rows as the undisturbed run, and the same Objects with the
    # same names, positions and counts, memberships and forced points (association saw the same order)
    assert report.counts == counts_ref
    for table, keys in keys_ref.items():
        assert report.keys[table] == keys, table
    assert len(keys_ref["alert_log"]) > 0 and len(keys_ref["objects"]) > 0
    assert any(row[3] > 1 for row in keys_ref["object_rows"]), "the night must give repeated Objects"

    # the same packets, field by field (database ids through natural keys)
    assert sorted(report.packets) == sorted(packets_ref)
    for key, want in packets_ref.items():
        got = report.packets[key]
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == want[name], f"packet of {key}: {name}: {got[name]!r} != {want[name]!r}"

    # every alert received is its stored packet (the re-send included): each once, the re-send twice
    copies: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in report.received:
        copies[(record["alertId"][0], int(record["alertId"][1]))].append(record)
    assert sorted(copies) == sorted(report.packets)
    assert sum(len(c) > 1 for c in copies.values()) >= 1, "the fault point must have caused one re-send"
    for key, received in copies.items():
        assert all(c == report.packets[key] for c in received), key

    # every bright injected transient alerted
    alerts = [r["sighting"] for r in report.alerts]
    bright = bright_transients(night, summary)
    assert len(bright) >= 3
    for t in bright:
        assert any(
            abs(a["mjd"] - t["mjd"]) < SAME_EXPOSURE_DAYS
            and angular_sep_arcsec(a["ra"], a["dec"], t["ra"], t["dec"]) < MATCH_ARCSEC
            for a in alerts
        ), f"transient at {t} not alerted"

    # nothing dead-lettered, and the harness's own comparison finds nothing either
    assert set(report.dead_letters.values()) == {0}, report.dead_letters
    assert compare(report, counts_ref, keys_ref, packets_ref) == []
