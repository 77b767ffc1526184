"""Reduce stage: an Exposure row and its raw file in, an Image row and its files out (find before make)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.errors import BadInput
from seechange.imageio import ImageReadError, read_ccd, write_image_data
from seechange.improc.reduction import ReduceParams, reduce_exposure
from seechange.improc.sections import section_shape
from seechange.instruments import get_instrument
from seechange.models import Exposure, Image, Provenance
from seechange.models.upsert import insert_or_get
from seechange.pipeline.ingest import file_stem
from seechange.pipeline.products import image_columns, product_stem
from seechange.provenance import get_or_create_provenance
from seechange.spatial import tan_wcs
from seechange.storage import resolve

log = logging.getLogger(__name__)

PROCESS = "reduce"


class ReduceInputError(BadInput, ValueError):
    """The exposure cannot be reduced (missing or corrupt raw file, calibration or catalogue)."""


@dataclass
class ReduceResources:
    """Per-process caches of what every exposure of a CCD needs: calibration frames, reference catalogues."""

    data_root: Path
    _calib: dict[tuple[str, str], object] = field(default_factory=dict)
    _refcat: dict[tuple[int, int], Table] = field(default_factory=dict)

    def calibration(self, instrument: str, section_id: str) -> object:
        from seechange.improc.calibrate import load_calibration

        key = (instrument, section_id)
        if key not in self._calib:
            # the CCD's own folder, else multi-extension frames of every CCD in the instrument's folder
            shared = resolve(self.data_root, Path("calib") / instrument)
            folder = shared / section_id
            ccdnum = int(section_id) if section_id.isdigit() else None
            try:
                self._calib[key] = load_calibration(folder, ccdnum=ccdnum, shared_dir=shared)
            except (FileNotFoundError, ValueError, BadInput) as exc:
                raise ReduceInputError(
                    f"no usable calibration frames for {instrument} CCD {section_id}: {exc}"
                ) from exc
        return self._calib[key]

    def refcat(self, ra: float, dec: float) -> Table:
        from seechange.improc.astrometry import load_refcat

        key = (round(ra * 4), round(dec * 4))  # cache per 0.25 deg cell
        if key not in self._refcat:
            folder = resolve(self.data_root, "refcat")
            if not folder.is_dir():
                raise ReduceInputError(f"no reference catalogue folder {folder}")
            self._refcat[key] = load_refcat(folder, ra, dec, 0.6)
        return self._refcat[key]


def reduce_provenance(session: Session, exposure: Exposure, params: ReduceParams) -> Provenance:
    """Provenance of the reduction of ``exposure`` with ``params``."""
    upstream = session.get(Provenance, exposure.provenance_id)
    assert upstream is not None
    return get_or_create_provenance(session, PROCESS, params.critical(), [upstream])


def reduce_exposure_row(
    session: Session, resources: ReduceResources, exposure_id: int, *, params: ReduceParams
) -> tuple[Image, bool]:
    """Reduce one exposure unless its Image (same provenance) exists; return it and whether it is new.

    Raises
    ------
    ReduceInputError
        Unknown exposure, missing/corrupt raw file, missing calibration or catalogue.
    """
    exposure = session.get(Exposure, exposure_id)
    if exposure is None:
        raise ReduceInputError(f"exposure {exposure_id} is not in the database")
    prov = reduce_provenance(session, exposure, params)
    existing = session.scalars(
        select(Image).where(Image.exposure_id == exposure.id, Image.provenance_id == prov.id)
    ).one_or_none()
    if existing is not None:
        return existing, False
    raw_path = resolve(resources.data_root, exposure.filepath)
    try:
        ccd = read_ccd(raw_path, hdu=exposure.hdu)  # only this CCD's HDU is read (and decompressed)
    except (ImageReadError, OSError) as exc:
        raise ReduceInputError(f"raw file {exposure.filepath} unreadable: {exc}") from exc
    raw, header = ccd.data, normalised_header(ccd.header, exposure)
    calib = resources.calibration(exposure.instrument, exposure.section_id)
    refcat = resources.refcat(exposure.ra, exposure.dec)
    t0 = time.perf_counter()
    data = reduce_exposure(raw, header, calib, refcat, params=params, band=exposure.band)  # type: ignore[arg-type]
    stem = product_stem("reduced", prov.id, raw_stem(exposure))
    write_image_data(resolve(resources.data_root, stem), data, {"EXPID": exposure.id, "PROVID": prov.id})
    values = image_columns(
        data, filepath=stem, provenance_id=prov.id, field=exposure.field, section_id=exposure.section_id
    )
    values["exposure_id"] = exposure.id
    values["extra"] = json_safe(
        {k: v for k, v in (data.meta or {}).items() if isinstance(v, (int, float, str, dict, list))}
    )
    values["is_good"] = bool(data.meta.get("is_good", True)) if data.meta else True
    image, created = insert_or_get(session, Image, values, conflict=("exposure_id", "provenance_id"))
    log.info(
        'reduced exposure %d -> image %d in %.2f s (fwhm %.2f", zp %.3f, astrom rms %.3f")',
        exposure.id,
        image.id,
        time.perf_counter() - t0,
        image.fwhm_arcsec or float("nan"),
        image.zero_point or float("nan"),
        image.astrom_rms_arcsec or float("nan"),
    )
    return image, created


def raw_stem(exposure: Exposure) -> str:
    """Product name of an Exposure: the raw file's stem, plus the CCD for a multi-CCD file."""
    stem = file_stem(Path(exposure.filepath))
    return stem if exposure.hdu in (None, 0) else f"{stem}_{exposure.section_id}"


def normalised_header(header: fits.Header, exposure: Exposure) -> fits.Header:
    """The raw header with the values ingest validated written back in canonical form.

    ``MJD-OBS``, ``EXPTIME`` and ``AIRMASS`` as numbers (ingest accepted ``DATE-OBS`` for a missing
    ``MJD-OBS``, numeric strings, padded values); a TAN WCS from the row's centre and the instrument's pixel
    scale when the header has none (ingest accepts RA/DEC-only single-CCD files).
    """
    out = header.copy()
    out["MJD-OBS"] = exposure.mjd
    out["EXPTIME"] = exposure.exp_time
    if exposure.airmass is not None:
        out["AIRMASS"] = exposure.airmass
    elif "AIRMASS" in out:
        del out["AIRMASS"]
    if "CTYPE1" not in out or "CRVAL1" not in out:
        ny, nx = section_shape(str(out["DATASEC"])) if "DATASEC" in out else (out["NAXIS2"], out["NAXIS1"])
        scale = get_instrument(exposure.instrument).pixel_scale
        out.update(tan_wcs(exposure.ra, exposure.dec, nx, ny, scale).to_header())
        log.warning(
            'reduce: exposure %d has no header WCS; built a TAN WCS from RA/DEC at %.3f"/px',
            exposure.id,
            scale,
        )
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None: JSON columns never receive them."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def image_event(image: Image, *, produced_at_ms: int, ingested_at_ms: int) -> dict[str, object]:
    """The image-reduced record for an Image row."""
    return {
        "image_id": image.id,
        "exposure_id": image.exposure_id,
        "field": image.field or "",
        "band": image.band,
        "section_id": image.section_id or "",
        "mjd": image.mjd,
        "image_path": image.filepath,
        "provenance_id": image.provenance_id,
        "produced_at": produced_at_ms,
        "ingested_at": ingested_at_ms,
    }
