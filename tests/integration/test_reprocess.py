"""Reprocessing you can judge: a small simulated night detected at the default threshold (in process, through
pipeline/chain.py), then ``seechange replay --stage detect --set detect.threshold=4`` (the detect stage run
over the subtraction-done topic with a one-off group, its events going downstream to the alert stage), and
``provenance diff`` checked against what the two thresholds must give."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from confluent_kafka import Producer
from sqlalchemy import select

from seechange.commands.provenance import diff_cmd
from seechange.commands.stream import replay_cmd
from seechange.config import Settings
from seechange.models import Provenance, Sighting
from seechange.models.session import make_engine, make_session_factory
from seechange.pipeline.chain import InProcessChain
from seechange.pipeline.parameters import PipelineParameters
from seechange.pipeline.subtract import subtraction_event
from seechange.provdiff import diff_provenances, latest_two
from seechange.sim.night import simulate_night
from seechange.streaming.framing import encode
from seechange.streaming.registry import SchemaRegistry
from seechange.streaming.stages import get_stage, serve_stage
from seechange.timestamps import now_ms
from tests.integration._night import isolated_run, message_count

N_EPOCHS, N_REF = 5, 3
LOW = 4.0


def _positions(session, prov_id: str) -> set[tuple[int, float, float]]:
    rows = session.scalars(select(Sighting).where(Sighting.provenance_id == prov_id))
    return {(s.subtraction_id, round(s.x, 6), round(s.y, 6)) for s in rows}


def test_reprocess_with_a_lower_threshold_and_diff(test_settings: Settings, tmp_path: Path) -> None:
    with isolated_run(test_settings, "rp") as settings:
        night = simulate_night(
            settings.data_dir, seed=7, n_fields=1, n_epochs=N_EPOCHS, size=(512, 1024), n_ref_epochs=N_REF
        )
        engine = make_engine(settings.database_url)
        sessions = make_session_factory(engine)
        params = PipelineParameters()
        assert params.detect.threshold == 5.0
        chain = InProcessChain(
            sessions, settings.data_dir, params, radius_arcsec=settings.association_radius_arcsec, threads=1
        )
        image_ids = [chain.reduce(chain.ingest(e.raw_path)).id for e in night.exposures]
        subs, alerts_a = [], 0
        for image_id in image_ids[N_REF:]:
            assert chain.reference(image_id) is not None
            sub = chain.subtract(image_id)
            assert sub is not None
            subs.append(sub)
            sightings = chain.detect(sub.id)
            alerts_a += chain.alerts([s.id for s in sightings if s.is_good])
        # the subtraction-done events, as the subtract service would have sent them
        registry = SchemaRegistry.load()
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        for sub in subs:
            record = subtraction_event(sub, produced_at_ms=now_ms(), ingested_at_ms=now_ms())
            producer.produce(
                settings.topic("subtraction-done"),
                key=str(sub.id),
                value=encode(registry, "subtraction_done", record),
            )
        assert producer.flush(10) == 0

        out = CliRunner().invoke(
            replay_cmd,
            ["--stage", "detect", "--set", f"detect.threshold={LOW}", "--idle-timeout", "60"],
            obj=settings,
        )
        assert out.exit_code == 0, out.output
        assert "detect: critical change, new provenance" in out.stdout
        assert f"reprocessed {len(subs)} of {len(subs)} message(s)" in out.stdout
        params_file = Path(re.search(r"parameters: (\S+)", out.stdout).group(1))
        assert f"threshold = {LOW}" in params_file.read_text()

        with sessions() as session:
            prov_a, prov_b = latest_two(session, "detect")
            assert session.get(Provenance, prov_a).parameters["threshold"] == 5.0
            assert session.get(Provenance, prov_b).parameters["threshold"] == LOW
            b_rows = list(session.scalars(select(Sighting).where(Sighting.provenance_id == prov_b)))
            a_rows = list(session.scalars(select(Sighting).where(Sighting.provenance_id == prov_a)))
            n_a, n_b, good_b = len(a_rows), len(b_rows), sum(s.is_good for s in b_rows)
            pos_a, pos_b = _positions(session, prov_a), _positions(session, prov_b)
        # the detect stage sent one sighting-found event per new sighting; the alert stage turns the good
        # ones into alerts
        assert message_count(settings.kafka_bootstrap, settings.topic("sighting-found")) == n_b
        serve_stage(settings, get_stage("alert"), max_messages=n_b, idle_timeout=30)

        with sessions() as session:
            diff = diff_provenances(session, prov_a, prov_b)
        engine.dispose()
        text = CliRunner().invoke(diff_cmd, [prov_a[:8], prov_b[:8]], obj=settings)
        latest = CliRunner().invoke(diff_cmd, ["--step", "detect"], obj=settings)
    assert text.exit_code == 0, text.output
    assert latest.stdout == text.stdout
    print(text.stdout)
    assert f"matched {n_a}, gained {n_b - n_a}, lost 0" in text.stdout
    assert f"parameter threshold: 5.0 -> {LOW}" in text.stdout

    # what the two thresholds must give: the same peaks (local maxima of S_corr) at the same pixels, the
    # lower threshold adding some; nothing lost
    assert n_a > 0 and n_b > n_a
    assert pos_a <= pos_b
    assert diff.parameters == {"threshold": (5.0, LOW)}
    assert diff.sightings == (n_a, n_b)
    assert diff.matched == n_a and diff.lost == 0
    assert diff.gained == len(pos_b - pos_a) == n_b - n_a
    assert diff.products["sightings"] == (n_a, n_b) and diff.products["photometry"] == (n_a, n_b)
    assert diff.objects_lost == 0 and 0 < diff.objects_gained <= diff.gained
    # same pixels, same PSF: the photometry of a matched sighting is the same
    assert diff.mag_median_spread == (0.0, 0.0) and diff.flux_median_spread == (0.0, 0.0)
    assert len(diff.flux_diffs) == n_a
    assert diff.alerts == (alerts_a, good_b)
