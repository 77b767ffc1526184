"""Where the simulator's files go, and reading/writing its truth (never read by the pipeline).

Paths (relative to the data root, ``docs/ARCHITECTURE.md``)::

    raw/<field>/<expname>_<ccd>.fits
    truth/<expname>_<ccd>.ecsv
    truth/night.json

``<ccd>`` is the CCD number written with two digits (``37``, ``05``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astropy.table import Table


def ccd_tag(ccdnum: int) -> str:
    """The ``<ccd>`` part of file names: the CCD number with two digits."""
    return f"{ccdnum:02d}"


def raw_relpath(field: str, expname: str, ccdnum: int) -> str:
    """``raw/<field>/<expname>_<ccd>.fits`` (relative to the data root)."""
    return f"raw/{field}/{expname}_{ccd_tag(ccdnum)}.fits"


def truth_relpath(expname: str, ccdnum: int) -> str:
    """``truth/<expname>_<ccd>.ecsv`` (relative to the data root)."""
    return f"truth/{expname}_{ccd_tag(ccdnum)}.ecsv"


def write_truth(data_dir: Path, table: Table) -> Path:
    """Write an exposure's truth table (its ``meta`` must hold ``expname`` and ``ccdnum``).

    Parameters
    ----------
    data_dir : Path
        Data root.
    table : astropy.table.Table
        Truth from ``render_exposure``.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(data_dir) / truth_relpath(table.meta["expname"], int(table.meta["ccdnum"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    table.write(path, format="ascii.ecsv", overwrite=True)
    return path


def read_truth(data_dir: Path, expname: str, ccd: int) -> Table:
    """Read an exposure's truth table.

    Parameters
    ----------
    data_dir : Path
        Data root.
    expname : str
        Exposure name (e.g. ``c4d_230225_001500``).
    ccd : int
        CCD number.

    Returns
    -------
    astropy.table.Table
        Columns ``id``, ``kind`` (star, galaxy, transient, variable, moving), ``ra``, ``dec`` (deg),
        ``x``, ``y`` (0-based trimmed pixels through the true WCS), ``mag`` (AB; ``inf`` when the source
        has no flux in this exposure) and ``flux_e`` (electrons in this exposure after extinction,
        before the flat). ``meta`` holds ``fwhm_arcsec``, ``zp`` (AB mag of 1 e-), ``sky_e``
        (e-/pixel before the flat), ``true_wcs`` (FITS WCS cards, 1-based CRPIX, trimmed grid),
        ``mjd``, ``mjd_mid``, ``airmass``, ``cosmic_ray_pixels`` ([x, y] 0-based) and the full ``spec``.
    """
    return Table.read(Path(data_dir) / truth_relpath(expname, ccd), format="ascii.ecsv")


def write_night_json(data_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``truth/night.json`` (indented, keys sorted)."""
    path = Path(data_dir) / "truth" / "night.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return path


def read_night_json(data_dir: Path) -> dict[str, Any]:
    """Read ``truth/night.json``."""
    return json.loads((Path(data_dir) / "truth" / "night.json").read_text())
