"""The load test's verdict: lag bounded over the feed and caught up soon after (seechange.loadtest.held)."""

from __future__ import annotations

from seechange.loadtest import LoadReport, Sample, held


def _report(lags: list[int], drain_s: float | None, rate: float = 30.0) -> LoadReport:
    report = LoadReport(rate_per_min=rate, minutes=1.0, size=(512, 1024), drain_s=drain_s)
    report.samples = [
        Sample(t_s=10.0 * (i + 1), ingested=0, through=0, per_min=0.0, lag={"subtract": n})
        for i, n in enumerate(lags)
    ]
    report.feed_s = 10.0 * len(lags)
    return report


def test_a_steady_lag_that_catches_up_is_held() -> None:
    assert held(_report([3, 5, 2, 4, 3, 5], drain_s=12.0))


def test_a_growing_queue_is_not_held() -> None:
    # 30/min sampled every 10 s could add 5 a sample; the second half is 20 higher on average
    assert not held(_report([2, 8, 14, 20, 26, 32], drain_s=30.0))


def test_no_catch_up_or_a_slow_one_is_not_held() -> None:
    assert not held(_report([3, 3, 3, 3], drain_s=None))
    assert not held(_report([3, 3, 3, 3], drain_s=500.0))
