"""References found on the sky: by footprint, band and instrument (never by OBJECT name or CCD number).

A reference is a coadd on the pixel grid of its first member (the *anchor*). The new image uses the
reference of its instrument and band whose footprint covers the largest fraction of the new image's
footprint, if that fraction is at least ``min_overlap``; when none does, one is built from the first
``n_ref_images`` good images (by MJD, then exposure id) of that instrument and band that each cover at least
``min_overlap`` of the new image, whatever their OBJECT names and CCDs. ``docs/ARCHITECTURE.md``
("References") gives the reasons for this geometry.

Candidates are found through the ``healpix`` btree column: the fine nested index (nside 2**16) of a centre
divided by 4**10 is its coarse (nside 64) pixel, so the images whose centres lie in the coarse pixels around
the new image are one range scan per coarse pixel. Footprint overlaps are computed from the rows' corners
(convex quadrilaterals on the tangent plane at the new image's centre).

Building runs under transaction-level advisory locks on the coarse pixels that the new image's circumscribed
cone touches (per instrument and band, taken in sorted order): two images whose footprints overlap share at
least one such pixel, so they never build two references at once, and the second finds the first's after
the lock. Membership is decided from the *exposures* (an overlapping exposure whose Image is not reduced yet
makes the message wait, :class:`ReferencePending`), so the order in which parallel reduce instances finish
cannot change it.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from seechange.errors import UnusableImage
from seechange.imageio import read_image_data, write_image_data
from seechange.improc.coadd import coadd
from seechange.models import CoaddImage, Exposure, Image, Provenance, coadd_members
from seechange.parameters import StepParameters
from seechange.pipeline.products import image_columns, product_stem
from seechange.provenance import get_or_create_provenance
from seechange.spatial import NSIDE_COARSE, NSIDE_FINE, coarse_pixels_in_cone
from seechange.storage import resolve

__all__ = [
    "NO_REFERENCE",
    "PENDING_GIVE_UP_S",
    "REFERENCE_MEMBER",
    "ReferenceParams",
    "ReferencePending",
    "find_or_build_reference",
    "footprint_overlap",
    "prepare_reference",
    "reference_key",
]

log = logging.getLogger(__name__)

NO_REFERENCE = "no reference yet"
REFERENCE_MEMBER = "member of its reference"

#: An ingested exposure with no Image after this long is taken to have failed reduction (dead-lettered).
PENDING_GIVE_UP_S = 600.0

#: Fine pixels per coarse pixel, as a bit shift (nested scheme: each level splits a pixel in 4).
_COARSE_SHIFT = 2 * (int(np.log2(NSIDE_FINE)) - int(np.log2(NSIDE_COARSE)))


@dataclass(frozen=True)
class ReferenceParams(StepParameters):
    """How references are chosen and built (all critical).

    Attributes
    ----------
    n_ref_images : int
        Members of a reference.
    min_zp : float
        Images with a lower zero point (clouds) are not used, AB mag.
    min_overlap : float
        Fraction of the new image's footprint that a reference (or a would-be member) must cover.
    """

    n_ref_images: int = 3
    min_zp: float = 0.0
    min_overlap: float = 0.5


class ReferencePending(Exception):
    """A member of the reference is ingested but not reduced yet: retry later (not an error of the message)."""


def reference_key(instrument: str, band: str, anchor: Image) -> str:
    """``"<instrument>/<band>/image<anchor id>"``: a reference is named by its anchor (first member)."""
    return f"{instrument}/{band}/image{anchor.id}"


# --------------------------------------------------------------------------------------------- footprints
def _corners(row: Image | CoaddImage) -> np.ndarray:
    """The footprint corners (ra, dec in deg) in polygon order 00, 10, 11, 01; shape (4, 2)."""
    return np.array(
        [
            (row.ra_corner_00, row.dec_corner_00),
            (row.ra_corner_10, row.dec_corner_10),
            (row.ra_corner_11, row.dec_corner_11),
            (row.ra_corner_01, row.dec_corner_01),
        ],
        dtype=float,
    )


def _tangent(radec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    """Gnomonic projection of (ra, dec) deg about (ra0, dec0); (xi, eta) in deg (NaN behind the plane)."""
    ra, dec = np.radians(radec[:, 0]), np.radians(radec[:, 1])
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.cos(dec) * np.sin(ra - a0) / cosc
        eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    out = np.degrees(np.column_stack([xi, eta]))
    out[cosc <= 0] = np.nan
    return out


def _area(poly: np.ndarray) -> float:
    """Signed area of a polygon (shoelace)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _clip(subject: np.ndarray, clipper: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of a polygon inside a convex counter-clockwise polygon."""
    out = [tuple(p) for p in subject]
    for i in range(len(clipper)):
        a, b = clipper[i], clipper[(i + 1) % len(clipper)]
        edge = b - a

        def inside(p: tuple[float, float], a: np.ndarray = a, edge: np.ndarray = edge) -> bool:
            return bool(edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]) >= 0)

        def cut(p: tuple[float, float], q: tuple[float, float], a: np.ndarray = a, edge: np.ndarray = edge):
            d = np.subtract(q, p)
            den = edge[0] * d[1] - edge[1] * d[0]
            t = (edge[1] * (p[0] - a[0]) - edge[0] * (p[1] - a[1])) / den
            return (p[0] + t * d[0], p[1] + t * d[1])

        src, out = out, []
        for j, p in enumerate(src):
            q = src[(j + 1) % len(src)] if src else p
            if inside(q):
                if not inside(p):
                    out.append(cut(p, q))
                out.append(q)
            elif inside(p):
                out.append(cut(p, q))
        if not out:
            return np.zeros((0, 2))
    return np.array(out, dtype=float)


def footprint_overlap(target: np.ndarray, other: np.ndarray) -> float:
    """Fraction of the ``target`` footprint that ``other`` covers (0 to 1).

    Parameters
    ----------
    target, other : ndarray, shape (4, 2)
        Corners (ra, dec in deg) of two convex footprints, in polygon order.

    Returns
    -------
    float
        Area of the intersection over the area of ``target`` (on the tangent plane at the target's centre).
    """
    ra0 = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(target[:, 0]))))))
    dec0 = float(np.mean(target[:, 1]))
    t, o = _tangent(target, ra0, dec0), _tangent(other, ra0, dec0)
    if not (np.isfinite(t).all() and np.isfinite(o).all()):
        return 0.0
    if _area(t) < 0:
        t = t[::-1]
    if _area(o) < 0:
        o = o[::-1]
    a_t = _area(t)
    if a_t <= 0:
        return 0.0
    inter = _clip(o, t)
    return float(min(max(abs(_area(inter)) / a_t, 0.0), 1.0)) if len(inter) >= 3 else 0.0


def _inside(target: np.ndarray, ra: float, dec: float) -> bool:
    """Whether a position lies inside a convex footprint."""
    ra0 = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(target[:, 0]))))))
    dec0 = float(np.mean(target[:, 1]))
    t = _tangent(target, ra0, dec0)
    p = _tangent(np.array([[ra, dec]]), ra0, dec0)[0]
    if not np.isfinite(p).all():
        return False
    if _area(t) < 0:
        t = t[::-1]
    e = np.roll(t, -1, axis=0) - t
    return bool(np.all(e[:, 0] * (p[1] - t[:, 1]) - e[:, 1] * (p[0] - t[:, 0]) >= 0))


def _circumradius_arcsec(image: Image) -> float:
    """Largest centre-to-corner distance of an image's footprint, arcsec."""
    c = _corners(image)
    t = _tangent(c, image.ra, image.dec)
    return float(3600.0 * np.nanmax(np.hypot(t[:, 0], t[:, 1])))


def _near(column: Any, image: Image, radius_arcsec: float) -> Any:
    """SQL filter: the fine ``healpix`` column in one of the coarse pixels of a cone (btree range scans)."""
    pixels = coarse_pixels_in_cone(image.ra, image.dec, radius_arcsec)
    return or_(*[column.between(p << _COARSE_SHIFT, ((p + 1) << _COARSE_SHIFT) - 1) for p in pixels])


def _lock_sky(session: Session, instrument: str, band: str, image: Image) -> None:
    """Transaction-level advisory locks on the coarse pixels under the image (sorted: no deadlock)."""
    for p in coarse_pixels_in_cone(image.ra, image.dec, _circumradius_arcsec(image)):
        key = f"reference/{instrument}/{band}/{p}"
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(key.encode()) - 2**31})


# ------------------------------------------------------------------------------------------ find or build
def _covering_reference(
    session: Session, image: Image, instrument: str, prov: Provenance, min_overlap: float
) -> CoaddImage | None:
    """The existing reference (this provenance) covering the largest fraction >= min_overlap of ``image``."""
    radius = 3.0 * _circumradius_arcsec(image)
    rows = session.scalars(
        select(CoaddImage)
        .where(
            CoaddImage.provenance_id == prov.id,
            CoaddImage.reference_key.like(f"{instrument}/{image.band}/%"),
            _near(CoaddImage.healpix, image, radius),
        )
        .order_by(CoaddImage.id)
    ).all()
    target = _corners(image)
    best, best_f = None, 0.0
    for row in rows:
        f = footprint_overlap(target, _corners(row))
        if f >= min_overlap and f > best_f:
            best, best_f = row, f
    return best


def _members(session: Session, image: Image, instrument: str, params: ReferenceParams) -> list[Image]:
    """The first ``n_ref_images`` good Images covering ``image`` by MJD, decided by the *exposures*.

    Raises :class:`ReferencePending` when an exposure of the same instrument and band whose centre lies in
    the image's footprint, earlier than the last member, has not been reduced yet.
    """
    radius = 3.0 * _circumradius_arcsec(image)
    rows = session.execute(
        select(Exposure, Image)
        .outerjoin(Image, and_(Image.exposure_id == Exposure.id, Image.provenance_id == image.provenance_id))
        .where(
            Exposure.instrument == instrument,
            Exposure.band == image.band,
            _near(Exposure.healpix, image, radius),
        )
        .order_by(Exposure.mjd, Exposure.id)
    ).all()
    target = _corners(image)
    members: list[Image] = []
    now = datetime.now(UTC)
    for exposure, img in rows:
        if len(members) == params.n_ref_images:
            break
        if img is None:
            pending = (now - exposure.ingested_at).total_seconds() < PENDING_GIVE_UP_S
            if pending and _inside(target, exposure.ra, exposure.dec):
                raise ReferencePending(f"exposure {exposure.id} under image {image.id} is not reduced yet")
            continue
        zp = img.zero_point if img.zero_point is not None else float("nan")
        usable = img.is_good and np.isfinite(zp) and zp >= params.min_zp
        if usable and (img.id == image.id or footprint_overlap(target, _corners(img)) >= params.min_overlap):
            members.append(img)
    return members


def find_or_build_reference(
    session: Session,
    data_root: Path,
    image: Image,
    *,
    params: ReferenceParams,
    before_build: Callable[[], None] | None = None,
) -> CoaddImage | None:
    """The reference CoaddImage covering ``image``, built now if possible.

    ``before_build`` is called before a reference is built (the subtract stage frees its cached
    reference then: a coadd is its largest memory peak).

    Returns None (and records why on the image row) when ``image`` is itself one of the reference's
    members, or when its sky does not have enough good images yet. The member that completes the set
    builds the reference right away (the next epoch's subtraction then finds it).

    Raises
    ------
    ReferencePending
        A would-be member is not reduced yet (retry later).
    """
    instrument = image.exposure.instrument
    prov = _coadd_provenance(session, image, params)
    found = _find_locked(session, image, instrument, prov, params)
    if found is not None:
        if any(m.id == image.id for m in found.images):
            _note(image, REFERENCE_MEMBER)
            return None
        return found
    members = _members(session, image, instrument, params)
    if any(m.id == image.id for m in members):
        _note(image, REFERENCE_MEMBER)
        if len(members) == params.n_ref_images:
            # the last member: build the reference now, while the next epoch is still being observed and
            # reduced, so that the first subtraction of the sky does not wait for it (6 s on full CCDs)
            if before_build is not None:
                before_build()
            _build_reference(session, data_root, instrument, prov, members)
        return None
    if len(members) < params.n_ref_images:
        _note(image, NO_REFERENCE)
        return None
    if before_build is not None:
        before_build()
    return _build_reference(session, data_root, instrument, prov, members)


def prepare_reference(
    session: Session, data_root: Path, image: Image, *, params: ReferenceParams
) -> tuple[CoaddImage | None, str]:
    """Make sure a reference covers ``image`` ahead of a night (``seechange reference build``).

    The same choice as :func:`find_or_build_reference` (same provenance, same members: the first
    ``n_ref_images`` good images covering ``image`` by MJD, from whatever is registered on that sky), but
    ``image`` is not being subtracted: a reference that covers it is reported, else one is built when its
    sky has enough good images, whether or not ``image`` is one of them.

    Returns
    -------
    (CoaddImage or None, str)
        The covering reference and ``"covered"`` (it existed) or ``"built"``; or None and why not.

    Raises
    ------
    ReferencePending
        A would-be member is ingested but not reduced yet.
    """
    instrument = image.exposure.instrument
    prov = _coadd_provenance(session, image, params)
    found = _find_locked(session, image, instrument, prov, params)
    if found is not None:
        return found, "covered"
    members = _members(session, image, instrument, params)
    if len(members) < params.n_ref_images:
        return None, f"{len(members)} good image(s) on its sky, {params.n_ref_images} needed"
    return _build_reference(session, data_root, instrument, prov, members), "built"


def _coadd_provenance(session: Session, image: Image, params: ReferenceParams) -> Provenance:
    """The provenance of references for images of ``image``'s provenance."""
    image_prov = session.get(Provenance, image.provenance_id)
    assert image_prov is not None
    return get_or_create_provenance(session, "coadd", params.critical(), [image_prov])


def _find_locked(
    session: Session, image: Image, instrument: str, prov: Provenance, params: ReferenceParams
) -> CoaddImage | None:
    """The covering reference; when there is none, the sky's locks are taken and it is looked for again."""
    found = _covering_reference(session, image, instrument, prov, params.min_overlap)
    if found is None:
        _lock_sky(session, instrument, image.band, image)
        found = _covering_reference(session, image, instrument, prov, params.min_overlap)
    return found


def _build_reference(
    session: Session, data_root: Path, instrument: str, prov: Provenance, members: list[Image]
) -> CoaddImage:
    """Coadd ``members`` on the grid of the first (the caller holds the sky's locks); its row."""
    t0 = time.perf_counter()
    anchor = members[0]
    key = reference_key(instrument, anchor.band, anchor)
    inputs = [read_image_data(resolve(data_root, m.filepath)) for m in members]
    for m, data in zip(members, inputs):
        if not np.isfinite(data.zp):
            raise UnusableImage(f"image {m.id} ({m.filepath}): no zero point; it cannot join a reference")
    ref = coadd(inputs)
    stem = product_stem("coadds", prov.id, key.replace("/", "_"))
    write_image_data(resolve(data_root, stem), ref, {})
    values = image_columns(
        ref, filepath=stem, provenance_id=prov.id, field=anchor.field, section_id=anchor.section_id
    )
    values.update(reference_key=key, extra={"members": [m.id for m in members], "instrument": instrument})
    coadd_id = session.execute(insert(CoaddImage).values(**values).returning(CoaddImage.id)).scalar_one()
    session.execute(insert(coadd_members), [{"coadd_id": coadd_id, "image_id": m.id} for m in members])
    log.info(
        "built reference %s (coadd %d of images %s, fields %s, CCDs %s) in %.2f s",
        key,
        coadd_id,
        [m.id for m in members],
        sorted({m.field or "" for m in members}),
        sorted({m.section_id or "" for m in members}),
        time.perf_counter() - t0,
    )
    built = session.get(CoaddImage, coadd_id)
    assert built is not None
    return built


def _note(image: Image, why: str) -> None:
    image.extra = {**(image.extra or {}), "subtraction": why}
    log.info(
        "image %d (%s, %s, mjd %.5f): not subtracted: %s", image.id, image.band, image.field, image.mjd, why
    )
