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
from astropy.io import fits
from sqlalchemy.orm import Session

from seechange.errors import BadInput, ImpossibleValue, UnusableImage
from seechange.imageio import ImageReadError, read_ccd_headers
from seechange.instruments import get_instrument, instrument_of_header
from seechange.models import Exposure, Provenance
from seechange.models.upsert import insert_or_get
from seechange.pipeline.ingest_checks import (
    check_sections,
    exposure_time,
    observation_mjd,
    optional_float,
    pointing,
    wcs_centre,
)
from seechange.provenance import get_or_create_provenance
from seechange.spatial import healpix_index
from seechange.storage import md5sum, relative, resolve
from seechange.timestamps import epoch_ms

log = logging.getLogger(__name__)


class IngestError(BadInput, ValueError):
    """The file cannot be ingested (unreadable, not FITS, missing headers, outside the data root)."""


@dataclass(frozen=True)
class RawInfo:
    """What ingest reads from one raw CCD's (merged) header."""

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
    hdu: int | None = None  #: index of the CCD's HDU in the file (None: the file's only image)
    ccd_name: str | None = None  #: e.g. DECam ``DETPOS`` ``'N4'``


@dataclass(frozen=True)
class CcdOutcome:
    """What ingest made of one image HDU of a raw file: a :class:`RawInfo`, a skip or a refusal."""

    hdu: int
    label: str  #: CCD name, else EXTNAME, else ``HDU<n>``
    info: RawInfo | None = None
    skipped: str | None = None
    error: BadInput | None = None


def band_of(filter_name: str, instrument: str = "DECam") -> str:
    """Band of a FILTER value for an instrument (e.g. ``'r DECam SDSS c0002 6415.0 1480.0'`` -> ``'r'``).

    Raises
    ------
    UnknownFilter
        The instrument does not know the filter.
    """
    return get_instrument(instrument).band(filter_name)


FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fz")
"""File-name endings of FITS files (plain, tile-compressed, gzipped)."""


def file_stem(path: Path) -> str:
    """File name without its FITS suffix(es): ``a/b/c4d_x_ooi_i_v1.fits.fz`` -> ``c4d_x_ooi_i_v1``."""
    name = path.name
    for suffix in FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def raw_info(
    header: fits.Header, shape: tuple[int, ...], *, name: str, hdu: int | None, single: bool
) -> RawInfo:
    """Validate one CCD from its merged header and pixel shape, and read what its Exposure row needs.

    No pixel is read here: a 62-CCD ``.fits.fz`` is registered in well under a second instead of the ~30 s
    its decompression takes. The pixels are checked by reduce, which reads them anyway: NaN- or
    constant-filled amplifiers are flagged there, a CCD with no live amplifier is refused there (dead-lettered
    with one line, as here).

    Parameters
    ----------
    header : astropy.io.fits.Header
        Merged header (primary + CCD extension).
    shape : tuple of int
        The CCD's raw pixel array shape ``(ny, nx)``.
    name : str
        File name (for the origin id when there is no EXPNUM).
    hdu : int or None
        HDU index recorded on the row.
    single : bool
        The file holds one CCD only (its RA/DEC cards then describe it, enough to build a WCS).

    Raises
    ------
    ImpossibleValue, UnusableImage
        One line naming the card (see :mod:`seechange.pipeline.ingest_checks`).
    """
    if len(shape) != 2:
        raise UnusableImage(f"image has {len(shape)} dimensions, not 2")
    inst = instrument_of_header(header)
    number, cname = inst.identify_ccd(header)
    if number is None and cname is None:
        raise ImpossibleValue(f"missing header card {inst.ccdnum_key} (or {inst.ccdname_key})")
    section = str(number) if number is not None else str(cname)
    exp_time = exposure_time(header, inst.exptime_key)
    mjd = observation_mjd(header, inst.mjd_key, inst.date_key)
    if inst.filter_key not in header:
        raise ImpossibleValue(f"missing header card {inst.filter_key}")
    filt = str(header[inst.filter_key]).strip()
    band = inst.band(filt)
    amps = check_sections(header, shape, inst)
    aim = pointing(header, inst)
    centre = wcs_centre(header, shape)
    if centre is None:
        if aim is None or not single:
            raise ImpossibleValue(
                "no WCS (CTYPE1/2, CRVAL1/2, CRPIX1/2, CD) and "
                + (
                    "no RA/DEC cards to build one"
                    if aim is None
                    else "RA/DEC of a multi-CCD file is the pointing"
                )
            )
        centre = aim
    gains = [optional_float(header, inst.gain_card(a)) for a in amps]
    noises = [optional_float(header, inst.read_noise_card(a)) for a in amps]
    for a, g in zip(amps, gains):
        if g is not None and g <= 0:
            raise ImpossibleValue(f"{inst.gain_card(a)} = {header[inst.gain_card(a)]!r} must be > 0 e-/ADU")
    gain = _mean_or(gains, optional_float(header, "GAIN"))
    read_noise = _mean_or(noises, optional_float(header, "RDNOISE"))
    origin = next((header[k] for k in inst.expnum_keys if k in header and str(header[k]).strip()), None)
    airmass = optional_float(header, "AIRMASS")
    if "AIRMASS" in header and airmass is None:
        log.warning(
            "ingest: %s CCD %s: AIRMASS = %r is not a number; stored as unknown",
            name,
            section,
            header["AIRMASS"],
        )
    obj = str(header["OBJECT"]).strip() if "OBJECT" in header else ""
    return RawInfo(
        instrument=inst.name,
        origin_id=str(origin).strip() if origin is not None else file_stem(Path(name)).removesuffix("_ori"),
        section_id=section,
        filter=filt,
        band=band,
        mjd=mjd,
        exp_time=exp_time,
        ra=centre[0],
        dec=centre[1],
        field=obj or None,
        airmass=airmass,
        gain=gain,
        read_noise=read_noise,
        hdu=hdu,
        ccd_name=cname,
    )


def _mean_or(values: list[float | None], fallback: float | None) -> float | None:
    """Mean of the known per-amplifier values, else ``fallback``."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else fallback


def scan_raw_file(path: Path, *, skip: frozenset[str] | None = None) -> list[CcdOutcome]:
    """Every image HDU of a raw file (plain, multi-extension or ``.fits.fz``) as one outcome each.

    Nothing is dropped without a word: each 2-D image HDU becomes a :class:`RawInfo`, a skip (guide/focus
    CCD, or a CCD in the skip list; logged) or a refusal (the error, one line naming file, CCD and card).
    Headers only (:func:`~seechange.imageio.read_ccd_headers`, which also refuses a truncated file): the
    pixels are read, once, by reduce.

    Parameters
    ----------
    path : Path
        The file.
    skip : frozenset of str, optional
        CCD names to skip; default: the instrument's own skip list.

    Raises
    ------
    IngestError
        The file as a whole is unreadable, truncated, or holds no 2-D image.
    """
    try:
        found = read_ccd_headers(path)
    except (ImageReadError, OSError) as exc:
        raise IngestError(str(exc)) from exc
    if not found:
        raise IngestError(f"{path.name}: no 2-D image HDU")
    single = len(found) == 1
    return [_outcome(path, index, header, shape, single, skip) for index, header, shape in found]


def _outcome(
    path: Path,
    index: int,
    header: fits.Header,
    shape: tuple[int, int],
    single: bool,
    skip: frozenset[str] | None,
) -> CcdOutcome:
    """What ingest makes of one CCD (HDU ``index``, merged header, shape) of ``path``."""
    label = _label(header, index)
    try:
        inst = instrument_of_header(header)
        reason = inst.skip_reason(inst.identify_ccd(header)[1], skip)
        if reason is not None:
            log.info("ingest: %s CCD %s skipped: %s", path.name, label, reason)
            return CcdOutcome(index, label, skipped=reason)
        info = raw_info(header, shape, name=path.name, hdu=index, single=single)
    except BadInput as exc:
        err = IngestError(f"{path.name} CCD {label}: {one_line_of(exc)}")
        return CcdOutcome(index, label, error=err)
    return CcdOutcome(index, label, info=info)


def _label(header: fits.Header, index: int) -> str:
    for key in ("DETPOS", "EXTNAME", "CCDNUM"):
        if key in header and str(header[key]).strip():
            return str(header[key]).strip()
    return f"HDU{index}"


def one_line_of(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_raw_info(path: Path) -> RawInfo:
    """Validate a single-CCD raw file and read what its Exposure row needs.

    Raises
    ------
    IngestError
        Unreadable, not exactly one usable CCD, or a failed check (one line naming the card).
    """
    outcomes = scan_raw_file(path, skip=frozenset())
    if len(outcomes) != 1:
        raise IngestError(f"{path.name}: {len(outcomes)} CCDs; use scan_raw_file for a multi-CCD file")
    one = outcomes[0]
    if one.error is not None:
        raise one.error
    assert one.info is not None
    return one.info


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
    session: Session,
    data_root: Path,
    path: str | Path,
    *,
    info: RawInfo | None = None,
    md5: str | None = None,
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
    md5 : str, optional
        Hex MD5 of the file when the caller has it (one per multi-CCD file); default: computed.

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
        "md5": md5 or md5sum(full),
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
        "hdu": info.hdu,
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
