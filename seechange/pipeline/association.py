"""Association of sightings to Objects: nearest Object within a radius, or a new Object with a new name.

Safe with several detect instances at once: before looking, the transaction takes advisory locks on the
coarse HEALPix pixels (nside 64) that the search cones touch, in sorted order (so no deadlock); a second
transaction near the same place waits until the first commits and then sees its Objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from seechange.models import Object, Sighting
from seechange.spatial import coarse_pixels_in_cone, fine_pixels_in_cone, healpix_index
from seechange.sphere import angular_sep_arcsec

LOCK_NAMESPACE = 0x5C0B  # keeps these advisory locks apart from others (e.g. reference building)
NAME_PREFIX = "SC"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def object_name(object_id: int, mjd: float) -> str:
    """Unique name from the Object's id: ``SC<yy><letters>``, e.g. ``SC23aab``, year from the first MJD."""
    year = int(1858.877 + mjd / 365.25)  # MJD 0 = 1858-11-17
    letters, n = "", object_id
    while True:
        n, r = divmod(n, 26)
        letters = _ALPHABET[r] + letters
        if n == 0:
            break
    return f"{NAME_PREFIX}{year % 100:02d}{letters.rjust(3, 'a')}"


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
    candidate of the batch (healpix btree), so the cost does not grow with round trips per sighting.

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
    created: list[tuple[Object, float]] = []
    out: list[Object] = []
    for i, s in enumerate(sightings):
        mag = mags[i] if mags is not None else None
        obj = _nearest(candidates, s.ra, s.dec, radius_arcsec)
        if obj is None:
            obj = Object(
                name=f"pending-{s.id}",
                ra=s.ra,
                dec=s.dec,
                healpix=healpix_index(s.ra, s.dec),
                band_latest=s.band,
                mag_latest=mag,
                first_mjd=s.mjd,
                last_mjd=s.mjd,
                n_sightings=1,
            )
            session.add(obj)
            candidates.append(obj)
            created.append((obj, s.mjd))
        else:
            _update(obj, s, mag)
        out.append(obj)
    session.flush()  # ids of the new Objects
    for obj, mjd in created:
        obj.name = object_name(obj.id, mjd)
    for s, obj in zip(sightings, out, strict=True):
        s.object_id = obj.id
    session.flush()
    return out


def _nearest(candidates: Sequence[Object], ra: float, dec: float, radius_arcsec: float) -> Object | None:
    best, best_sep = None, radius_arcsec
    for obj in candidates:
        if abs(obj.dec - dec) * 3600.0 > radius_arcsec:
            continue
        sep = angular_sep_arcsec(ra, dec, obj.ra, obj.dec)
        if sep <= best_sep:
            best, best_sep = obj, sep
    return best


def _update(obj: Object, s: Sighting, mag: float | None) -> None:
    n = obj.n_sightings
    # running mean; RA offsets are averaged (not raw RA) so that 0/360 wraps correctly
    dra = ((s.ra - obj.ra + 180.0) % 360.0) - 180.0
    obj.ra = float((obj.ra + dra / (n + 1)) % 360.0)
    obj.dec = float(obj.dec + (s.dec - obj.dec) / (n + 1))
    obj.healpix = healpix_index(obj.ra, obj.dec)
    obj.n_sightings = n + 1
    obj.first_mjd = min(obj.first_mjd, s.mjd)
    if s.mjd >= obj.last_mjd:
        obj.last_mjd = s.mjd
        obj.band_latest = s.band
        if mag is not None and np.isfinite(mag):
            obj.mag_latest = float(mag)
