"""Tangent-plane geometry, TAN WCS construction and sexagesimal strings."""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS

from seechange.sim.instrument import PIXEL_SCALE
from seechange.spatial import tan_wcs


def tan_to_sky(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic deprojection of standard coordinates about (ra0, dec0).

    Parameters
    ----------
    xi, eta : ndarray
        Standard coordinates (xi towards east, eta towards north), degrees.
    ra0, dec0 : float
        Tangent point, degrees.

    Returns
    -------
    ra, dec : ndarray
        Degrees (ra in [0, 360)).
    """
    x, y = np.radians(xi), np.radians(eta)
    d0, a0 = math.radians(dec0), math.radians(ra0)
    denom = math.cos(d0) - y * math.sin(d0)
    ra = a0 + np.arctan2(x, denom)
    dec = np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def offset_sky(ra: float, dec: float, east_arcsec: float, north_arcsec: float) -> tuple[float, float]:
    """Move a position by a small tangent-plane offset, degrees in and out."""
    r, d = tan_to_sky(np.array([east_arcsec / 3600.0]), np.array([north_arcsec / 3600.0]), ra, dec)
    return float(r[0]), float(d[0])


def make_tan_wcs(
    ra: float, dec: float, nx: int, ny: int, rotation_deg: float = 0.0, scale_arcsec: float = PIXEL_SCALE
) -> WCS:
    """A TAN WCS with (ra, dec) at the centre of an nx x ny grid, north up and east left.

    Parameters
    ----------
    ra, dec : float
        Sky position of the grid centre, degrees.
    nx, ny : int
        Grid size, pixels.
    rotation_deg : float
        Rotation of the sky relative to the pixel axes, degrees.
    scale_arcsec : float
        Pixel scale, arcsec/pixel.
    """
    return tan_wcs(ra, dec, nx, ny, scale_arcsec, rotation_deg)


def ra_sexagesimal(ra: float) -> str:
    """Right ascension, degrees -> 'HH:MM:SS.SSS'."""
    total = round((ra % 360.0) / 15.0 * 3600.0 * 1000.0)
    total %= 24 * 3600 * 1000
    h, rem = divmod(total, 3600 * 1000)
    m, rem = divmod(rem, 60 * 1000)
    return f"{h:02d}:{m:02d}:{rem / 1000.0:06.3f}"


def dec_sexagesimal(dec: float) -> str:
    """Declination, degrees -> '+DD:MM:SS.SS'."""
    sign = "-" if dec < 0 else "+"
    total = round(abs(dec) * 3600.0 * 100.0)
    d, rem = divmod(total, 3600 * 100)
    m, rem = divmod(rem, 60 * 100)
    return f"{sign}{d:02d}:{m:02d}:{rem / 100.0:05.2f}"
