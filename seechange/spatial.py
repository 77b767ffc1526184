"""HEALPix indices for spatial look-ups on plain PostgreSQL (btree on a BigInteger column)."""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy_healpix import HEALPix

#: Fine index stored in every ``healpix`` column (about 3.2 arcsec pixels).
NSIDE_FINE = 2**16
#: Coarse pixels (about 55 arcmin) used to serialise association with advisory locks.
NSIDE_COARSE = 64

_FINE = HEALPix(nside=NSIDE_FINE, order="nested")
_COARSE = HEALPix(nside=NSIDE_COARSE, order="nested")


def healpix_index(ra: float, dec: float) -> int:
    """Fine nested HEALPix pixel (nside 2**16) of a position given in degrees."""
    return int(_FINE.lonlat_to_healpix(ra * u.deg, dec * u.deg))


def fine_pixels_in_cone(ra: float, dec: float, radius_arcsec: float) -> list[int]:
    """Fine pixels overlapping a cone (degrees, arcsec), for an ``IN (...)`` btree look-up."""
    pix = _FINE.cone_search_lonlat(ra * u.deg, dec * u.deg, radius=radius_arcsec * u.arcsec)
    return sorted(int(p) for p in np.atleast_1d(pix))


def coarse_pixels_in_cone(ra: float, dec: float, radius_arcsec: float) -> list[int]:
    """Coarse pixels (nside 64) overlapping a cone: the advisory-lock keys of an association."""
    pix = _COARSE.cone_search_lonlat(ra * u.deg, dec * u.deg, radius=radius_arcsec * u.arcsec)
    return sorted(int(p) for p in np.atleast_1d(pix))
