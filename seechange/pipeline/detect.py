"""Detect stage: a SubtractionImage in; Sightings, Photometry, Cutouts, Objects and the forced photometry
of every Object on the image out (find before make)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from seechange.errors import MissingRow
from seechange.imageio import read_image_pixels, write_cutouts
from seechange.improc.detection import DetectParams, detect_and_measure
from seechange.improc.types import ImageData
from seechange.models import Cutouts, Image, Photometry, Provenance, Sighting, SubtractionImage
from seechange.pipeline.association import associate
from seechange.pipeline.forced import force_on_subtraction
from seechange.pipeline.products import pixel_scale_arcsec, product_stem
from seechange.pipeline.subtract import read_zogy
from seechange.provenance import get_or_create_provenance
from seechange.spatial import healpix_indices
from seechange.storage import resolve

log = logging.getLogger(__name__)

CUTOUT_SIZE = 51


def _opt(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def detect_on_subtraction(
    session: Session,
    data_root: Path,
    subtraction_id: int,
    *,
    params: DetectParams,
    radius_arcsec: float,
    threads: int | None = None,
) -> list[Sighting]:
    """Detect, measure, cut out and associate on one subtraction; the sightings (existing ones if done).

    ``threads`` read the subtraction's files in parallel (default every core).
    """
    sub = session.get(SubtractionImage, subtraction_id)
    if sub is None:
        raise MissingRow(f"subtraction {subtraction_id} is not in the database")
    upstream = session.get(Provenance, sub.provenance_id)
    assert upstream is not None
    prov = get_or_create_provenance(session, "detect", params.critical(), [upstream])
    done = select(Sighting).where(Sighting.subtraction_id == sub.id, Sighting.provenance_id == prov.id)
    if sub.n_sightings is not None and (sub.extra or {}).get("detect_provenance") == prov.id:
        return list(session.scalars(done.order_by(Sighting.index_in_image)))
    t0 = time.perf_counter()
    result, ref_pixels = read_zogy(data_root, sub.filepath, threads=threads)
    new_row = session.get(Image, sub.new_image_id)
    assert new_row is not None
    # only the new image's pixels are needed: its flags are already in result.flags (their OR with the
    # reference's), which is what measurement and cutouts use; its weight and PSF are not used here
    new = read_image_pixels(resolve(data_root, new_row.filepath), flags=result.flags)
    ref = ImageData(
        image=ref_pixels,
        weight=new.weight,
        flags=result.flags,
        psf=result.psf_d,
        wcs=new.wcs,
        zp=new.zp,
        fwhm_px=new.fwhm_px,
        bkg_level=0.0,
        bkg_rms=0.0,
    )
    table = detect_and_measure(result, new, ref, params=params)
    sightings = _write_sightings(session, sub, prov.id, table, result.wcs)
    mags = [_opt(v) for v in table["mag"]] if len(table) else []
    associate(session, sightings, radius_arcsec=radius_arcsec, mags=mags)
    session.flush()
    n_forced = force_on_subtraction(session, sub, result, params=params.forced_params)
    if sightings:
        _write_cutouts(session, data_root, prov.id, sub, sightings, new, ref, result.diff)
    sub.n_sightings = len(sightings)
    sub.extra = {**(sub.extra or {}), "detect_provenance": prov.id}
    session.flush()
    log.info(
        "subtraction %d: %d sightings (%d good), %d forced points in %.2f s",
        sub.id,
        len(sightings),
        sum(s.is_good for s in sightings),
        n_forced,
        time.perf_counter() - t0,
    )
    return sightings


def _write_sightings(
    session: Session, sub: SubtractionImage, prov_id: str, table: Table, wcs: Any
) -> list[Sighting]:
    """Insert the sightings and their photometry in two statements (not 3 round trips per sighting)."""
    if len(table) == 0:
        return []
    world = wcs.all_pix2world(np.column_stack([table["x"], table["y"]]), 0)
    scale = pixel_scale_arcsec(wcs)  # arcsec / pixel, from the image's own WCS
    pixels = healpix_indices(world[:, 0], world[:, 1])
    rows: list[dict[str, Any]] = []
    phots: dict[int, dict[str, Any]] = {}
    for row, (ra, dec), pixel in zip(table, world, pixels, strict=True):
        snr = abs(float(row["snr"])) if math.isfinite(float(row["snr"])) else 0.0
        pos_err = (
            float(row["fwhm_px"]) * scale / max(snr, 1.0) if math.isfinite(float(row["fwhm_px"])) else None
        )
        index = int(row["index"])
        rows.append(
            {
                "subtraction_id": sub.id,
                "provenance_id": prov_id,
                "index_in_image": index,
                "x": float(row["x"]),
                "y": float(row["y"]),
                "ra": float(ra),
                "dec": float(dec),
                "ra_err": pos_err,
                "dec_err": pos_err,
                "score": float(row["score"]),
                "is_positive": bool(row["is_positive"]),
                "flags": int(row["qflags"]),
                "is_good": bool(row["is_good"]),
                "mjd": sub.mjd,
                "band": sub.band,
                "healpix": int(pixel),
            }
        )
        radii = [float(r) for r in np.atleast_1d(row["aper_radii_px"])]
        n_ap = len(radii)
        phots[index] = {
            "provenance_id": prov_id,
            "psf_flux": float(row["flux_psf"]),
            "psf_flux_err": float(row["flux_psf_err"]),
            "flux_njy": _opt(row["flux_njy"]),
            "flux_njy_err": _opt(row["flux_njy_err"]),
            "aper_fluxes": [float(v) for v in np.atleast_1d(row["flux_aper"])] if n_ap else None,
            "aper_flux_errs": [float(v) for v in np.atleast_1d(row["flux_aper_err"])] if n_ap else None,
            "aper_radii_px": radii or None,
            "mag": _opt(row["mag"]),
            "mag_err": _opt(row["mag_err"]),
            "zero_point": _opt(row["zp"]),
            "lim_mag": None,
            "x_centroid": float(row["x"]),
            "y_centroid": float(row["y"]),
            "fwhm_px": _opt(row["fwhm_px"]),
            "elongation": _opt(row["elongation"]),
            "snr": _opt(row["snr"]),
            "background": _opt(row["background"]),
            "negative_fraction": _opt(row["neg_fraction"]),
            "n_bad_pixels": int(row["n_bad_pix"]),
            "flags": int(row["qflags"]),
        }
    # executemany (SQLAlchemy's batched "insertmanyvalues"): one cached statement, not a VALUES clause of
    # every row compiled anew per subtraction; ``render_nulls`` sends a None as NULL instead of leaving its
    # column out, so every row has the same columns and the rows go in one batch (not one batch per run of
    # rows with the same None columns: 23 round trips for 55 sightings before)
    session.execute(
        insert(Sighting)
        .on_conflict_do_nothing(index_elements=["subtraction_id", "provenance_id", "index_in_image"])
        .execution_options(render_nulls=True),
        rows,
    )
    by_index = {
        s.index_in_image: s
        for s in session.scalars(
            select(Sighting).where(Sighting.subtraction_id == sub.id, Sighting.provenance_id == prov_id)
        )
    }
    sightings = [by_index[int(r["index_in_image"])] for r in rows]
    session.execute(
        insert(Photometry)
        .on_conflict_do_nothing(index_elements=["sighting_id", "provenance_id"])
        .execution_options(render_nulls=True),
        [{**phots[s.index_in_image], "sighting_id": s.id} for s in sightings],
    )
    session.flush()
    return sightings


def _write_cutouts(
    session: Session,
    data_root: Path,
    prov_id: str,
    sub: SubtractionImage,
    sightings: list[Sighting],
    new: ImageData,
    ref: ImageData,
    diff: np.ndarray,
) -> None:
    stem = product_stem("cutouts", prov_id, Path(sub.filepath).name)
    rel = f"{stem}.cutouts.fits"
    path = resolve(data_root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cutouts(path, new, ref, diff, [(s.id, (s.x, s.y)) for s in sightings], size=CUTOUT_SIZE)
    session.execute(
        insert(Cutouts).on_conflict_do_nothing(index_elements=["sighting_id"]),
        [
            {
                "sighting_id": s.id,
                "filepath": rel,
                "hdu_new": f"SIG{s.id}_NEW",
                "hdu_ref": f"SIG{s.id}_REF",
                "hdu_diff": f"SIG{s.id}_DIFF",
                "size": CUTOUT_SIZE,
            }
            for s in sightings
        ],
    )


def sighting_event(s: Sighting, *, produced_at_ms: int, ingested_at_ms: int) -> dict[str, Any]:
    """The sighting-found record of one Sighting."""
    return {
        "sighting_id": s.id,
        "object_id": s.object_id,
        "subtraction_id": s.subtraction_id,
        "mjd": s.mjd,
        "is_good": s.is_good,
        "provenance_id": s.provenance_id,
        "produced_at": produced_at_ms,
        "ingested_at": ingested_at_ms,
    }
