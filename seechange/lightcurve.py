"""An Object's lightcurve: its detections, forced points and non-detection limits in time order.

One row per detection (``kind`` ``detection``: a Sighting and its Photometry), per forced PSF measurement
at the Object's position on a difference image (``forced``) and per difference image on which it was not
detected (``limit``: ``mag`` is the limiting magnitude from the local noise at the detection threshold,
5 sigma by default, fluxes are NaN). Per difference image, the detections of one detect provenance and
the forced point of one forced provenance: the latest made (a reprocessing replaces, not doubles).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from astropy.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.models import ForcedPhotometry, Object, Photometry, Sighting
from seechange.units import AB_MAG_OF_1_NJY

__all__ = ["COLUMNS", "KINDS", "UnknownObject", "lightcurve_table", "plot_lightcurve"]

KINDS = ("detection", "forced", "limit")

#: (name, dtype, unit) of the table's columns
COLUMNS: tuple[tuple[str, Any, str | None], ...] = (
    ("mjd", float, "d"),
    ("band", str, None),
    ("kind", str, None),
    ("flux_njy", float, "nJy"),
    ("flux_njy_err", float, "nJy"),
    ("mag", float, "mag"),
    ("mag_err", float, "mag"),
    ("lim_mag", float, "mag"),
    ("zero_point", float, "mag"),
    ("snr", float, None),
    ("sighting_id", np.int64, None),
    ("subtraction_id", np.int64, None),
    ("is_positive", bool, None),
    ("is_good", bool, None),
    ("flags", np.int64, None),
    ("provenance_id", str, None),
)

_NAN = float("nan")


class UnknownObject(LookupError):
    """No Object has that name."""


def _v(value: float | None) -> float:
    return _NAN if value is None else float(value)


def _mag(flux_njy: float, err_njy: float) -> tuple[float, float]:
    if not (flux_njy > 0 and math.isfinite(flux_njy)):
        return _NAN, _NAN
    return AB_MAG_OF_1_NJY - 2.5 * math.log10(flux_njy), 2.5 / math.log(10) * err_njy / flux_njy


def lightcurve_table(session: Session, name: str) -> Table:
    """Detections, forced points and limits of the Object ``name`` in MJD order (columns :data:`COLUMNS`).

    ``sighting_id`` and ``subtraction_id`` are -1 where they do not apply; ``snr`` of a forced point is
    its flux over its error.

    Raises
    ------
    UnknownObject
        If no Object has that name.
    """
    obj = session.scalars(select(Object).where(Object.name == name)).one_or_none()
    if obj is None:
        raise UnknownObject(f"no object named {name!r}")
    rows: list[tuple[Any, ...]] = []
    for s, p in session.execute(
        select(Sighting, Photometry)
        .join(Photometry, Photometry.sighting_id == Sighting.id)
        .where(Sighting.object_id == obj.id)
        .order_by(Sighting.mjd, Sighting.id, Photometry.id)
    ).all():
        rows.append(
            (s.mjd, s.band, "detection", _v(p.flux_njy), _v(p.flux_njy_err), _v(p.mag), _v(p.mag_err))
            + (_v(p.lim_mag), _v(p.zero_point), _v(p.snr), s.id, s.subtraction_id, s.is_positive, s.is_good)
            + (s.flags, p.provenance_id)
        )
    # one detect provenance per difference image, the latest made (the one with the newest sightings): after
    # a reprocessing the trial's sightings replace the originals here instead of doubling every point
    newest: dict[int, tuple[int, str]] = {}
    for r in rows:
        if r[10] > newest.get(r[11], (-1, ""))[0]:
            newest[r[11]] = (r[10], r[-1])
    rows = [r for r in rows if r[-1] == newest[r[11]][1]]
    # one forced point per difference image, the latest forced provenance made (as in alert packets): a
    # replay with another detection threshold re-measures the same flux with a limit at the new threshold
    latest: dict[int, ForcedPhotometry] = {}
    for f in session.scalars(
        select(ForcedPhotometry)
        .where(ForcedPhotometry.object_id == obj.id)
        .order_by(ForcedPhotometry.mjd, ForcedPhotometry.subtraction_id, ForcedPhotometry.id)
    ):
        latest[f.subtraction_id] = f
    for f in latest.values():
        mag, mag_err = _mag(f.flux_njy, f.flux_njy_err)
        sid = f.sighting_id if f.sighting_id is not None else -1
        snr = f.flux / f.flux_err if f.flux_err > 0 else _NAN
        rows.append(
            (f.mjd, f.band, "forced", f.flux_njy, f.flux_njy_err, mag, mag_err, _v(f.lim_mag), f.zero_point)
            + (snr, sid, f.subtraction_id, f.flux > 0, f.n_bad_pixels == 0, 0, f.provenance_id)
        )
        if not f.detected and f.lim_mag is not None:
            rows.append(
                (f.mjd, f.band, "limit", _NAN, _NAN, f.lim_mag, _NAN, f.lim_mag, f.zero_point, _NAN, -1)
                + (f.subtraction_id, False, f.n_bad_pixels == 0, 0, f.provenance_id)
            )
    order = {k: i for i, k in enumerate(KINDS)}
    rows.sort(key=lambda r: (r[0], order[r[2]], r[11]))
    names = tuple(c[0] for c in COLUMNS)
    dtypes = tuple(c[1] for c in COLUMNS)
    t = Table(rows=rows, names=names, dtype=dtypes) if rows else Table(names=names, dtype=dtypes)
    for col, _, unit in COLUMNS:
        if unit:
            t[col].unit = unit
    t.meta.update(name=obj.name, object_id=obj.id, ra=obj.ra, dec=obj.dec, n_sightings=obj.n_sightings)
    return t


def plot_lightcurve(table: Table, path: Path | BinaryIO) -> None:
    """Flux (nJy) against MJD per band, written as PNG (800 x 450 pixels) to a path or a binary file.

    Detections are filled circles, forced points open circles with their error bars, and non-detection
    limits downward arrows from the flux of the limit (at the detection threshold, 5 sigma by default).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = {"g": "tab:green", "r": "tab:red", "i": "tab:purple", "z": "tab:brown", "u": "tab:blue"}
    kind = np.asarray(table["kind"])
    lim_all = 10 ** (-0.4 * (np.asarray(table["lim_mag"], dtype=float) - AB_MAG_OF_1_NJY))
    span = np.concatenate([np.asarray(table["flux_njy"], dtype=float), lim_all[kind == "limit"], [0.0]])
    span = span[np.isfinite(span)]
    arrow = 0.08 * float(np.ptp(span)) if span.size > 1 and np.ptp(span) > 0 else 1.0  # nJy
    for k, band in enumerate(sorted(set(table["band"]))):
        colour = colours.get(band, f"C{k}")
        b = np.asarray(table["band"]) == band
        sel = b & (kind == "forced")
        if sel.any():
            ax.errorbar(
                table["mjd"][sel],
                table["flux_njy"][sel],
                yerr=table["flux_njy_err"][sel],
                fmt="o",
                mfc="none",
                color=colour,
                alpha=0.7,
                label=f"{band} forced",
            )
        sel = b & (kind == "detection")
        if sel.any():
            ax.errorbar(
                table["mjd"][sel],
                table["flux_njy"][sel],
                yerr=table["flux_njy_err"][sel],
                fmt="o",
                color=colour,
                label=f"{band} detection",
            )
        sel = b & (kind == "limit")
        if sel.any():
            mjd = np.asarray(table["mjd"][sel], dtype=float)
            lim_flux = 10 ** (-0.4 * (np.asarray(table["lim_mag"][sel], dtype=float) - AB_MAG_OF_1_NJY))
            ax.scatter(mjd, lim_flux, marker="_", s=80, color=colour, label=f"{band} limit")
            for xm, yf in zip(mjd, lim_flux, strict=True):
                ax.annotate(
                    "",
                    xy=(xm, yf - arrow),
                    xytext=(xm, yf),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.0},
                )
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("MJD")
    ax.set_ylabel("difference flux (nJy)")
    ax.set_title(f"{table.meta.get('name', '')}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
