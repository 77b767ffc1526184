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


@pytest.mark.skipif(not DATA.is_dir(), reason="real DECam data (../shared/data/decam-sfft) not present")
def test_decam_sfft_layout_flags_cosmic_rays_through_the_pipeline_path(tmp_path, monkeypatch) -> None:
    """The decam-sfft loader uses the pre-reduced images' cosmic-ray path (objlim relative to the PSF).

    Truth: two-pixel hits (what resampling makes of a cosmic ray) added to a real frame on empty sky are
    flagged; the frame's bright stars are not; stacks are not searched.
    """
    import numpy as np
    from astropy.io import fits

    from seechange.evaluation import real
    from seechange.improc import prereduced
    from seechange.improc.types import FLAG_COSMIC_RAY

    with fits.open(DATA / "DEC-OBS04a.mini.fits") as hdul:
        hdr, adu = hdul[0].header, np.asarray(hdul[0].data, dtype=np.float64)
    sky = float(np.median(adu))
    rms = float(np.median(np.abs(adu - sky))) * 1.4826
    quiet = np.abs(adu - sky) < 3 * rms
    rng = np.random.default_rng(3)
    hits = []
    while len(hits) < 6:
        x, y = int(rng.integers(20, 236)), int(rng.integers(20, 236))
        if quiet[y - 6 : y + 7, x - 6 : x + 7].all() and all(abs(x - a) + abs(y - b) > 20 for a, b in hits):
            hits.append((x, y))
    for x, y in hits:
        adu[y, x] += 40 * rms
        adu[y, x + 1] += 30 * rms  # spread over two pixels
    path = tmp_path / "hit.fits"
    fits.PrimaryHDU(adu, hdr).writeto(path)
    calls = []
    monkeypatch.setattr(
        real, "flag_cosmic_rays", lambda *a, **k: calls.append(1) or prereduced.flag_cosmic_rays(*a, **k)
    )
    d = real.load_decam_sfft(path)
    assert calls == [1]
    cr = (d.flags & FLAG_COSMIC_RAY) != 0
    assert all(cr[y, x] and cr[y, x + 1] and d.weight[y, x] == 0 for x, y in hits)
    # the brightest unsaturated stars of the frame are left alone
    objs = d.meta["objects"]
    bright = objs[(objs["flag"] == 0) & (objs["peak"] < 0.3 * float(hdr["SATURATE"]) * float(hdr["GAIN"]))]
    bright = bright[np.argsort(-bright["flux"])][:3]
    assert len(bright) >= 1
    assert not any(cr[round(float(o["y"])), round(float(o["x"]))] for o in bright)
    # stacks are not searched (their combination removed the hits)
    calls.clear()
    real.load_decam_sfft(path, n_combined=5)
    assert calls == []
