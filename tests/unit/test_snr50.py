"""The SNR at 50 % completeness of `evaluate sim` (a logistic with a plateau)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seechange.evaluation.simulated import _snr50


def _night(seed: int, plateau: float, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    snr = rng.uniform(0.0, 30.0, n)
    p = plateau / (1.0 + np.exp(-(snr - 5.0) / 0.8))
    return snr, rng.uniform(size=n) < p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snr50_recovers_the_true_50_percent_point(seed: int) -> None:
    snr, found = _night(seed, plateau=1.0)
    assert _snr50(snr, found) == pytest.approx(5.0, abs=0.5)


def test_bright_misses_do_not_pull_the_50_percent_point_away() -> None:
    # 95 % plateau: completeness is 0.5 at 5 + 0.8 ln(1 / 0.9) = 5.08
    snr, found = _night(3, plateau=0.95)
    truth = 5.0 + 0.8 * math.log(1.0 / 0.9)
    assert _snr50(snr, found) == pytest.approx(truth, abs=0.5)
    # three misses among the bright ones, as on a night with transients on saturated stars
    snr2 = np.r_[snr, 15.6, 20.8, 185.7]
    found2 = np.r_[found, False, False, False]
    assert _snr50(snr2, found2) == pytest.approx(truth, abs=0.5)


def test_snr50_is_nan_when_nothing_can_be_fitted() -> None:
    assert math.isnan(_snr50(np.array([1.0, 2.0, 3.0]), np.array([True, True, True])))
    assert math.isnan(_snr50(np.array([1.0, 2.0]), np.array([True, False])))
    # never above half complete: no 50 % point
    snr = np.linspace(0, 30, 200)
    assert math.isnan(_snr50(snr, (np.arange(200) % 3) == 0))
