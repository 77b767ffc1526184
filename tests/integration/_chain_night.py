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

SEED = 77
N_EPOCHS, N_REF = 6, 3
SIZE = (512, 1024)
RADIUS_ARCSEC = 1.5


def simulate(root: Path) -> list[str]:
    """Simulate the night under ``root``; its raw paths (relative to ``root``) in time order."""
    from seechange.sim.night import simulate_night

    summary = simulate_night(root, seed=SEED, n_fields=1, n_epochs=N_EPOCHS, size=SIZE, n_ref_epochs=N_REF)
    return [str(e.raw_path) for e in summary.exposures]


def run_chain(
    sessions: sessionmaker[Session],
    root: Path,
    raw: list[str],
    *,
    on_detected: Callable[[list[Sighting]], None] | None = None,
) -> InProcessChain:
    """The night through the chain up to detect; ``on_detected(sightings)`` after each subtraction."""
    chain = InProcessChain(sessions, root, PipelineParameters(), radius_arcsec=RADIUS_ARCSEC, threads=1)
    image_ids = [chain.reduce(chain.ingest(p)).id for p in raw]
    for image_id in image_ids[N_REF:]:
        assert chain.reference(image_id) is not None
        sub = chain.subtract(image_id)
        assert sub is not None
        sightings = chain.detect(sub.id)
        if on_detected is not None:
            on_detected(sightings)
    return chain
