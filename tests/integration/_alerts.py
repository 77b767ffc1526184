"""Alert packets for the client, subscribe and archive tests: a table of sightings with known properties."""

from __future__ import annotations

import gzip
import io
from typing import Any

import numpy as np
from astropy.io import fits

T0_MS = 1_700_000_000_000  # explicit message timestamps make the time look-ups exact

# id: (mag, snr, band, ra, dec, nSightings, isGood, isPositive)
TABLE: dict[int, tuple[float | None, float, str, float, float, int, bool, bool]] = {
    1: (18.0, 50.0, "g", 150.0, 2.0, 1, True, True),
    2: (19.5, 20.0, "r", 150.0, 2.0, 3, True, True),
    3: (21.0, 8.0, "r", 150.001, 2.0, 1, False, True),  # 3.6 arcsec east of (150, 2)
    4: (22.5, -5.5, "i", 151.0, 2.0, 2, True, False),
    5: (None, 6.0, "g", 150.0002, 2.0002, 5, True, True),  # 1.0 arcsec from (150, 2)
    6: (20.0, 12.0, "z", 10.0, -30.0, 1, True, True),
}


def fits_gz(value: float) -> bytes:
    """A gzipped 5x5 FITS image filled with ``value`` (reproducible bytes)."""
    buf = io.BytesIO()
    fits.PrimaryHDU(np.full((5, 5), value, dtype=np.float32)).writeto(buf)
    return gzip.compress(buf.getvalue(), mtime=0)


def make_alert(alert_id: int, mjd: float | None = None) -> dict[str, Any]:
    """An alert packet of row ``alert_id`` of :data:`TABLE` (``mjd``: the sighting's time, MJD)."""
    mag, snr, band, ra, dec, n, good, positive = TABLE[alert_id % 10 or 1]
    sighting = {
        "sightingId": alert_id,
        "subtractionId": 9,
        "objectId": 70 + alert_id,
        "mjd": 60400.0 + alert_id / 100 if mjd is None else mjd,
        "band": band,
        "ra": ra,
        "dec": dec,
        "x": 10.5,
        "y": 20.25,
        "psfFlux": 100.0 * snr,
        "psfFluxErr": 100.0,
        "mag": mag,
        "snr": snr,
        "flags": 0,
        "zeroPoint": 31.4,
        "score": abs(snr),
        "isPositive": positive,
        "isGood": good,
        "provenanceId": "0123456789abcdef",
    }
    obj = {
        "objectId": 70 + alert_id,
        "name": f"SC26a{chr(96 + alert_id)}",
        "ra": ra,
        "dec": dec,
        "nSightings": n,
        "firstMjd": 60400.0,
        "lastMjd": 60400.0 + alert_id / 100 if mjd is None else mjd,
    }
    return {
        "alertId": alert_id,
        "schemaVersion": "1.0",
        "sighting": sighting,
        "object": obj,
        "cutoutScience": fits_gz(float(alert_id)),
        "cutoutDifference": fits_gz(-float(alert_id)),
    }
