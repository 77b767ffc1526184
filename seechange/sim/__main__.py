"""``python -m seechange.sim DATA_DIR``: write a simulated night (see ``simulate_night``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seechange.sim.instrument import BANDS
from seechange.sim.night import simulate_night


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, simulate the night, print one line per exposure; return the exit status."""
    p = argparse.ArgumentParser(prog="python -m seechange.sim", description=__doc__)
    p.add_argument("data_dir", type=Path, help="data root to write under")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-fields", type=int, default=2)
    p.add_argument("--n-epochs", type=int, default=6)
    p.add_argument("--band", choices=BANDS, default="r")
    p.add_argument("--size", type=int, nargs=2, default=(2048, 4096), metavar=("NX", "NY"),
                   help="trimmed CCD size in pixels")
    p.add_argument("--ccdnum", type=int, default=37)
    p.add_argument("--n-ref-epochs", type=int, default=3)
    p.add_argument("--exptime", type=float, default=60.0, help="seconds")
    p.add_argument("--start-mjd", type=float, default=60000.0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"[{done}/{total}] {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    try:
        summary = simulate_night(a.data_dir, seed=a.seed, n_fields=a.n_fields, n_epochs=a.n_epochs, band=a.band,
                                 size=tuple(a.size), ccdnum=a.ccdnum, n_ref_epochs=a.n_ref_epochs,
                                 exptime=a.exptime, start_mjd=a.start_mjd, progress=progress)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for rec in summary.exposures:
        print(rec.raw_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
