"""Reduce stage: an Exposure row and its raw file in, an Image row and its files out (find before make)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from astropy.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.errors import BadInput
from seechange.imageio import ImageReadError, read_ccd, write_image_data
from seechange.improc.reduction import ReduceParams, reduce_exposure
from seechange.models import Exposure, Image, Provenance
from seechange.models.upsert import insert_or_get
from seechange.pipeline.products import image_columns, product_stem
from seechange.provenance import get_or_create_provenance
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
            folder = resolve(self.data_root, Path("calib") / instrument / section_id)
            if not folder.is_dir():
                raise ReduceInputError(f"no calibration frames for {instrument} CCD {section_id} in {folder}")
            self._calib[key] = load_calibration(folder)
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
        ccd = read_ccd(raw_path)
    except (ImageReadError, OSError) as exc:
        raise ReduceInputError(f"raw file {exposure.filepath} unreadable: {exc}") from exc
    raw, header = ccd.data, ccd.header
    calib = resources.calibration(exposure.instrument, exposure.section_id)
    refcat = resources.refcat(exposure.ra, exposure.dec)
    t0 = time.perf_counter()
    data = reduce_exposure(raw, header, calib, refcat, params=params)  # type: ignore[arg-type]
    stem = product_stem("reduced", prov.id, Path(exposure.filepath).stem)
    write_image_data(resolve(resources.data_root, stem), data, {"EXPID": exposure.id, "PROVID": prov.id})
    values = image_columns(
        data, filepath=stem, provenance_id=prov.id, field=exposure.field, section_id=exposure.section_id
    )
    values["exposure_id"] = exposure.id
    values["extra"] = {k: v for k, v in (data.meta or {}).items() if isinstance(v, (int, float, str, dict))}
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
