"""Benchmark helpers that need no services."""

from __future__ import annotations

import os

from seechange.bench import cpu_seconds, peak_rss_mb


def test_peak_rss_of_this_process_is_positive_and_missing_pid_is_none() -> None:
    mb = peak_rss_mb(os.getpid())
    assert mb is not None and 10.0 < mb < 100_000.0
    assert peak_rss_mb(2**22 + 12345) is None


def test_cpu_seconds_counts_a_busy_process_and_its_children() -> None:
    import subprocess
    import sys
    import time

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {burn!r}])\n{burn}",
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        own = tree = 0.0
        while time.monotonic() < deadline:  # both have spun their 0.5 s (a loaded machine may take a while)
            own, tree = cpu_seconds(parent.pid) or 0.0, cpu_seconds(parent.pid, tree=True) or 0.0
            if own >= 0.5 and tree - own >= 0.5:
                break
            time.sleep(0.1)
        assert 0.5 <= own < 1.0  # its own 0.5 s of spinning (plus start-up), not its child's
        assert tree >= own + 0.5  # and the child's 0.5 s with it
    finally:
        os.killpg(parent.pid, 9)  # the parent and its child
        parent.wait()
    assert cpu_seconds(2**22 + 12345) is None


def test_target_rows_compare_each_figure_with_its_bound() -> None:
    from seechange.bench import TARGETS, target_rows

    results = {
        "stages": {
            "stages": {"reduce": {"median_s": 0.9}, "subtract": {"median_s": 2.0}},
            "per_alert_ms": 4.0,
        },
        "e2e": {"ccds_per_min": 31.0, "max_rss_mb": 1300.0},
    }
    rows = {name: (value, met) for name, value, _, _, met in target_rows(results)}
    assert set(rows) == set(TARGETS)
    assert rows["reduce per CCD"] == (0.9, True)
    assert rows["subtract per CCD (reference cached)"] == (2.0, False)
    assert rows["alert build per alert"] == (4.0, True)
    assert rows["services throughput, all queued"] == (31.0, True)  # a lower bound
    assert rows["peak RSS per service (largest)"] == (1300.0, False)
    assert rows["latency median, one CCD per 4 s"] == (None, None)  # not measured


def test_profile_of_a_step_is_written_as_text_and_html(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from seechange.pipeline.chain import _profiler, _write_profile

    prof = _profiler()
    prof.start()
    np.linalg.svd(np.random.default_rng(0).normal(size=(300, 300)))
    prof.stop()
    _write_profile(prof, tmp_path / "p", "subtract-1")
    text = (tmp_path / "p" / "subtract-1.txt").read_text()
    assert "test_profile_of_a_step" in text
    assert (tmp_path / "p" / "subtract-1.html").stat().st_size > 1000


def test_machine_reference_times_each_workload_once_per_repeat() -> None:
    from seechange.bench import machine_reference

    got = machine_reference(repeats=1, shape=(64, 32))
    workers = os.cpu_count() or 1
    assert set(got) == {"fft_pair_1_worker_s", f"fft_pair_{workers}_workers_s", "sort_4M_s"}
    assert all(0.0 < v < 60.0 for v in got.values())
