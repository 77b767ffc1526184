"""Ingest an image that is already reduced (e.g. a NOIRLab Community Pipeline image / weight / mask triplet).

The file enters as an :class:`Exposure` (same unique key as a raw CCD, so a second call is a no-op) and an
:class:`Image` written straight away, keeping the header WCS and the header zero point when there is one;
the producer then emits ``image-reduced`` and the reduce stage is skipped. No Kafka here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.imageio import ImageReadError, read_ccd, write_image_data
from seechange.improc.prereduced import load_prereduced
from seechange.improc.reduction import ReduceParams
from seechange.instruments import DECAM, get_instrument
from seechange.instruments.decam import CP_MASK_CODES
from seechange.models import Exposure, Image, Provenance
from seechange.models.upsert import insert_or_get
from seechange.pipeline.ingest import (
    IngestError,
    RawInfo,
    band_of,
    file_stem,
    ingest_provenance,
    input_file,
    register_exposure,
)
from seechange.pipeline.products import image_columns, product_stem
from seechange.provenance import get_or_create_provenance
from seechange.storage import relative, resolve

__all__ = [
    "CP_NAME_CODES",
    "PROCESS",
    "ReducedFiles",
    "ReducedHeaderInfo",
    "pair_cp_triplets",
    "read_reduced_info",
    "register_reduced_image",
]

log = logging.getLogger(__name__)

PROCESS = "ingest-reduced"

#: Community Pipeline product codes in file names: image, weight (inverse variance), data-quality mask.
CP_IMAGE, CP_WEIGHT, CP_MASK = "_ooi_", "_oow_", "_ood_"
CP_NAME_CODES = (CP_IMAGE, CP_WEIGHT, CP_MASK)


@dataclass(frozen=True)
class ReducedFiles:
    """One reduced image and its optional companions (paths as given: absolute or data-root relative)."""

    image: Path
    weight: Path | None = None
    mask: Path | None = None


@dataclass(frozen=True)
class ReducedHeaderInfo(RawInfo):
    """What the Exposure row needs (as for a raw file), read from a reduced image's header, and its shape."""

    shape: tuple[int, int] = (0, 0)


def pair_cp_triplets(paths: list[Path]) -> list[ReducedFiles]:
    """Group Community Pipeline file names into image / weight / mask triplets.

    An image named ``*_ooi_*`` gets the ``*_oow_*`` and ``*_ood_*`` files beside it (same folder, same name
    otherwise) when they exist. Weight and mask files given in ``paths`` are consumed by their image (and
    dropped if their image is not in ``paths``, with a warning); any other file is an image on its own.

    Parameters
    ----------
    paths : list of Path
        Files as given on the command line.

    Returns
    -------
    list of ReducedFiles
        In the order of the images in ``paths``.
    """
    out: list[ReducedFiles] = []
    images = {Path(p).resolve() for p in paths if CP_IMAGE in Path(p).name}
    for p in (Path(q) for q in paths):
        name = p.name
        if CP_WEIGHT in name or CP_MASK in name:
            code = CP_WEIGHT if CP_WEIGHT in name else CP_MASK
            if (p.parent / name.replace(code, CP_IMAGE)).resolve() not in images:
                log.warning("ingest-reduced: %s has no %s image beside it in the list; skipped", p, CP_IMAGE)
            continue
        if CP_IMAGE in name:
            weight = p.parent / name.replace(CP_IMAGE, CP_WEIGHT)
            mask = p.parent / name.replace(CP_IMAGE, CP_MASK)
            out.append(ReducedFiles(p, weight if weight.exists() else None, mask if mask.exists() else None))
        else:
            out.append(ReducedFiles(p))
    return out


def _instrument(header: fits.Header, name: str) -> str:
    """``INSTRUME``, else DECam when the header or name says so (CP ``c4d_`` names, ``FPA='DECAM_*'``)."""
    if "INSTRUME" in header and str(header["INSTRUME"]).strip():
        return get_instrument(str(header["INSTRUME"])).name
    hints = (str(header.get("FPA", "")), str(header.get("EXP_BN", "")), name)
    if any(h.upper().startswith("DECAM") or h.startswith("c4d_") for h in hints):
        return DECAM.name
    raise IngestError(f"{name}: missing header card INSTRUME")


def _read_header(full: Path) -> tuple[fits.Header, tuple[int, int]]:
    """Header of the single 2-D image HDU (primary cards inherited), and its shape (ny, nx)."""
    try:
        ccd = read_ccd(full, unique=True)
    except (ImageReadError, OSError) as exc:
        raise IngestError(str(exc)) from exc
    ny, nx = ccd.data.shape
    return ccd.header, (int(ny), int(nx))


def read_reduced_info(full: Path) -> ReducedHeaderInfo:
    """Validate a reduced image file and read what the Exposure row needs.

    Parameters
    ----------
    full : Path
        Absolute path of the image.

    Raises
    ------
    IngestError
        Unreadable or non-FITS file, not exactly one 2-D image, no celestial WCS, or a missing / impossible
        FILTER, MJD-OBS or EXPTIME card.
    """
    header, shape = _read_header(full)
    name = full.name
    missing = [k for k in ("FILTER", "MJD-OBS", "EXPTIME") if k not in header]
    if missing:
        raise IngestError(f"{name}: missing header card(s) {', '.join(missing)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
    except Exception as exc:  # astropy raises many kinds on broken WCS cards
        raise IngestError(f"{name}: unusable WCS: {' '.join(str(exc).split())}") from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise IngestError(f"{name}: no celestial WCS in the header (CTYPE1/2, CRVAL, CRPIX, CD or PC)")
    try:
        ra, dec = (float(v) for v in wcs.all_pix2world([[(shape[1] - 1) / 2, (shape[0] - 1) / 2]], 0)[0])
    except Exception as exc:
        raise IngestError(f"{name}: unusable WCS: {' '.join(str(exc).split())}") from exc
    if not (np.isfinite(ra) and np.isfinite(dec)):
        raise IngestError(f"{name}: the header WCS gives no finite sky position for the image centre")
    try:
        mjd, exp_time = float(header["MJD-OBS"]), float(header["EXPTIME"])
    except (TypeError, ValueError) as exc:
        raise IngestError(f"{name}: MJD-OBS / EXPTIME not numbers: {exc}") from exc
    if not (np.isfinite(mjd) and np.isfinite(exp_time)) or exp_time <= 0:
        raise IngestError(f"{name}: impossible MJD-OBS={mjd} or EXPTIME={exp_time}")
    section = header.get("CCDNUM", header.get("DETPOS", "NA"))
    origin = header.get("EXPNUM", file_stem(full))
    gain = header.get("GAIN")
    if gain is None and "GAINA" in header and "GAINB" in header:
        gain = (float(header["GAINA"]) + float(header["GAINB"])) / 2.0
    rdnoise = header.get("RDNOISE", header.get("RDNOISEA"))
    instrument = _instrument(header, name)
    return ReducedHeaderInfo(
        instrument=instrument,
        origin_id=str(origin).strip(),
        section_id=str(section).strip(),
        filter=str(header["FILTER"]),
        band=band_of(str(header["FILTER"]), instrument),
        mjd=mjd,
        exp_time=exp_time,
        ra=ra,
        dec=dec,
        field=(str(header["OBJECT"]).strip() or None) if "OBJECT" in header else None,
        airmass=_float_or_none(header.get("AIRMASS")),
        gain=_float_or_none(gain),
        read_noise=_float_or_none(rdnoise),
        shape=shape,
    )


def _float_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _companion(data_root: Path, path: str | Path | None, kind: str, shape: tuple[int, int]) -> Path | None:
    """Resolve and check a weight or mask file (inside the root, one 2-D HDU of the image's shape)."""
    if path is None:
        return None
    full = input_file(data_root, path)
    _, other = _read_header(full)
    if other != shape:
        raise IngestError(f"{full.name}: {kind} shape {other} differs from the image's {shape}")
    return full


def _refcat(data_root: Path, ra: float, dec: float, shape: tuple[int, int]) -> Table | None:
    """Reference stars around the image from ``<root>/refcat`` when that folder has catalogues, else None."""
    from seechange.improc.astrometry import load_refcat

    folder = data_root / "refcat"
    if not folder.is_dir() or not any(folder.glob("*.ecsv")):
        return None
    radius = 0.5 * float(np.hypot(*shape)) * 0.3 / 3600.0 + 0.02  # half diagonal at <= 0.3"/px, + margin
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "no stars within": handled as an empty table
        table = load_refcat(folder, ra, dec, radius)
    return table if len(table) else None


def reduced_provenance(session: Session, params: ReduceParams) -> Provenance:
    """Provenance of loading reduced images with ``params`` (upstream: the ingest provenance)."""
    return get_or_create_provenance(session, PROCESS, params.critical(), [ingest_provenance(session)])


def register_reduced_image(
    session: Session,
    data_root: Path,
    image_path: str | Path,
    *,
    weight_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    params: ReduceParams,
) -> tuple[Exposure, Image, bool]:
    """Register an already-reduced image as an Exposure and an Image, writing the Image's files once.

    Parameters
    ----------
    session : Session
        The caller's session; the caller commits.
    data_root : Path
        Data root; every file must lie inside it.
    image_path : str or Path
        The reduced image (absolute or relative to the data root), in ADU unless ``BUNIT`` says electrons.
    weight_path, mask_path : str or Path, optional
        Inverse variance (image units^-2) and integer mask (non-zero = bad) of the same shape.
    params : ReduceParams
        Parameters of `load_prereduced` (background, detection, PSF, matching); they feed the provenance.

    Returns
    -------
    (Exposure, Image, bool)
        The rows and whether the Image was made now (False: it existed and nothing was written).

    Raises
    ------
    IngestError
        A file outside the data root, missing, not FITS, not 2-D, without WCS or required header cards;
        or the exposure key already registered from a different file. The message is one line.
    """
    full = input_file(data_root, image_path)
    info = read_reduced_info(full)
    weight = _companion(data_root, weight_path, "weight", info.shape)
    mask = _companion(data_root, mask_path, "mask", info.shape)
    exposure, _ = register_exposure(session, data_root, image_path, info=info)
    prov = reduced_provenance(session, params)
    existing = session.scalars(
        select(Image).where(Image.exposure_id == exposure.id, Image.provenance_id == prov.id)
    ).one_or_none()
    if existing is not None:
        return exposure, existing, False
    refcat = _refcat(data_root, info.ra, info.dec, info.shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            codes = CP_MASK_CODES if mask is not None and CP_MASK in mask.name else None
            data = load_prereduced(
                full, weight_path=weight, mask_path=mask, refcat=refcat, params=params, mask_codes=codes
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise IngestError(f"{full.name}: cannot load the image: {' '.join(str(exc).split())}") from exc
    stem = product_stem("reduced", prov.id, file_stem(full))
    write_image_data(resolve(data_root, stem), data, {"EXPID": exposure.id, "PROVID": prov.id})
    values = image_columns(
        data, filepath=stem, provenance_id=prov.id, field=exposure.field, section_id=exposure.section_id
    )
    extra: dict[str, Any] = {
        k: v
        for k, v in (data.meta or {}).items()
        if isinstance(v, (int, str)) or (isinstance(v, float) and np.isfinite(v))
    }
    extra.update(
        source_image=exposure.filepath,
        source_weight=relative(data_root, weight) if weight else None,
        source_mask=relative(data_root, mask) if mask else None,
    )
    values.update(exposure_id=exposure.id, extra=extra, is_good=bool(np.isfinite(data.fwhm_px)))
    image, created = insert_or_get(session, Image, values, conflict=("exposure_id", "provenance_id"))
    log.info(
        'ingest-reduced: %s -> exposure %d, image %d (fwhm %.2f", zp %s from %s)',
        exposure.filepath,
        exposure.id,
        image.id,
        image.fwhm_arcsec or float("nan"),
        f"{image.zero_point:.3f}" if image.zero_point is not None else "none",
        extra.get("zp_source"),
    )
    return exposure, image, created
