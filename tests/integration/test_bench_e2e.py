"""The end-to-end benchmark on a small night: warm-up left out of the figures, the timed phase's alerts only."""

from __future__ import annotations

from pathlib import Path

import pytest

from seechange.bench import N_REF, bench_end_to_end
from seechange.config import Settings
from seechange.localservices.kafka import kafka_pid
from seechange.localservices.postgres import postgres_pid


def test_timed_phase_counts_only_its_own_ccds_and_alerts(endpoints: Settings, tmp_path: Path) -> None:
    settings = endpoints.model_copy(update={"data_dir": tmp_path})
    r = bench_end_to_end(settings, n_exposures=3, n_fields=2, size=(512, 1024), timeout=600)
    # two fields: each field's N_REF reference epochs and first new epoch are the warm-up
    assert r["n_warmup_exposures"] == 2 * (N_REF + 1)
    assert r["n_exposures"] == 3
    assert all(code == 0 for code in r["exit_codes"].values()), r["exit_codes"]
    # the simulated night has transients in every new epoch: the timed CCDs alert, and only they are counted
    assert r["alerts"] >= 1
    assert r["alerts"] == r["alerts_logged"]
    assert r["latency_s"]["n"] == r["alerts"]
    assert 0.0 < r["latency_s"]["median"] <= r["latency_s"]["max"] <= r["elapsed_s"] + 1.0
    # throughput: to the last alert's broker timestamp, which comes before the night is seen through
    assert 0.0 < r["through_s"] <= r["elapsed_s"] + 0.5
    assert r["ccds_per_min"] == pytest.approx(60.0 * 3 / r["through_s"])
    assert set(r["peak_rss_mb"]) >= {"reduce-0", "subtract-0", "detect-0", "alert-0"}
    assert all(v is not None and v > 0 for v in r["peak_rss_mb"].values())
    # CPU of the timed phase, per timed CCD: every service did work, and the sum fits in the cores' time
    cpu = r["cpu_s_per_ccd"]
    assert set(cpu) >= {"reduce-0", "subtract-0", "detect-0", "alert-0", "bench driver"}
    # the broker and PostgreSQL are counted when they are this checkout's own (not when reused from another)
    assert ("kafka" in cpu) == (kafka_pid(settings) is not None)
    assert ("postgres" in cpu) == (postgres_pid(settings) is not None)
    assert all(cpu[f"{s}-0"] > 0 for s in ("reduce", "subtract", "detect", "alert"))
    assert 0.0 < r["cpu_busy_fraction"] <= 1.1
