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

from seechange.errors import BadInput
from seechange.imageio import ImageReadError, read_ccd, read_ccd_headers, write_image_data
from seechange.improc.prereduced import load_prereduced
from seechange.improc.reduction import ReduceParams
from seechange.improc.types import ImageData
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
from seechange.storage import md5sum, relative, resolve

__all__ = [
    "CP_NAME_CODES",
    "PROCESS",
    "ReducedFiles",
    "ReducedHeaderInfo",
    "ReducedOutcome",
    "pair_cp_triplets",
    "psfex_beside",
    "read_reduced_info",
    "reduced_info",
    "register_reduced_file",
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
    psf: Path | None = None  #: a PSFEx model of the CCD found beside it (:func:`psfex_beside`)


@dataclass(frozen=True)
class ReducedHeaderInfo(RawInfo):
    """What the Exposure row needs (as for a raw file), read from a reduced image's header, and its shape."""

    shape: tuple[int, int] = (0, 0)


def psfex_beside(image: Path) -> Path | None:
    """The PSFEx model of an image when one lies beside it (its folder or a ``psfex/`` folder in it), else None.

    Names tried, for ``<base>.<CCD>.fits`` (or ``<stem>.fits``): ``<stem>-psfex.fits``, ``<base>-<CCD>-psfex.fits``
    (the Legacy Surveys' per-CCD files), ``<base>-psfex.fits`` (their per-exposure files, one row per CCD)
    and ``<stem>.psf`` (PSFEx's own output name).
    """
    stem = file_stem(image)
    base, _, ccd = stem.partition(".")
    names = [f"{stem}-psfex.fits", f"{stem}.psf"]
    if ccd:
        names[1:1] = [f"{base}-{ccd}-psfex.fits", f"{base}-psfex.fits"]
    for folder in (image.parent, image.parent / "psfex"):
        for n in names:
            if (folder / n).is_file():
                return folder / n
    return None


def pair_cp_triplets(paths: list[Path]) -> list[ReducedFiles]:
    """Group Community Pipeline file names into image / weight / mask triplets (with a PSFEx model if any).

    An image named ``*_ooi_*`` gets the ``*_oow_*`` and ``*_ood_*`` files beside it (same folder, same name
    otherwise) when they exist. Weight and mask files given in ``paths`` are consumed by their image (and
    dropped if their image is not in ``paths``, with a warning); any other file is an image on its own.
    Every image also gets the PSFEx model beside it when there is one (:func:`psfex_beside`).

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
            out.append(
                ReducedFiles(
                    p,
                    weight if weight.exists() else None,
                    mask if mask.exists() else None,
                    psfex_beside(p),
                )
            )
        else:
            out.append(ReducedFiles(p, psf=psfex_beside(p)))
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


def _headers(full: Path) -> list[tuple[int, fits.Header, tuple[int, int]]]:
    """Every 2-D image HDU of a file (index, merged header, shape), no pixels read."""
    try:
        found = read_ccd_headers(full)
    except (ImageReadError, OSError) as exc:
        raise IngestError(str(exc)) from exc
    if not found:
        raise IngestError(f"{full.name}: no 2-D image HDU")
    return found


def ccd_label(header: fits.Header, index: int) -> str:
    """Name of one CCD of a file: ``DETPOS``, else ``EXTNAME``, else ``CCDNUM``, else ``HDU<n>``."""
    for key in ("DETPOS", "EXTNAME", "CCDNUM"):
        if key in header and str(header[key]).strip():
            return str(header[key]).strip()
    return f"HDU{index}"


def read_reduced_info(full: Path) -> ReducedHeaderInfo:
    """Validate a single-CCD reduced image file and read what the Exposure row needs.

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
    return reduced_info(header, shape, name=full.name, full=full)


def reduced_info(
    header: fits.Header, shape: tuple[int, int], *, name: str, full: Path, hdu: int | None = None
) -> ReducedHeaderInfo:
    """What the Exposure row of one reduced CCD needs, from its merged header (checked).

    Parameters
    ----------
    header : astropy.io.fits.Header
        Merged header of the CCD.
    shape : (int, int)
        Pixels (ny, nx).
    name : str
        How errors name the CCD (file name, plus the CCD for a multi-extension file).
    full : Path
        The file (its stem is the origin id when there is no ``EXPNUM``).
    hdu : int, optional
        HDU index of the CCD in a multi-extension file (None: the file's only image).

    Raises
    ------
    IngestError
        No celestial WCS, or a missing / impossible FILTER, MJD-OBS or EXPTIME card.
    """
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
    default_section = "NA" if hdu is None else ccd_label(header, hdu)
    section = header.get("CCDNUM", header.get("DETPOS", default_section))
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
        hdu=hdu,
        ccd_name=ccd_label(header, hdu if hdu is not None else 0),
        shape=shape,
    )


def _float_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _match_hdu(
    companion: list[tuple[int, fits.Header, tuple[int, int]]],
    header: fits.Header,
    position: int,
    n_images: int,
) -> tuple[int, tuple[int, int]] | None:
    """The companion HDU of one image CCD: same ``CCDNUM``, else same ``EXTNAME``, else same position.

    Position is used only when neither card names the CCD and both files hold as many image HDUs.
    """
    for key in ("CCDNUM", "EXTNAME"):
        if key in header:
            want = str(header[key]).strip().upper()
            hits = [(i, shape) for i, h, shape in companion if str(h.get(key, "")).strip().upper() == want]
            if hits:
                return hits[0]
            if any(key in h for _, h, _ in companion):
                return None
    if len(companion) == n_images:
        return companion[position][0], companion[position][2]
    return None


def _companion_hdus(
    data_root: Path,
    path: str | Path | None,
    kind: str,
    images: list[tuple[int, fits.Header, tuple[int, int]]],
) -> tuple[Path | None, list[int | None | IngestError]]:
    """Resolve a weight or mask file and find, for each image CCD, its HDU (checked to have the same shape).

    Returns the file (None without one) and per image CCD: the HDU index (None: no file or a single-CCD
    file, whose first image is used), or the :class:`IngestError` refusing that CCD.
    """
    if path is None:
        return None, [None] * len(images)
    full = input_file(data_root, path)
    companion = _headers(full)
    single = len(images) == 1
    if single and len(companion) != 1:
        raise IngestError(f"{full.name}: {len(companion)} image HDUs for a single-CCD image")
    out: list[int | None | IngestError] = []
    for n, (index, header, shape) in enumerate(images):
        hit = (companion[0][0], companion[0][2]) if single else _match_hdu(companion, header, n, len(images))
        label = ccd_label(header, index)
        if hit is None:
            out.append(
                IngestError(f"{full.name}: no {kind} HDU for CCD {label} (by CCDNUM, EXTNAME or position)")
            )
        elif hit[1] != shape:
            out.append(
                IngestError(
                    f"{full.name} CCD {label}: {kind} shape {hit[1]} differs from the image's {shape}"
                )
            )
        else:
            out.append(None if single else hit[0])
    return full, out


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


@dataclass(frozen=True)
class ReducedOutcome:
    """What ingest made of one CCD of a reduced image file: its rows, or the refusal."""

    label: str  #: CCD name (``DETPOS``, ``EXTNAME``, ``CCDNUM`` or ``HDU<n>``)
    exposure: Exposure | None = None
    image: Image | None = None
    created: bool = False
    error: BadInput | None = None


def register_reduced_file(
    session: Session, data_root: Path, files: ReducedFiles, *, params: ReduceParams
) -> list[ReducedOutcome]:
    """Register every CCD of a reduced image file (single- or multi-extension, compressed or not).

    Each CCD becomes one Exposure and one Image (see :func:`register_reduced_image`), in its own savepoint:
    a refused CCD leaves no row (and no file) behind and the other CCDs go on. The weight and mask CCDs are
    matched to the image's by ``CCDNUM`` (else ``EXTNAME``, else position).

    Parameters
    ----------
    session : Session
        The caller's session; the caller commits.
    data_root : Path
        Data root; every file must lie inside it.
    files : ReducedFiles
        Image and optional weight and mask files.
    params : ReduceParams
        Loading parameters (they feed the provenance).

    Returns
    -------
    list of ReducedOutcome
        One per image CCD, in file order.

    Raises
    ------
    IngestError
        A file as a whole is unusable (outside the root, missing, not FITS, no image, a single-CCD
        companion that does not fit).
    """
    full = input_file(data_root, files.image)
    images = _headers(full)
    weight, weight_hdus = _companion_hdus(data_root, files.weight, "weight", images)
    mask, mask_hdus = _companion_hdus(data_root, files.mask, "mask", images)
    psf = input_file(data_root, files.psf) if files.psf is not None else None
    digest = md5sum(full)
    single = len(images) == 1
    out: list[ReducedOutcome] = []
    for (index, header, shape), w_hdu, m_hdu in zip(images, weight_hdus, mask_hdus, strict=True):
        label = ccd_label(header, index)
        name = full.name if single else f"{full.name} CCD {label}"
        try:
            for companion in (w_hdu, m_hdu):
                if isinstance(companion, IngestError):
                    raise companion
            info = reduced_info(header, shape, name=name, full=full, hdu=None if single else index)
            exposure, image, created = register_reduced_image(
                session,
                data_root,
                full,
                weight_path=weight,
                mask_path=mask,
                psf_path=psf,
                params=params,
                info=info,
                md5=digest,
                weight_hdu=None if isinstance(w_hdu, IngestError) else w_hdu,
                mask_hdu=None if isinstance(m_hdu, IngestError) else m_hdu,
            )
        except BadInput as exc:
            out.append(ReducedOutcome(label, error=exc))
            continue
        out.append(ReducedOutcome(label, exposure, image, created))
    return out


def register_reduced_image(
    session: Session,
    data_root: Path,
    image_path: str | Path,
    *,
    weight_path: str | Path | None = None,
    mask_path: str | Path | None = None,
    psf_path: str | Path | None = None,
    params: ReduceParams,
    info: ReducedHeaderInfo | None = None,
    md5: str | None = None,
    weight_hdu: int | None = None,
    mask_hdu: int | None = None,
) -> tuple[Exposure, Image, bool]:
    """Register one already-reduced CCD as an Exposure and an Image, writing the Image's files once.

    Parameters
    ----------
    session : Session
        The caller's session; the caller commits. The rows are made in a savepoint: a refusal leaves none.
    data_root : Path
        Data root; every file must lie inside it.
    image_path : str or Path
        The reduced image (absolute or relative to the data root), in ADU unless ``BUNIT`` says electrons.
    weight_path, mask_path : str or Path, optional
        Inverse variance (image units^-2) and integer mask (non-zero = bad) of the same shape.
    psf_path : str or Path, optional
        PSFEx model of the CCD (e.g. :func:`psfex_beside`): the PSF then comes from it, not from stars.
    params : ReduceParams
        Parameters of `load_prereduced` (background, detection, PSF, matching); they feed the provenance.
    info : ReducedHeaderInfo, optional
        The CCD's checked header values (with its HDU for a multi-extension file); default: the file's
        only image (:func:`read_reduced_info`).
    md5 : str, optional
        Hex MD5 of the image file, when the caller has it.
    weight_hdu, mask_hdu : int, optional
        The CCD's HDU in a multi-extension weight / mask file.

    Returns
    -------
    (Exposure, Image, bool)
        The rows and whether the Image was made now (False: it existed and nothing was written).

    Raises
    ------
    IngestError
        A file outside the data root, missing, not FITS, not 2-D, without WCS or required header cards; no
        zero point (no ``MAGZERO``/``MAGZPT``/``ZP`` card and none measured against ``<root>/refcat``); or
        the exposure key already registered from a different file. The message is one line.
    """
    full = input_file(data_root, image_path)
    if info is None:
        info = read_reduced_info(full)
        weight = _single_companion(data_root, weight_path, "weight", info.shape)
        mask = _single_companion(data_root, mask_path, "mask", info.shape)
    else:
        weight = input_file(data_root, weight_path) if weight_path is not None else None
        mask = input_file(data_root, mask_path) if mask_path is not None else None
    psf = input_file(data_root, psf_path) if psf_path is not None else None
    name = full.name if info.hdu is None else f"{full.name} CCD {info.ccd_name}"
    with session.begin_nested():
        exposure, _ = register_exposure(session, data_root, image_path, info=info, md5=md5)
        prov = reduced_provenance(session, params)
        existing = session.scalars(
            select(Image).where(Image.exposure_id == exposure.id, Image.provenance_id == prov.id)
        ).one_or_none()
        if existing is not None:
            return exposure, existing, False
        data = _load(data_root, full, name, info, weight, mask, weight_hdu, mask_hdu, params, psf)
        base = file_stem(full)
        stem = product_stem("reduced", prov.id, base if info.hdu is None else f"{base}_{info.section_id}")
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
            source_hdu=info.hdu,
            source_weight=relative(data_root, weight) if weight else None,
            source_mask=relative(data_root, mask) if mask else None,
            source_psf=relative(data_root, psf) if psf else None,
        )
        values.update(exposure_id=exposure.id, extra=extra, is_good=bool(np.isfinite(data.fwhm_px)))
        image, created = insert_or_get(session, Image, values, conflict=("exposure_id", "provenance_id"))
    log.info(
        'ingest-reduced: %s -> exposure %d, image %d (fwhm %.2f", zp %.3f from %s)',
        name,
        exposure.id,
        image.id,
        image.fwhm_arcsec or float("nan"),
        image.zero_point,
        extra.get("zp_source"),
    )
    return exposure, image, created


def _single_companion(
    data_root: Path, path: str | Path | None, kind: str, shape: tuple[int, int]
) -> Path | None:
    """Resolve and check the weight or mask of a single-CCD image (one 2-D HDU of the image's shape)."""
    if path is None:
        return None
    full = input_file(data_root, path)
    _, other = _read_header(full)
    if other != shape:
        raise IngestError(f"{full.name}: {kind} shape {other} differs from the image's {shape}")
    return full


def _load(
    data_root: Path,
    full: Path,
    name: str,
    info: ReducedHeaderInfo,
    weight: Path | None,
    mask: Path | None,
    weight_hdu: int | None,
    mask_hdu: int | None,
    params: ReduceParams,
    psf: Path | None = None,
) -> ImageData:
    """Load one CCD with :func:`load_prereduced`; refuse it (one line) when it gets no zero point."""
    refcat = _refcat(data_root, info.ra, info.dec, info.shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            warnings.filterwarnings("ignore", "load_prereduced: no zero point", RuntimeWarning)
            codes = CP_MASK_CODES if mask is not None and CP_MASK in mask.name else None
            data = load_prereduced(
                full,
                hdu=info.hdu,
                weight_path=weight,
                weight_hdu=weight_hdu,
                mask_path=mask,
                mask_hdu=mask_hdu,
                psf_path=psf,
                refcat=refcat,
                params=params,
                mask_codes=codes,
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise IngestError(f"{name}: cannot load the image: {' '.join(str(exc).split())}") from exc
    if not np.isfinite(data.zp):
        why = (
            "no <data root>/refcat catalogue covers it"
            if refcat is None
            else f"{int((data.meta or {}).get('n_stars', 0))} stars matched to <data root>/refcat, too few"
        )
        raise IngestError(f"{name}: no zero point: no MAGZERO/MAGZPT/ZP card and {why}")
    return data
