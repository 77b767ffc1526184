"""Alert packets: one Avro record per new good sighting, built from the database and the cutouts file.

The alert id is the sighting id, so handling the same sighting again (a replay, a redelivery) gives the
same alert id; the ``alert_log`` table is the outbox (:mod:`seechange.pipeline.outbox`): the packet's bytes
are stored before delivery, a re-send repeats them, and a sighting already sent is not sent again.

A packet describes its Object as of the sighting: count, first/last MJD, mean position and history come
from the Object's sightings up to the sighting's MJD (never a later epoch, whenever the packet is built),
so the same night gives the same packets however its messages were timed. The forced photometry and
non-detection limits (schema 1.1) are those of the difference images up to the sighting's epoch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io.fits import Header
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from seechange.errors import MissingRow
from seechange.imageio import read_cutouts_raw
from seechange.improc.cutouts import RawExtension, extension_to_gzipped_fits
from seechange.models import ForcedPhotometry, Image, Object, Photometry, Sighting, SubtractionImage
from seechange.parameters import default_threads
from seechange.pipeline.products import pixel_scale_arcsec
from seechange.storage import resolve
from seechange.units import electrons_to_njy


def _f(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _njy(stored: float | None, flux_e: float, zp: float) -> float:
    """The stored nJy flux, or the electrons converted with the AB zero point ``zp`` when none is stored."""
    return float(stored) if stored is not None else electrons_to_njy(float(flux_e), zp)


def _photometry(session: Session, sighting: Sighting) -> Photometry:
    phot = sorted(sighting.photometry, key=lambda p: p.id)
    if not phot:
        raise MissingRow(f"sighting {sighting.id} has no photometry")
    return phot[-1]


class _CutoutsCache:
    """The stamps of the last few cutouts files, read whole (one per subtraction).

    The alert service handles the sightings of one subtraction one after the other; opening the
    multi-HDU file three times per sighting walked its headers each time (O(n^2) in the number of
    sightings: minutes for a few hundred). Entries are keyed by path, size and modification time, so a
    rewritten file is read again. The stamps are kept as bytes (no astropy header objects: parsing every
    card of a 300-HDU file cost more than the rest of the alerts of a CCD).
    """

    def __init__(self, max_files: int = 2) -> None:
        self.max_files = max_files
        self._files: OrderedDict[tuple[str, int, int], dict[str, RawExtension]] = OrderedDict()

    def get(self, path: Path) -> dict[str, RawExtension]:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in self._files:
            self._files.move_to_end(key)
            return self._files[key]
        stamps = read_cutouts_raw(path)
        self._files[key] = stamps
        while len(self._files) > self.max_files:
            self._files.popitem(last=False)
        return stamps


_CUTOUTS = _CutoutsCache()


_CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def _stamps(data_root: Path, sighting: Sighting, paths: dict[str, Path]) -> list[RawExtension] | None:
    """The packet's three stamps (new, reference, difference) from the cutouts file; None without cutouts.
    ``paths`` caches the resolved file paths of a batch."""
    c = sighting.cutouts
    if c is None:
        return None
    if c.filepath not in paths:
        paths[c.filepath] = resolve(data_root, c.filepath)
    stamps = _CUTOUTS.get(paths[c.filepath])
    out = []
    for hdu in (c.hdu_new, c.hdu_ref, c.hdu_diff):
        if hdu not in stamps:
            raise KeyError(f"cutouts file {c.filepath} has no HDU {hdu}")
        out.append(stamps[hdu])
    return out


def _gzip_started(stamps: Sequence[list[RawExtension] | None]) -> Callable[[], list[dict[str, bytes | None]]]:
    """Start gzipping the stamps (the cutout fields of each packet) in a few threads; the returned function
    waits for them. zlib releases the GIL, so the compression (most of a packet's CPU) overlaps the
    database queries of the batch."""
    flat = [ext for group in stamps if group is not None for ext in group]

    def fields(packed: list[bytes]) -> list[dict[str, bytes | None]]:
        it = iter(packed)
        return [
            dict.fromkeys(_CUTOUT_FIELDS) if group is None else {f: next(it) for f in _CUTOUT_FIELDS}
            for group in stamps
        ]

    if len(flat) <= 3:
        done = [extension_to_gzipped_fits(ext) for ext in flat]
        return lambda: fields(done)
    pool = ThreadPoolExecutor(max_workers=default_threads())
    futures = [pool.submit(extension_to_gzipped_fits, ext) for ext in flat]
    pool.shutdown(wait=False)  # the submitted stamps are still compressed
    return lambda: fields([f.result() for f in futures])


_SCALES: OrderedDict[tuple[int, str], float] = OrderedDict()


def _pixel_scale(image: Image | None) -> float:
    """Pixel scale of an Image (arcsec/pixel) from its WCS header, parsed once per image (the sightings of
    one subtraction share it; parsing a WCS per alert cost a few ms each); NaN without a WCS (no camera's
    scale is assumed: the angular sizes of the packet are then left out)."""
    if image is None or not image.wcs_header:
        return float("nan")
    key = (image.id, image.wcs_header)
    if key not in _SCALES:
        from astropy.wcs import WCS

        _SCALES[key] = pixel_scale_arcsec(WCS(Header.fromstring(image.wcs_header)))
        while len(_SCALES) > 16:
            _SCALES.popitem(last=False)
    return _SCALES[key]


def _object_record(
    obj: Object, sighting: Sighting, positions: Sequence[tuple[int, float, float, float]]
) -> dict[str, Any]:
    """The ``object`` record from the Object's sightings ``(id, mjd, ra, dec)``, in (mjd, ra, dec) order."""
    rows = [(m, r, d) for i, m, r, d in positions if m < sighting.mjd or i == sighting.id]
    if not rows:  # not flushed yet: the sighting alone
        rows = [(sighting.mjd, sighting.ra, sighting.dec)]
    ra0 = float(rows[0][1])
    dra = np.array([((float(r) - ra0 + 180.0) % 360.0) - 180.0 for _, r, _ in rows])
    return {
        "objectId": obj.id,
        "name": obj.name,
        "ra": float((ra0 + dra.mean()) % 360.0),
        "dec": float(np.mean([float(d) for _, _, d in rows])),
        "nSightings": len(rows),
        "firstMjd": float(rows[0][0]),
        "lastMjd": float(rows[-1][0]),
    }


def _positions(
    session: Session, object_ids: Sequence[int], max_mjd: float
) -> dict[int, list[tuple[int, float, float, float]]]:
    """``(id, mjd, ra, dec)`` of the sightings of the Objects up to ``max_mjd``, per Object, ordered by
    (mjd, ra, dec): one query for a batch of packets."""
    out: dict[int, list[tuple[int, float, float, float]]] = {o: [] for o in object_ids}
    for o, i, m, r, d in session.execute(
        select(Sighting.object_id, Sighting.id, Sighting.mjd, Sighting.ra, Sighting.dec)
        .where(Sighting.object_id.in_(list(object_ids)), Sighting.mjd <= max_mjd)
        .order_by(Sighting.mjd, Sighting.ra, Sighting.dec)
    ):
        assert o is not None
        out[o].append((int(i), float(m), float(r), float(d)))
    return out


def object_as_of(session: Session, obj: Object, sighting: Sighting) -> dict[str, Any]:
    """The ``object`` record of a packet: ``obj`` as it was once ``sighting`` was added to it.

    Counts the Object's sightings at earlier MJDs plus ``sighting`` itself (later epochs, and other
    sightings of the same MJD associated afterwards, are left out); the position is the mean of theirs
    (RA offsets averaged about the first, so 0/360 wraps correctly), in MJD order.
    """
    return _object_record(obj, sighting, _positions(session, [obj.id], sighting.mjd)[obj.id])


#: Default window of the packet's forced photometry and non-detections, days before the sighting (ZTF's).
HISTORY_DAYS = 30.0


def _forced_records(
    rows: Sequence[ForcedPhotometry], sighting: Sighting, window_days: float
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """``prvForcedPhotometry`` and ``prvNonDetections`` from the Object's forced points ordered by (mjd,
    subtraction id, id): those in the window up to the sighting's epoch, the latest per difference image."""
    lo = sighting.mjd - window_days
    latest: dict[int, ForcedPhotometry] = {}
    for r in rows:
        if lo <= r.mjd <= sighting.mjd:
            latest[r.subtraction_id] = r
    points = sorted(latest.values(), key=lambda r: (r.mjd, r.subtraction_id))
    forced = [
        {
            "subtractionId": r.subtraction_id,
            "mjd": r.mjd,
            "band": r.band,
            "psfFlux": float(r.flux_njy),
            "psfFluxErr": float(r.flux_njy_err),
            "zeroPoint": float(r.zero_point),
            "limMag": _f(r.lim_mag),
            "detected": r.detected,
        }
        for r in points
    ]
    limits = [
        {"subtractionId": r.subtraction_id, "mjd": r.mjd, "band": r.band, "limMag": float(r.lim_mag)}
        for r in points
        if not r.detected and r.lim_mag is not None and r.mjd < sighting.mjd
    ]
    return forced or None, limits or None


def _forced_points(
    session: Session, object_ids: Sequence[int], lo: float, hi: float
) -> dict[int, list[ForcedPhotometry]]:
    """The forced points of the Objects with ``lo <= mjd <= hi``, per Object, ordered by (mjd, subtraction
    id, id): one query for a batch of packets."""
    out: dict[int, list[ForcedPhotometry]] = {o: [] for o in object_ids}
    for r in session.scalars(
        select(ForcedPhotometry)
        .where(
            ForcedPhotometry.object_id.in_(list(object_ids)),
            ForcedPhotometry.mjd >= lo,
            ForcedPhotometry.mjd <= hi,
        )
        .order_by(ForcedPhotometry.mjd, ForcedPhotometry.subtraction_id, ForcedPhotometry.id)
    ):
        out[r.object_id].append(r)
    return out


def forced_history(
    session: Session, obj: Object, sighting: Sighting, window_days: float = HISTORY_DAYS
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """``prvForcedPhotometry`` and ``prvNonDetections`` of a packet, as of ``sighting``.

    The Object's forced points on difference images from ``window_days`` before the sighting up to its
    epoch (its own image included; later epochs never, whenever the packet is built), and the limits of
    those on which it was not detected (before the sighting's epoch). One forced provenance per difference
    image: the latest made, when several are stored.
    """
    rows = _forced_points(session, [obj.id], sighting.mjd - window_days, sighting.mjd)[obj.id]
    return _forced_records(rows, sighting, window_days)


def _earlier(
    session: Session, object_ids: Sequence[int], provenance_ids: Sequence[str], max_mjd: float
) -> dict[int, list[tuple[Sighting, Photometry]]]:
    """(Sighting, Photometry) of the Objects' sightings before ``max_mjd`` with photometry of one of the
    provenances, per Object, ordered by (mjd, sighting id): one query for a batch of packets."""
    out: dict[int, list[tuple[Sighting, Photometry]]] = {o: [] for o in object_ids}
    for s, p in session.execute(
        select(Sighting, Photometry)
        .join(Photometry, Photometry.sighting_id == Sighting.id)
        .where(
            Sighting.object_id.in_(list(object_ids)),
            Sighting.mjd < max_mjd,
            Photometry.provenance_id.in_(list(provenance_ids)),
        )
        .order_by(Sighting.mjd, Sighting.id)
    ):
        assert s.object_id is not None
        out[s.object_id].append((s, p))
    return out


def build_alert(
    session: Session, data_root: Path, sighting: Sighting, *, history_days: float = HISTORY_DAYS
) -> dict[str, Any]:
    """The alert record (schema ``alert``) of one sighting; ``schemaVersion`` is filled in when encoded.

    ``history_days``: window of ``prvForcedPhotometry`` and ``prvNonDetections`` before the sighting, days.
    The same record as :func:`build_alerts` of a batch holding the sighting.
    """
    return build_alerts(session, data_root, [sighting], history_days=history_days)[0]


def build_alerts(
    session: Session, data_root: Path, sightings: Sequence[Sighting], *, history_days: float = HISTORY_DAYS
) -> list[dict[str, Any]]:
    """The alert records of several sightings (e.g. the good ones of one difference image), in order.

    Each record is the one :func:`build_alert` gives for its sighting alone; the database is asked once per
    kind for the whole batch (the sightings' photometry, Objects and cutouts rows, their difference and new
    images, the Objects' earlier sightings, positions and forced points) instead of about ten times per
    packet, and each image's WCS is parsed once.
    """
    if not sightings:
        return []
    ids = [s.id for s in sightings]
    # photometry, Object and cutouts row of every sighting, loaded together (lazy loads are one query each,
    # as good for a single sighting)
    if len(ids) > 1:
        session.scalars(
            select(Sighting)
            .where(Sighting.id.in_(ids))
            .options(
                selectinload(Sighting.photometry),
                selectinload(Sighting.object),
                selectinload(Sighting.cutouts),
            )
        ).all()
    paths: dict[str, Path] = {}
    cutouts = _gzip_started([_stamps(data_root, s, paths) for s in sightings])
    phots = {s.id: _photometry(session, s) for s in sightings}
    sub_ids = sorted({s.subtraction_id for s in sightings})
    subs = {
        x.id: x for x in session.scalars(select(SubtractionImage).where(SubtractionImage.id.in_(sub_ids)))
    }
    image_ids = sorted({x.new_image_id for x in subs.values()})
    images = {x.id: x for x in session.scalars(select(Image).where(Image.id.in_(image_ids)))}
    objs: dict[int, Object] = {}
    for s in sightings:
        obj = s.object
        assert obj is not None
        objs[obj.id] = obj
    object_ids = sorted(objs)
    max_mjd = max(s.mjd for s in sightings)
    earlier = _earlier(session, object_ids, sorted({p.provenance_id for p in phots.values()}), max_mjd)
    positions = _positions(session, object_ids, max_mjd)
    forced = _forced_points(session, object_ids, min(s.mjd - history_days for s in sightings), max_mjd)
    out = []
    for sighting, stamps in zip(sightings, cutouts(), strict=True):
        sub = subs[sighting.subtraction_id]
        obj = sighting.object
        assert obj is not None
        record = _record(sighting, phots[sighting.id], obj, _pixel_scale(images.get(sub.new_image_id)))
        prv = [
            (s, p)
            for s, p in earlier[obj.id]
            if s.mjd < sighting.mjd and p.provenance_id == phots[sighting.id].provenance_id
        ]
        record["object"] = _object_record(obj, sighting, positions[obj.id])
        record["prvSightings"] = _prv_sightings(prv, record["sighting"]["zeroPoint"]) or None
        record["prvForcedPhotometry"], record["prvNonDetections"] = _forced_records(
            forced[obj.id], sighting, history_days
        )
        record.update(stamps)
        out.append(record)
    return out


def _prv_sightings(earlier: Sequence[tuple[Sighting, Photometry]], zp: float) -> list[dict[str, Any]]:
    return [
        {
            "sightingId": s.id,
            "mjd": s.mjd,
            "band": s.band,
            "psfFlux": _njy(p.flux_njy, p.psf_flux, p.zero_point or zp),
            "psfFluxErr": _njy(p.flux_njy_err, p.psf_flux_err, p.zero_point or zp),
            "mag": _f(p.mag),
            "magErr": _f(p.mag_err),
            "isPositive": s.is_positive,
        }
        for s, p in earlier
    ]


def _record(sighting: Sighting, phot: Photometry, obj: Object, scale: float) -> dict[str, Any]:
    """The packet's ``sighting`` record (and the top-level fields; history, object and cutouts come after)."""
    zp = float(phot.zero_point) if phot.zero_point is not None else float("nan")
    ap_scale = [electrons_to_njy(1.0, zp)] if math.isfinite(zp) else [float("nan")]
    return {
        "alertId": sighting.id,
        "schemaVersion": "",  # the version actually written: set by streaming.framing.encode
        "sighting": {
            "sightingId": sighting.id,
            "subtractionId": sighting.subtraction_id,
            "objectId": obj.id,
            "mjd": sighting.mjd,
            "band": sighting.band,
            "ra": sighting.ra,
            "dec": sighting.dec,
            "raErr": _f(sighting.ra_err),
            "decErr": _f(sighting.dec_err),
            "x": sighting.x,
            "y": sighting.y,
            "psfFlux": _njy(phot.flux_njy, phot.psf_flux, zp),
            "psfFluxErr": _njy(phot.flux_njy_err, phot.psf_flux_err, zp),
            "apFlux": [float(f * ap_scale[0]) for f in phot.aper_fluxes] if phot.aper_fluxes else None,
            "apFluxErr": [float(f * ap_scale[0]) for f in phot.aper_flux_errs]
            if phot.aper_flux_errs
            else None,
            "apRadii": (
                [float(r * scale) for r in phot.aper_radii_px]
                if phot.aper_radii_px and math.isfinite(scale)
                else None
            ),
            "mag": _f(phot.mag),
            "magErr": _f(phot.mag_err),
            "snr": float(phot.snr) if phot.snr is not None else float("nan"),
            "fwhm": _f(phot.fwhm_px * scale) if phot.fwhm_px is not None else None,
            "elongation": _f(phot.elongation),
            "flags": int(sighting.flags | phot.flags),
            "zeroPoint": zp,
            "limMag": _f(phot.lim_mag),
            "score": float(sighting.score),
            "isPositive": sighting.is_positive,
            "isGood": sighting.is_good,
            "provenanceId": phot.provenance_id,
        },
    }


__all__ = ["HISTORY_DAYS", "build_alert", "build_alerts", "forced_history", "object_as_of"]
