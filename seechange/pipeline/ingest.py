"""Ingest: register a raw CCD exposure (or an already reduced image) as rows, ready for the next stage.

No Kafka here: the producer in ``producers/ingest.py`` turns the returned rows into events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy.orm import Session

from seechange.errors import BadInput
from seechange.imageio import ImageReadError, read_ccd
from seechange.models import Exposure, Provenance
from seechange.models.upsert import insert_or_get
from seechange.provenance import get_or_create_provenance
from seechange.spatial import healpix_index
from seechange.storage import md5sum, relative, resolve
from seechange.timestamps import epoch_ms

log = logging.getLogger(__name__)

REQUIRED_RAW_KEYS = ("INSTRUME", "FILTER", "EXPTIME", "MJD-OBS")


class IngestError(BadInput, ValueError):
    """The file cannot be ingested (unreadable, not FITS, missing headers, outside the data root)."""


@dataclass(frozen=True)
class RawInfo:
    """What ingest reads from a raw CCD header."""

    instrument: str
    origin_id: str
    section_id: str
    filter: str
    band: str
    mjd: float
    exp_time: float
    ra: float
    dec: float
    field: str | None
    airmass: float | None
    gain: float | None
    read_noise: float | None


def band_of(filter_name: str) -> str:
    """One-letter band from a filter string such as ``'r DECam SDSS c0002 6415.0 1480.0'``."""
    name = filter_name.strip()
    if not name:
        raise IngestError("empty FILTER header")
    return name.split()[0][0]


def _centre(header: fits.Header, data_shape: tuple[int, ...]) -> tuple[float, float]:
    """CCD centre (deg) from the header WCS when there is one, else from RA/DEC pointing cards."""
    if "CTYPE1" in header and "CRVAL1" in header:
        wcs = WCS(header, naxis=2)
        ny, nx = data_shape
        if "DATASEC" in header:
            from seechange.improc.sections import section_shape

            ny, nx = section_shape(str(header["DATASEC"]))
        ra, dec = wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
        return float(ra), float(dec)
    try:
        ra = Angle(str(header["RA"]), unit="hourangle" if ":" in str(header["RA"]) else "deg").deg
        dec = Angle(str(header["DEC"]), unit="deg").deg
    except (KeyError, ValueError) as exc:
        raise IngestError(f"no WCS and no usable RA/DEC cards: {exc}") from exc
    return float(ra), float(dec)


def read_raw_info(path: Path) -> RawInfo:
    """Validate a raw CCD FITS file and read what the Exposure row needs.

    Raises
    ------
    IngestError
        Unreadable or non-FITS file, no image data, or a missing required header card.
    """
    try:
        ccd = read_ccd(path)
    except (ImageReadError, OSError) as exc:
        raise IngestError(str(exc)) from exc
    header, shape = ccd.header, ccd.data.shape
    missing = [k for k in REQUIRED_RAW_KEYS if k not in header]
    if missing:
        raise IngestError(f"{path.name}: missing header card(s) {', '.join(missing)}")
    exp_time = float(header["EXPTIME"])
    mjd = float(header["MJD-OBS"])
    if not np.isfinite(mjd) or not np.isfinite(exp_time) or exp_time <= 0:
        raise IngestError(f"{path.name}: impossible MJD-OBS={mjd} or EXPTIME={exp_time}")
    section = header.get("CCDNUM", header.get("DETPOS"))
    if section is None:
        raise IngestError(f"{path.name}: missing header card CCDNUM (or DETPOS)")
    origin = header.get("EXPNUM", header.get("OBSID", path.stem.rsplit("_", 1)[0]))
    ra, dec = _centre(header, shape)
    gain = header.get("GAIN", header.get("GAINA"))
    rdnoise = header.get("RDNOISE", header.get("RDNOISEA"))
    return RawInfo(
        instrument=str(header["INSTRUME"]).strip(),
        origin_id=str(origin),
        section_id=str(section),
        filter=str(header["FILTER"]),
        band=band_of(str(header["FILTER"])),
        mjd=mjd,
        exp_time=exp_time,
        ra=ra,
        dec=dec,
        field=str(header["OBJECT"]).strip() if "OBJECT" in header else None,
        airmass=float(header["AIRMASS"]) if "AIRMASS" in header else None,
        gain=float(gain) if gain is not None else None,
        read_noise=float(rdnoise) if rdnoise is not None else None,
    )


def ingest_provenance(session: Session) -> Provenance:
    """The provenance of ingestion (no parameters, no upstreams)."""
    return get_or_create_provenance(session, "ingest", {}, [])


def input_file(data_root: Path, path: str | Path) -> Path:
    """The absolute path of an input file, which must exist inside the data root.

    Raises
    ------
    IngestError
        The path is outside the data root, or no file is there.
    """
    try:
        full = resolve(data_root, path)
    except ValueError as exc:
        raise IngestError(str(exc)) from exc
    if not full.is_file():
        raise IngestError(f"{path}: no such file under the data root")
    return full


def register_exposure(
    session: Session, data_root: Path, path: str | Path, *, info: RawInfo | None = None
) -> tuple[Exposure, bool]:
    """Register one CCD file as an :class:`Exposure` row (idempotent).

    Parameters
    ----------
    session : Session
        The caller's session; the caller commits.
    data_root : Path
        Data root; the file must lie inside it.
    path : str or Path
        The file, absolute or relative to the data root.
    info : RawInfo, optional
        What the row needs, when the caller has read it already (e.g. from a reduced image's header);
        default: `read_raw_info` of the file.

    Returns
    -------
    (Exposure, bool)
        The row and whether it was created now (False: it was already registered).

    Raises
    ------
    IngestError
        The file is outside the data root, missing or unreadable, or its exposure key is already registered
        from a different file.
    """
    full = input_file(data_root, path)
    if info is None:
        info = read_raw_info(full)
    prov = ingest_provenance(session)
    values: dict[str, Any] = {
        "instrument": info.instrument,
        "origin_id": info.origin_id,
        "section_id": info.section_id,
        "filepath": relative(data_root, full),
        "md5": md5sum(full),
        "mjd": info.mjd,
        "exp_time": info.exp_time,
        "filter": info.filter,
        "band": info.band,
        "ra": info.ra,
        "dec": info.dec,
        "field": info.field,
        "airmass": info.airmass,
        "gain": info.gain,
        "read_noise": info.read_noise,
        "ingested_at": datetime.now(UTC),
        "healpix": healpix_index(info.ra, info.dec),
        "provenance_id": prov.id,
    }
    exposure, created = insert_or_get(
        session, Exposure, values, conflict=("instrument", "origin_id", "section_id")
    )
    if not created and exposure.md5 != values["md5"]:
        raise IngestError(
            f"{path}: exposure {info.instrument}/{info.origin_id}/{info.section_id} is already "
            f"registered from a different file ({exposure.filepath})"
        )
    return exposure, created


def exposure_event(exposure: Exposure, *, produced_at_ms: int) -> dict[str, Any]:
    """The exposure-ready record for an Exposure row."""
    return {
        "exposure_id": exposure.id,
        "instrument": exposure.instrument,
        "section_id": exposure.section_id,
        "field": exposure.field or "",
        "band": exposure.band,
        "mjd": exposure.mjd,
        "raw_path": exposure.filepath,
        "provenance_id": exposure.provenance_id,
        "produced_at": produced_at_ms,
        "ingested_at": epoch_ms(exposure.ingested_at),
        "origin": "ingest",
    }
