"""Association of sightings to Objects: nearest Object within a radius, or a new Object with a new name.

Safe with several detect instances at once: before looking, the transaction takes advisory locks on the
coarse HEALPix pixels (nside 64) that the search cones touch, in sorted order (so no deadlock); a second
transaction near the same place waits until the first commits and then sees its Objects.

Names do not depend on which process got there first: an Object is named from its earliest sighting, the
year of its MJD and its fine HEALPix pixel (:func:`object_name`). The epochs of one sky tile reach detect in
ingestion order (the events are keyed by tile, :mod:`seechange.streaming.keys`); when an earlier epoch is
still associated after a later one (two overlapping CCDs whose centres lie in different tiles), the Object
is renamed after it, so the final names are those of an in-order run; alerts sent before carry the earlier
name (and the same ``objectId``). Two Objects first seen in the same
~3 arcsec pixel (possible only when the radius is smaller than the pixel) get a numbered suffix; the name
is chosen under the advisory lock of the pixel's coarse parent, so concurrent creators are serialised and
the unique constraint on ``objects.name`` is never the tie-breaker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import inspect, or_, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from seechange.models import Object, Sighting
from seechange.spatial import coarse_pixels_in_cone, fine_pixels_in_cone, healpix_index, healpix_indices
from seechange.sphere import angular_sep_arcsec

log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x5C0B  # keeps these advisory locks apart from others (e.g. reference building)
NAME_PREFIX = "SC"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _letters(n: int, width: int) -> str:
    """``n`` in base 26 with the letters a..z, left-padded with ``a`` to ``width``."""
    letters = ""
    while True:
        n, r = divmod(n, 26)
        letters = _ALPHABET[r] + letters
        if n == 0:
            break
    return letters.rjust(width, "a")


#: letters of a fine HEALPix index: 12 * 4**16 pixels < 26**8
_PIXEL_LETTERS = 8


def object_name(ra: float, dec: float, mjd: float, *, pixel: int | None = None) -> str:
    """Name of an Object first seen at ``(ra, dec)`` (deg) on ``mjd``: ``SC<yy><8 letters>``.

    ``yy`` is the year of the MJD; the letters spell the fine HEALPix pixel (nside 2**16, nested, ~3.2
    arcsec) of the position in base 26, e.g. ``SC24bdqmxkzp``. The same first sighting always gives the
    same name, whatever else the database holds. ``pixel``: that pixel when already known (a Sighting's
    ``healpix``), else computed.
    """
    year = int(1858.877 + mjd / 365.25)  # MJD 0 = 1858-11-17
    if pixel is None:
        pixel = healpix_index(ra, dec)
    return f"{NAME_PREFIX}{year % 100:02d}{_letters(pixel, _PIXEL_LETTERS)}"


def _pixel(s: Sighting) -> int:
    """A sighting's fine HEALPix pixel: its ``healpix`` column (set by detect), else from its position."""
    return int(s.healpix) if s.healpix is not None else healpix_index(s.ra, s.dec)


def _names_like(session: Session, bases: Sequence[str]) -> set[str]:
    """Names of the Objects whose name starts with any of ``bases``: one query for a whole batch."""
    if not bases:
        return set()
    likes = [Object.name.like(f"{b}%") for b in sorted(set(bases))]
    return set(session.scalars(select(Object.name).where(or_(*likes))))


def _free_name(session: Session, base: str, taken: set[str], known: set[str] | None = None) -> str:
    """``base`` or, when an Object already has it, ``base`` + ``.2``, ``.3``, ... (first free one).

    ``known``: the database's names starting with ``base`` already looked up (:func:`_names_like`, a
    superset is fine); without it they are queried here.
    """
    if known is None:
        known = set(session.scalars(select(Object.name).where(Object.name.like(f"{base}%"))))
    existing = taken | known
    if base not in existing:
        return base
    k = 2
    while f"{base}.{k}" in existing:
        k += 1
    return f"{base}.{k}"


def lock_region(session: Session, positions: Sequence[tuple[float, float]], radius_arcsec: float) -> None:
    """Take the advisory locks of every coarse pixel the cones around ``positions`` touch (sorted)."""
    keys = sorted({p for ra, dec in positions for p in coarse_pixels_in_cone(ra, dec, radius_arcsec)})
    for key in keys:
        session.execute(text("SELECT pg_advisory_xact_lock(:ns, :k)"), {"ns": LOCK_NAMESPACE, "k": key})


def associate(
    session: Session,
    sightings: Sequence[Sighting],
    *,
    radius_arcsec: float,
    mags: Sequence[float | None] | None = None,
) -> list[Object]:
    """Attach each sighting to the nearest Object within ``radius_arcsec`` or to a new Object.

    Objects' positions become the mean of their sightings; counts, first/last MJD and latest magnitude are
    updated. The caller's transaction must be open; locks are released at its end. One query finds every
    candidate of the batch (healpix btree), so the cost does not grow with round trips per sighting; the
    writes are one INSERT of the new Objects, one UPDATE of the Objects that moved and one UPDATE of the
    sightings' ``object_id`` (not one statement per row).

    Returns
    -------
    list of Object
        The Object of each sighting, in order.
    """
    if not sightings:
        return []
    lock_region(session, [(s.ra, s.dec) for s in sightings], radius_arcsec)
    pixels = sorted({p for s in sightings for p in fine_pixels_in_cone(s.ra, s.dec, radius_arcsec)})
    candidates = list(session.scalars(select(Object).where(Object.healpix.in_(pixels))))
    # the names a new Object could collide with, for the whole batch in one query (under the locks taken
    # above, so no other transaction can add one); a rename frees a name, so after one the look-up is
    # made per Object again, exactly as before (renames are rare: an earlier epoch arriving late)
    bases = [object_name(s.ra, s.dec, s.mjd, pixel=_pixel(s)) for s in sightings]
    known: set[str] | None = _names_like(session, bases)
    new_names: set[str] = set()
    moved: dict[int, Object] = {}  # Objects already in the database whose position and counts change
    out: list[Object] = []
    for i, s in enumerate(sightings):
        mag = mags[i] if mags is not None else None
        obj = _nearest(candidates, s.ra, s.dec, radius_arcsec)
        if obj is None:
            name = _free_name(session, bases[i], new_names, known)
            new_names.add(name)
            obj = Object(
                name=name,
                ra=s.ra,
                dec=s.dec,
                healpix=_pixel(s),
                band_latest=s.band,
                mag_latest=mag,
                first_mjd=s.mjd,
                last_mjd=s.mjd,
                n_sightings=1,
            )
            session.add(obj)
            candidates.append(obj)
        else:
            earliest = s.mjd < obj.first_mjd
            if inspect(obj).persistent:
                # the new values are set as the database's (no per-row UPDATE at the flush) and written
                # for every moved Object at once by _write_moved below
                _update(obj, s, mag, set_committed_value)
                moved[id(obj)] = obj
            else:
                _update(obj, s, mag, setattr)
                obj.healpix = healpix_index(obj.ra, obj.dec)
            # an earlier epoch arrived late: the name follows the earliest sighting
            if earliest and _rename(session, obj, s, new_names):
                known = None
        out.append(obj)
    session.flush()  # the new Objects (one batch) and their ids; renames
    _write_moved(session, list(moved.values()))
    _set_object_ids(session, sightings, out)
    return out


def _write_moved(session: Session, objs: Sequence[Object]) -> None:
    """One UPDATE for the Objects whose position, counts and latest values `_update` changed.

    Their new pixels are computed together here; the values are those already set on the instances.
    """
    if not objs:
        return
    pixels = healpix_indices([o.ra for o in objs], [o.dec for o in objs])
    for o, p in zip(objs, pixels, strict=True):
        set_committed_value(o, "healpix", int(p))
    session.execute(
        text(
            "UPDATE objects AS o SET ra = v.ra, dec = v.dec, healpix = v.healpix, n_sightings = v.n,"
            " first_mjd = v.first_mjd, last_mjd = v.last_mjd, band_latest = v.band, mag_latest = v.mag"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:ra AS double precision[]),"
            " CAST(:dec AS double precision[]), CAST(:healpix AS bigint[]), CAST(:n AS integer[]),"
            " CAST(:first AS double precision[]), CAST(:last AS double precision[]),"
            " CAST(:band AS varchar[]), CAST(:mag AS double precision[]))"
            " AS v(id, ra, dec, healpix, n, first_mjd, last_mjd, band, mag) WHERE o.id = v.id"
        ),
        {
            "ids": [o.id for o in objs],
            "ra": [o.ra for o in objs],
            "dec": [o.dec for o in objs],
            "healpix": [o.healpix for o in objs],
            "n": [o.n_sightings for o in objs],
            "first": [o.first_mjd for o in objs],
            "last": [o.last_mjd for o in objs],
            "band": [o.band_latest for o in objs],
            "mag": [o.mag_latest for o in objs],
        },
    )


def _set_object_ids(session: Session, sightings: Sequence[Sighting], objs: Sequence[Object]) -> None:
    """``object_id`` of every sighting: one UPDATE for those in the database, the ORM for any other."""
    stored = [(s, o) for s, o in zip(sightings, objs, strict=True) if inspect(s).persistent]
    if stored:
        session.execute(
            text(
                "UPDATE sightings AS s SET object_id = v.oid"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:oids AS bigint[])) AS v(id, oid)"
                " WHERE s.id = v.id"
            ),
            {"ids": [s.id for s, _ in stored], "oids": [o.id for _, o in stored]},
        )
        for s, o in stored:
            set_committed_value(s, "object_id", o.id)
    if len(stored) < len(sightings):
        for s, o in zip(sightings, objs, strict=True):
            if not inspect(s).persistent:
                s.object_id = o.id
        session.flush()


def _rename(session: Session, obj: Object, s: Sighting, taken: set[str]) -> bool:
    """Name ``obj`` after ``s``, its new earliest sighting (unless its name already has that base).

    Returns True when the name changed.
    """
    base = object_name(s.ra, s.dec, s.mjd, pixel=_pixel(s))
    if obj.name == base or obj.name.startswith(f"{base}."):
        return False
    old = obj.name
    obj.name = _free_name(session, base, taken)
    taken.add(obj.name)
    log.info("object %s renamed %s: sighting %s at MJD %.5f is its earliest", old, obj.name, s.id, s.mjd)
    return True


def _nearest(candidates: Sequence[Object], ra: float, dec: float, radius_arcsec: float) -> Object | None:
    best, best_sep = None, radius_arcsec
    for obj in candidates:
        if abs(obj.dec - dec) * 3600.0 > radius_arcsec:
            continue
        sep = angular_sep_arcsec(ra, dec, obj.ra, obj.dec)
        if sep <= best_sep:
            best, best_sep = obj, sep
    return best


def _update(
    obj: Object, s: Sighting, mag: float | None, assign: Callable[[Object, str, object], None]
) -> None:
    """Add sighting ``s`` to ``obj``'s mean position, count, MJD range and latest band and magnitude.

    ``assign(obj, attribute, value)`` sets each value (``setattr``, or ``set_committed_value`` when the
    caller writes the row itself). The pixel of the new position is left to the caller.
    """
    n = obj.n_sightings
    # running mean; RA offsets are averaged (not raw RA) so that 0/360 wraps correctly
    dra = ((s.ra - obj.ra + 180.0) % 360.0) - 180.0
    assign(obj, "ra", float((obj.ra + dra / (n + 1)) % 360.0))
    assign(obj, "dec", float(obj.dec + (s.dec - obj.dec) / (n + 1)))
    assign(obj, "n_sightings", n + 1)
    assign(obj, "first_mjd", min(obj.first_mjd, s.mjd))
    if s.mjd >= obj.last_mjd:
        assign(obj, "last_mjd", s.mjd)
        assign(obj, "band_latest", s.band)
        if mag is not None and np.isfinite(mag):
            assign(obj, "mag_latest", float(mag))
