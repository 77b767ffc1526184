"""subtract + detect on the real DECam pairs (reduced injection budget)."""

from __future__ import annotations

import pytest

from seechange.evaluation.real import evaluate_real_decam
from tests.paths import SHARED_DATA

DATA = SHARED_DATA / "decam-sfft"


@pytest.mark.skipif(not DATA.is_dir(), reason="real DECam data (../shared/data/decam-sfft) not present")
def test_real_decam_quality() -> None:
    r = evaluate_real_decam(DATA, seed=1, n_inject=20, n_rounds=3)
    assert r["n_injected"] >= 300
    assert r["completeness_snr_ge_10"] >= 0.9
    assert r["transient_found_all"]
    for f in r["per_frame"]:
        assert abs(f["scorr_mad_std"] - 1.0) <= 0.05, f
    assert 0.8 <= r["pull_std"] <= 1.25
    assert max(r["false_positives_per_frame"]) <= 3
