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
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io.fits import Header
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from seechange.errors import MissingRow
from seechange.imageio import read_cutouts_raw
from seechange.improc.cutouts import RawExtension, extension_to_gzipped_fits
from seechange.models import ForcedPhotometry, Image, Object, Photometry, Sighting, SubtractionImage
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


def _cutouts(data_root: Path, sighting: Sighting) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {"cutoutScience": None, "cutoutTemplate": None, "cutoutDifference": None}
    c = sighting.cutouts
    if c is None:
        return out
    stamps = _CUTOUTS.get(resolve(data_root, c.filepath))
    for field, hdu in (
        ("cutoutScience", c.hdu_new),
        ("cutoutTemplate", c.hdu_ref),
        ("cutoutDifference", c.hdu_diff),
    ):
        if hdu not in stamps:
            raise KeyError(f"cutouts file {c.filepath} has no HDU {hdu}")
        out[field] = extension_to_gzipped_fits(stamps[hdu])
    return out


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


def object_as_of(session: Session, obj: Object, sighting: Sighting) -> dict[str, Any]:
    """The ``object`` record of a packet: ``obj`` as it was once ``sighting`` was added to it.

    Counts the Object's sightings at earlier MJDs plus ``sighting`` itself (later epochs, and other
    sightings of the same MJD associated afterwards, are left out); the position is the mean of theirs
    (RA offsets averaged about the first, so 0/360 wraps correctly), in MJD order.
    """
    rows: list[tuple[float, float, float]] = [
        (float(m), float(r), float(d))
        for m, r, d in session.execute(
            select(Sighting.mjd, Sighting.ra, Sighting.dec)
            .where(Sighting.object_id == obj.id, or_(Sighting.mjd < sighting.mjd, Sighting.id == sighting.id))
            .order_by(Sighting.mjd, Sighting.ra, Sighting.dec)
        )
    ]
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


#: Default window of the packet's forced photometry and non-detections, days before the sighting (ZTF's).
HISTORY_DAYS = 30.0


def forced_history(
    session: Session, obj: Object, sighting: Sighting, window_days: float = HISTORY_DAYS
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """``prvForcedPhotometry`` and ``prvNonDetections`` of a packet, as of ``sighting``.

    The Object's forced points on difference images from ``window_days`` before the sighting up to its
    epoch (its own image included; later epochs never, whenever the packet is built), and the limits of
    those on which it was not detected (before the sighting's epoch). One forced provenance per difference
    image: the latest made, when several are stored.
    """
    rows = session.scalars(
        select(ForcedPhotometry)
        .where(
            ForcedPhotometry.object_id == obj.id,
            ForcedPhotometry.mjd >= sighting.mjd - window_days,
            ForcedPhotometry.mjd <= sighting.mjd,
        )
        .order_by(ForcedPhotometry.mjd, ForcedPhotometry.subtraction_id, ForcedPhotometry.id)
    ).all()
    latest: dict[int, ForcedPhotometry] = {}
    for r in rows:
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


def build_alert(
    session: Session, data_root: Path, sighting: Sighting, *, history_days: float = HISTORY_DAYS
) -> dict[str, Any]:
    """The alert record (schema ``alert``) of one sighting; ``schemaVersion`` is filled in when encoded.

    ``history_days``: window of ``prvForcedPhotometry`` and ``prvNonDetections`` before the sighting, days.
    """
    phot = _photometry(session, sighting)
    sub = session.get(SubtractionImage, sighting.subtraction_id)
    assert sub is not None
    new = session.get(Image, sub.new_image_id)
    scale = _pixel_scale(new)
    obj = sighting.object
    assert obj is not None
    zp = float(phot.zero_point) if phot.zero_point is not None else float("nan")
    earlier = session.execute(
        select(Sighting, Photometry)
        .join(Photometry, Photometry.sighting_id == Sighting.id)
        .where(
            Sighting.object_id == obj.id,
            Sighting.mjd < sighting.mjd,
            Photometry.provenance_id == phot.provenance_id,
        )
        .order_by(Sighting.mjd, Sighting.id)
    ).all()
    prv = [
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
    ap_scale = [electrons_to_njy(1.0, zp)] if math.isfinite(zp) else [float("nan")]
    record: dict[str, Any] = {
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
        "object": object_as_of(session, obj, sighting),
        "prvSightings": prv or None,
    }
    record["prvForcedPhotometry"], record["prvNonDetections"] = forced_history(
        session, obj, sighting, history_days
    )
    record.update(_cutouts(data_root, sighting))
    return record


__all__ = ["HISTORY_DAYS", "build_alert", "forced_history", "object_as_of"]
