"""HEALPix indices for spatial look-ups on plain PostgreSQL (btree on a BigInteger column); a simple TAN WCS."""

from __future__ import annotations

import math

import numpy as np
from astropy import units as u
from astropy.wcs import WCS
from astropy_healpix import HEALPix
from numpy.typing import ArrayLike

#: Fine index stored in every ``healpix`` column (about 3.2 arcsec pixels).
NSIDE_FINE = 2**16
#: Coarse pixels (about 55 arcmin) used to serialise association with advisory locks.
NSIDE_COARSE = 64

_FINE = HEALPix(nside=NSIDE_FINE, order="nested")
_COARSE = HEALPix(nside=NSIDE_COARSE, order="nested")


def healpix_index(ra: float, dec: float) -> int:
    """Fine nested HEALPix pixel (nside 2**16) of a position given in degrees."""
    return int(_FINE.lonlat_to_healpix(ra * u.deg, dec * u.deg))


def healpix_indices(ra: ArrayLike, dec: ArrayLike) -> np.ndarray:
    """`healpix_index` of many positions (degrees) in one call: the same pixels, int64, the shape of ``ra``.

    The per-call cost of `healpix_index` (units, about 0.15 ms) is paid once for the whole batch.
    """
    ra_a, dec_a = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    if ra_a.size == 0:
        return np.zeros(ra_a.shape, np.int64)
    return np.asarray(_FINE.lonlat_to_healpix(ra_a * u.deg, dec_a * u.deg), np.int64)


def fine_pixels_in_cone(ra: float, dec: float, radius_arcsec: float) -> list[int]:
    """Fine pixels overlapping a cone (degrees, arcsec), for an ``IN (...)`` btree look-up."""
    pix = _FINE.cone_search_lonlat(ra * u.deg, dec * u.deg, radius=radius_arcsec * u.arcsec)
    return sorted(int(p) for p in np.atleast_1d(pix))


def coarse_pixels_in_cone(ra: float, dec: float, radius_arcsec: float) -> list[int]:
    """Coarse pixels (nside 64) overlapping a cone: the advisory-lock keys of an association."""
    pix = _COARSE.cone_search_lonlat(ra * u.deg, dec * u.deg, radius=radius_arcsec * u.arcsec)
    return sorted(int(p) for p in np.atleast_1d(pix))


def tan_wcs(ra: float, dec: float, nx: int, ny: int, scale_arcsec: float, rotation_deg: float = 0.0) -> WCS:
    """A TAN WCS with (ra, dec) at the centre of an nx x ny grid, north up and east left.

    Parameters
    ----------
    ra, dec : float
        Sky position of the grid centre, deg.
    nx, ny : int
        Grid size, pixels.
    scale_arcsec : float
        Pixel scale, arcsec/pixel.
    rotation_deg : float, optional
        Rotation of the sky relative to the pixel axes, deg.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    s = scale_arcsec / 3600.0
    c, si = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    w.wcs.cd = np.array([[-s * c, s * si], [s * si, s * c]])
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (nx, ny)
    return w
