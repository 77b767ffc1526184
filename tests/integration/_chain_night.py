"""A small simulated night run through the in-process chain (no services), shared by the reproducibility
and re-send tests.

:func:`simulate` writes one field of 6 epochs (512x1024 CCDs; the first 3 build the reference);
:func:`run_chain` ingests, reduces, subtracts and detects in time order into a database, optionally building
each subtraction's alert packets as it goes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from seechange.models import Sighting
from seechange.pipeline.chain import InProcessChain
from seechange.pipeline.parameters import PipelineParameters
from seechange.sim.night import NightSummary

SEED = 77
N_EPOCHS, N_REF = 6, 3
SIZE = (512, 1024)
RADIUS_ARCSEC = 1.5


def simulate(root: Path) -> list[str]:
    """Simulate the night under ``root``; its raw paths (relative to ``root``) in time order."""
    return [str(e.raw_path) for e in simulate_summary(root).exposures]


def simulate_summary(root: Path) -> NightSummary:
    """Simulate the night under ``root``; what was written (exposures in time order, truth on disk)."""
    from seechange.sim.night import simulate_night

    return simulate_night(root, seed=SEED, n_fields=1, n_epochs=N_EPOCHS, size=SIZE, n_ref_epochs=N_REF)


def bright_transients(
    root: Path, summary: NightSummary, *, min_snr: float = 15.0, margin_px: float = 10.0
) -> list[dict[str, float]]:
    """Injected transients of the subtracted epochs with truth S/N above ``min_snr``, ``margin_px`` inside.

    Each as ``{"mjd", "ra", "dec", "snr"}`` (S/N from the new image's sky noise in a PSF-sized aperture).
    """
    import math

    from seechange.sim.truth import read_truth

    nx, ny = SIZE
    out = []
    for e in summary.exposures:
        if e.epoch < N_REF:
            continue
        truth = read_truth(root, e.expname, e.ccdnum)
        sky_e, fwhm_px = float(truth.meta["sky_e"]), float(truth.meta["fwhm_px"])
        noise_e = math.sqrt(sky_e * 4 * math.pi * (fwhm_px / 2.355) ** 2)
        for row in truth[(truth["kind"] == "transient") & (truth["flux_e"] > 0)]:
            x, y, snr = float(row["x"]), float(row["y"]), float(row["flux_e"]) / noise_e
            inside = margin_px <= x < nx - margin_px and margin_px <= y < ny - margin_px
            if inside and snr > min_snr:
                out.append({"mjd": e.mjd, "ra": float(row["ra"]), "dec": float(row["dec"]), "snr": snr})
    return out


def run_chain(
    sessions: sessionmaker[Session],
    root: Path,
    raw: list[str],
    *,
    on_detected: Callable[[list[Sighting]], None] | None = None,
    alert: bool = False,
) -> InProcessChain:
    """The night through the chain up to detect; ``on_detected(sightings)`` after each subtraction.

    With ``alert``, each subtraction's good sightings are also logged and their packets built right away.
    """
    chain = InProcessChain(sessions, root, PipelineParameters(), radius_arcsec=RADIUS_ARCSEC, threads=1)
    subs = chain.night(raw, alert=alert, on_detected=on_detected)
    assert len(subs) == N_EPOCHS - N_REF
    return chain
