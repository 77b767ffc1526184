"""Benchmark helpers that need no services."""

from __future__ import annotations

import os

from seechange.bench import peak_rss_mb


def test_peak_rss_of_this_process_is_positive_and_missing_pid_is_none() -> None:
    mb = peak_rss_mb(os.getpid())
    assert mb is not None and 10.0 < mb < 100_000.0
    assert peak_rss_mb(2**22 + 12345) is None
