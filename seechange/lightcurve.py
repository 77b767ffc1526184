"""An Object's lightcurve: its sightings in time order with their photometry, as an astropy Table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.models import Object, Photometry, Sighting


class UnknownObject(LookupError):
    """No Object has that name."""


def lightcurve_table(session: Session, name: str) -> Table:
    """Sightings of the Object ``name`` in MJD order: mjd, band, flux (nJy) and error, mag, SNR, flags.

    Raises
    ------
    UnknownObject
        If no Object has that name.
    """
    obj = session.scalars(select(Object).where(Object.name == name)).one_or_none()
    if obj is None:
        raise UnknownObject(f"no object named {name!r}")
    rows = session.execute(
        select(Sighting, Photometry)
        .join(Photometry, Photometry.sighting_id == Sighting.id)
        .where(Sighting.object_id == obj.id)
        .order_by(Sighting.mjd, Sighting.id, Photometry.id)
    ).all()
    nan = float("nan")
    t = Table(
        rows=[
            (
                s.id,
                s.mjd,
                s.band,
                p.flux_njy if p.flux_njy is not None else nan,
                p.flux_njy_err if p.flux_njy_err is not None else nan,
                p.mag if p.mag is not None else nan,
                p.mag_err if p.mag_err is not None else nan,
                p.snr if p.snr is not None else nan,
                s.is_positive,
                s.is_good,
                s.flags,
                p.provenance_id,
            )
            for s, p in rows
        ],
        names=(
            "sighting_id",
            "mjd",
            "band",
            "flux_njy",
            "flux_njy_err",
            "mag",
            "mag_err",
            "snr",
            "is_positive",
            "is_good",
            "flags",
            "provenance_id",
        ),
        dtype=(np.int64, float, str, float, float, float, float, float, bool, bool, np.int64, str),
    )
    t["mjd"].unit, t["flux_njy"].unit, t["flux_njy_err"].unit = "d", "nJy", "nJy"
    t.meta.update(name=obj.name, object_id=obj.id, ra=obj.ra, dec=obj.dec, n_sightings=obj.n_sightings)
    return t


def plot_lightcurve(table: Table, path: Path) -> None:
    """Flux (nJy) against MJD with error bars, one colour per band, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for band in sorted(set(table["band"])):
        sel = table["band"] == band
        ax.errorbar(
            table["mjd"][sel], table["flux_njy"][sel], yerr=table["flux_njy_err"][sel], fmt="o", label=band
        )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("MJD")
    ax.set_ylabel("difference flux (nJy)")
    ax.set_title(f"{table.meta.get('name', '')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
