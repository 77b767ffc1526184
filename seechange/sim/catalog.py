"""Static sky of one field: stars and small galaxies, and the field's reference catalogue.

Sources are drawn uniformly on the tangent plane of the field centre over the CCD footprint plus a
margin, with power-law number counts. The reference catalogue (``refcat/<field>.ecsv``) plays the role
of Gaia: stars only, brighter than ``REFCAT_MAG_LIMIT`` in r, with small position and magnitude noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from seechange.sim import seeds
from seechange.sim.instrument import BANDS, DEFAULT_SIZE, PIXEL_SCALE
from seechange.sim.sky import tan_to_sky

STARS_PER_FULL_CCD = 3500
"""Mean number of stars with r in [STAR_MAG_RANGE] on a full-size CCD."""
STAR_MAG_RANGE = (14.0, 24.0)
STAR_COUNT_SLOPE = 0.30
"""d log10 N / dm of the star counts."""
GALAXIES_PER_FULL_CCD = 1000
GALAXY_MAG_RANGE = (17.0, 24.0)
GALAXY_COUNT_SLOPE = 0.45
MARGIN_ARCSEC = 60.0
"""Sources are drawn this far beyond the CCD edges (pointing jitter, moving objects, stamps)."""

REFCAT_MAG_LIMIT = 21.0
"""Stars with r brighter than this are in the reference catalogue, AB mag."""
REFCAT_POS_SIGMA_MAS = 10.0
REFCAT_MAG_SIGMA = 0.01


@dataclass
class FieldCatalog:
    """The static sources of one field.

    Attributes
    ----------
    name : str
        Field name (``OBJECT`` header value, ``raw/<field>/`` folder).
    ra, dec : float
        Field centre, degrees.
    stars : astropy.table.Table
        id, ra, dec (deg), mag_g, mag_r, mag_i, mag_z (AB).
    galaxies : astropy.table.Table
        id, ra, dec (deg), mag_<band> (AB, total), r_eff (arcsec, major axis), q (axis ratio),
        pa (rad, from +x of an unrotated CCD), n (Sersic index).
    """

    name: str
    ra: float
    dec: float
    stars: Table
    galaxies: Table


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Magnitudes with dN/dm proportional to 10**(slope m) on [lo, hi]."""
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def _footprint(
    rng: np.random.Generator, n: int, size: tuple[int, int], ra: float, dec: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    half_x = size[0] * scale / 2.0 + MARGIN_ARCSEC
    half_y = size[1] * scale / 2.0 + MARGIN_ARCSEC
    xi = rng.uniform(-half_x, half_x, n) / 3600.0
    eta = rng.uniform(-half_y, half_y, n) / 3600.0
    return tan_to_sky(xi, eta, ra, dec)


def _area_factor(size: tuple[int, int], scale: float = PIXEL_SCALE) -> float:
    """Area of the drawn region relative to that of a full-size DECam CCD."""
    full = (DEFAULT_SIZE[0] * PIXEL_SCALE + 2 * MARGIN_ARCSEC) * (
        DEFAULT_SIZE[1] * PIXEL_SCALE + 2 * MARGIN_ARCSEC
    )
    this = (size[0] * scale + 2 * MARGIN_ARCSEC) * (size[1] * scale + 2 * MARGIN_ARCSEC)
    return this / full


def make_field_catalog(
    seed: int,
    field_index: int,
    name: str,
    ra: float,
    dec: float,
    size: tuple[int, int] = DEFAULT_SIZE,
    pixel_scale: float = PIXEL_SCALE,
) -> FieldCatalog:
    """Draw the stars and galaxies of one field.

    Parameters
    ----------
    seed : int
        Night seed.
    field_index : int
        Index of the field in the night (keys the random stream).
    name : str
        Field name.
    ra, dec : float
        Field centre (centre of the CCD at zero pointing offset), degrees.
    size : (int, int)
        Trimmed CCD size (nx, ny), pixels; the number of sources scales with the sky area.
    pixel_scale : float, optional
        Camera pixel scale, arcsec/pixel.

    Returns
    -------
    FieldCatalog
    """
    rng = seeds.rng_for(seed, seeds.FIELD_CATALOG, field_index)
    area = _area_factor(size, pixel_scale)

    n_stars = int(rng.poisson(STARS_PER_FULL_CCD * area))
    s_ra, s_dec = _footprint(rng, n_stars, size, ra, dec, pixel_scale)
    mag_r = _power_law_mags(rng, n_stars, *STAR_MAG_RANGE, STAR_COUNT_SLOPE)
    g_r = rng.uniform(0.25, 1.5, n_stars)
    r_i = 0.45 * g_r - 0.05 + rng.normal(0.0, 0.03, n_stars)
    i_z = 0.5 * r_i + rng.normal(0.0, 0.03, n_stars)
    stars = Table(
        {
            "id": np.arange(n_stars, dtype=np.int64),
            "ra": s_ra,
            "dec": s_dec,
            "mag_g": mag_r + g_r,
            "mag_r": mag_r,
            "mag_i": mag_r - r_i,
            "mag_z": mag_r - r_i - i_z,
        }
    )

    n_gal = int(rng.poisson(GALAXIES_PER_FULL_CCD * area))
    g_ra, g_dec = _footprint(rng, n_gal, size, ra, dec, pixel_scale)
    gmag_r = _power_law_mags(rng, n_gal, *GALAXY_MAG_RANGE, GALAXY_COUNT_SLOPE)
    gg_r = rng.uniform(0.4, 1.2, n_gal)
    gr_i = 0.4 * gg_r + rng.normal(0.0, 0.05, n_gal)
    gi_z = 0.3 * gr_i + rng.normal(0.0, 0.05, n_gal)
    # Brighter galaxies are larger: r_eff ~ 1.6" at r = 17 falling to ~0.4" at r = 24, with scatter.
    r_eff = 10.0 ** (0.2 - 0.085 * (gmag_r - 17.0) + rng.normal(0.0, 0.12, n_gal))
    galaxies = Table(
        {
            "id": np.arange(n_gal, dtype=np.int64) + 1_000_000,
            "ra": g_ra,
            "dec": g_dec,
            "mag_g": gmag_r + gg_r,
            "mag_r": gmag_r,
            "mag_i": gmag_r - gr_i,
            "mag_z": gmag_r - gr_i - gi_z,
            "r_eff": np.clip(r_eff, 0.25, 3.0),
            "q": rng.uniform(0.35, 1.0, n_gal),
            "pa": rng.uniform(0.0, np.pi, n_gal),
            "n": rng.choice(np.array([1.0, 1.0, 1.0, 1.5, 2.5]), n_gal),
        }
    )
    return FieldCatalog(name=name, ra=ra, dec=dec, stars=stars, galaxies=galaxies)


def reference_catalog(seed: int, field_index: int, catalog: FieldCatalog) -> Table:
    """The field's reference catalogue (Gaia-like): stars only, r < REFCAT_MAG_LIMIT, with noise.

    Parameters
    ----------
    seed : int
        Night seed.
    field_index : int
        Index of the field (keys the noise stream).
    catalog : FieldCatalog
        The field's true sources.

    Returns
    -------
    astropy.table.Table
        Columns ra, dec (deg, ICRS) and mag_g, mag_r, mag_i, mag_z (AB mag), sorted by mag_r.
        Positions carry 10 mas and magnitudes 0.01 mag of Gaussian noise.
    """
    rng = seeds.rng_for(seed, seeds.REFCAT, field_index)
    stars = catalog.stars[catalog.stars["mag_r"] < REFCAT_MAG_LIMIT]
    stars = stars[np.argsort(stars["mag_r"])]
    n = len(stars)
    sigma_deg = REFCAT_POS_SIGMA_MAS / 1000.0 / 3600.0
    dec = np.asarray(stars["dec"]) + rng.normal(0.0, sigma_deg, n)
    ra = (np.asarray(stars["ra"]) + rng.normal(0.0, sigma_deg, n) / np.cos(np.radians(dec))) % 360.0
    table = Table(
        {"ra": ra, "dec": dec},
        meta={
            "field": catalog.name,
            "description": "simulated reference catalogue (stars only); position noise "
            f"{REFCAT_POS_SIGMA_MAS} mas per axis, magnitude noise {REFCAT_MAG_SIGMA} mag",
            "mag_limit_r": REFCAT_MAG_LIMIT,
        },
    )
    table["ra"].unit = "deg"
    table["dec"].unit = "deg"
    for band in BANDS:
        table[f"mag_{band}"] = np.asarray(stars[f"mag_{band}"]) + rng.normal(0.0, REFCAT_MAG_SIGMA, n)
        table[f"mag_{band}"].unit = "mag"
    return table


def write_reference_catalog(path: Path, table: Table) -> None:
    """Write a reference catalogue as ECSV (overwriting), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.write(path, format="ascii.ecsv", overwrite=True)
