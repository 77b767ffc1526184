"""Time-variable sources: supernova-like transients, variable stars and one moving object per field.

Transient and moving-object flux is exactly zero up to the end of a field's last reference epoch
(the first ``n_ref_epochs`` epochs), so references built from those epochs are clean. Variable
stars vary in every epoch (they are ordinary stars that the reference also contains).
Light curves are evaluated at mid-exposure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from seechange.sim import seeds
from seechange.sim.catalog import FieldCatalog
from seechange.sim.instrument import DEFAULT_SIZE, PIXEL_SCALE
from seechange.sim.sky import offset_sky

TRANSIENTS_PER_FULL_CCD = 25
VARIABLES_PER_FULL_CCD = 10
MIN_PER_KIND = 3
EDGE_MARGIN_PX = 60
"""Time-variable sources are placed at least this far inside the CCD edges, pixels."""


@dataclass(frozen=True)
class SupernovaLike:
    """A transient with a quadratic rise from ``t_start`` to ``t_peak`` then a linear decline in magnitude.

    Attributes
    ----------
    id : int
    field : str
    ra, dec : float
        Degrees.
    peak_mag : float
        AB mag at ``t_peak``.
    t_start, t_peak : float
        MJD of explosion (zero flux before) and of peak.
    decline : float
        Decline rate after peak, mag/day.
    host_id : int
        Galaxy id of the host, or -1 for a hostless transient.
    host_offset_arcsec : float
        Distance from the host's centre, arcsec (0 when hostless).
    """

    id: int
    field: str
    ra: float
    dec: float
    peak_mag: float
    t_start: float
    t_peak: float
    decline: float
    host_id: int = -1
    host_offset_arcsec: float = 0.0
    kind: str = "transient"

    def mag_at(self, mjd: float) -> float:
        """AB magnitude at ``mjd`` (``inf`` = no flux)."""
        if mjd <= self.t_start:
            return math.inf
        if mjd < self.t_peak:
            frac = (mjd - self.t_start) / (self.t_peak - self.t_start)
            return self.peak_mag - 5.0 * math.log10(frac)
        return self.peak_mag + self.decline * (mjd - self.t_peak)

    def position_at(self, mjd: float) -> tuple[float, float]:
        """(ra, dec) in degrees at ``mjd`` (fixed)."""
        return self.ra, self.dec

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return asdict(self)


@dataclass(frozen=True)
class VariableStar:
    """A star whose flux is ``F0 (1 + amplitude sin(2 pi (t - t_ref) / period + phase))``.

    Attributes
    ----------
    mean_mag : float
        AB mag of the mean flux F0.
    amplitude : float
        Fractional flux amplitude (0 < a < 1).
    period : float
        Days.
    phase : float
        Radians at ``t_ref`` (MJD).
    """

    id: int
    field: str
    ra: float
    dec: float
    mean_mag: float
    amplitude: float
    period: float
    phase: float
    t_ref: float
    kind: str = "variable"

    def mag_at(self, mjd: float) -> float:
        """AB magnitude at ``mjd``."""
        s = math.sin(2.0 * math.pi * (mjd - self.t_ref) / self.period + self.phase)
        return self.mean_mag - 2.5 * math.log10(1.0 + self.amplitude * s)

    def position_at(self, mjd: float) -> tuple[float, float]:
        """(ra, dec) in degrees at ``mjd`` (fixed)."""
        return self.ra, self.dec

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return asdict(self)


@dataclass(frozen=True)
class MovingObject:
    """A point source moving linearly on the sky, absent up to ``t_start``.

    Attributes
    ----------
    ra, dec : float
        Position at ``t_ref`` (MJD), degrees.
    rate_east, rate_north : float
        Motion, arcsec/hour (east = increasing RA on the sky).
    mag : float
        AB mag (constant).
    t_start : float
        MJD up to which the object contributes no flux (end of the reference epochs).
    """

    id: int
    field: str
    ra: float
    dec: float
    t_ref: float
    rate_east: float
    rate_north: float
    mag: float
    t_start: float
    kind: str = "moving"

    def mag_at(self, mjd: float) -> float:
        """AB magnitude at ``mjd`` (``inf`` before ``t_start``)."""
        return math.inf if mjd <= self.t_start else self.mag

    def position_at(self, mjd: float) -> tuple[float, float]:
        """(ra, dec) in degrees at ``mjd``."""
        hours = (mjd - self.t_ref) * 24.0
        return offset_sky(self.ra, self.dec, self.rate_east * hours, self.rate_north * hours)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return asdict(self)


TimeVariable = SupernovaLike | VariableStar | MovingObject


def _inside_offsets(
    rng: np.random.Generator, n: int, size: tuple[int, int], margin_px: float, pixel_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform tangent-plane offsets (east, north) inside the CCD shrunk by a margin, arcsec."""
    hx = (size[0] / 2.0 - margin_px) * pixel_scale
    hy = (size[1] / 2.0 - margin_px) * pixel_scale
    return rng.uniform(-hx, hx, n), rng.uniform(-hy, hy, n)


def make_time_variables(
    seed: int,
    field_index: int,
    catalog: FieldCatalog,
    epoch_mjds: list[float],
    night_mjds: tuple[float, float],
    exptime: float,
    n_ref_epochs: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    pixel_scale: float = PIXEL_SCALE,
    peak_mag_range: tuple[float, float] = (19.0, 23.0),
) -> list[TimeVariable]:
    """Draw the transients, variable stars and the moving object of one field.

    Parameters
    ----------
    seed : int
        Night seed.
    field_index : int
        Index of the field (keys the random stream).
    catalog : FieldCatalog
        The field's static sources (hosts are drawn from its galaxies).
    epoch_mjds : list of float
        Start MJD of each of this field's epochs, in order.
    night_mjds : (float, float)
        First and last exposure start MJD of the whole night (the moving object stays on the CCD).
    exptime : float
        Exposure time, s.
    n_ref_epochs : int
        Number of leading epochs with no transient or moving-object flux.
    size : (int, int)
        Trimmed CCD size (nx, ny), pixels.
    pixel_scale : float, optional
        Camera pixel scale, arcsec/pixel.
    peak_mag_range : (float, float), optional
        Range of the transients' peak AB magnitudes (the camera's ``transient_peak_mag``).

    Returns
    -------
    list of SupernovaLike, VariableStar, MovingObject
    """
    rng = seeds.rng_for(seed, seeds.TRANSIENTS, field_index)
    margin = min(EDGE_MARGIN_PX, min(size) / 4.0)
    area = size[0] * size[1] / (DEFAULT_SIZE[0] * DEFAULT_SIZE[1])
    n_sn = max(MIN_PER_KIND, round(TRANSIENTS_PER_FULL_CCD * area))
    n_var = max(MIN_PER_KIND, round(VARIABLES_PER_FULL_CCD * area))
    day = exptime / 86400.0
    n_ref = max(0, min(n_ref_epochs, len(epoch_mjds)))
    t_clean = epoch_mjds[n_ref - 1] + day if n_ref > 0 else epoch_mjds[0] - 0.02
    t_next = epoch_mjds[n_ref] if n_ref < len(epoch_mjds) else t_clean + 0.02
    out: list[TimeVariable] = []

    # Hosts: galaxies well inside the CCD (field-centre tangent plane; pointing jitter is small).
    gal = catalog.galaxies
    east, north = _galaxy_offsets(gal["ra"], gal["dec"], catalog.ra, catalog.dec)
    hx = (size[0] / 2.0 - margin) * pixel_scale
    hy = (size[1] / 2.0 - margin) * pixel_scale
    hosts = np.flatnonzero((np.abs(east) < hx) & (np.abs(north) < hy) & (gal["mag_r"] < 22.5))
    hosted = rng.random(n_sn) < 0.5
    fe, fn = _inside_offsets(rng, n_sn, size, margin, pixel_scale)
    for k in range(n_sn):
        t_start = float(rng.uniform(t_clean, t_next))
        t_start = max(t_start, t_clean + 1e-6)
        rise = float(rng.uniform(0.003, 0.03))
        host_id, offset = -1, 0.0
        if hosted[k] and hosts.size:
            h = int(rng.choice(hosts))
            offset = float(gal["r_eff"][h] * rng.uniform(0.3, 1.5))
            ang = rng.uniform(0.0, 2 * np.pi)
            ra, dec = offset_sky(
                float(gal["ra"][h]), float(gal["dec"][h]), offset * math.cos(ang), offset * math.sin(ang)
            )
            host_id = int(gal["id"][h])
        else:
            ra, dec = offset_sky(catalog.ra, catalog.dec, float(fe[k]), float(fn[k]))
        out.append(
            SupernovaLike(
                id=2_000_000 + k,
                field=catalog.name,
                ra=ra,
                dec=dec,
                peak_mag=float(rng.uniform(*peak_mag_range)),
                t_start=t_start,
                t_peak=t_start + rise,
                decline=float(rng.uniform(0.3, 3.0)),
                host_id=host_id,
                host_offset_arcsec=offset,
            )
        )

    ve, vn = _inside_offsets(rng, n_var, size, margin, pixel_scale)
    for k in range(n_var):
        ra, dec = offset_sky(catalog.ra, catalog.dec, float(ve[k]), float(vn[k]))
        out.append(
            VariableStar(
                id=3_000_000 + k,
                field=catalog.name,
                ra=ra,
                dec=dec,
                mean_mag=float(rng.uniform(17.0, 21.0)),
                amplitude=float(rng.uniform(0.1, 0.5)),
                period=float(rng.uniform(0.04, 0.5)),
                phase=float(rng.uniform(0.0, 2 * np.pi)),
                t_ref=float(epoch_mjds[0]),
            )
        )

    span_h = (night_mjds[1] + day - night_mjds[0]) * 24.0
    speed = float(rng.uniform(2.0, 6.0))
    ang = float(rng.uniform(0.0, 2 * np.pi))
    ve_, vn_ = speed * math.cos(ang), speed * math.sin(ang)
    # Track centre (mid-night) kept so that both ends stay inside the CCD with a margin.
    half_e, half_n = abs(ve_) * span_h / 2.0, abs(vn_) * span_h / 2.0
    hx = max((size[0] / 2.0 - margin) * pixel_scale - half_e, 0.0)
    hy = max((size[1] / 2.0 - margin) * pixel_scale - half_n, 0.0)
    ce, cn = float(rng.uniform(-hx, hx)), float(rng.uniform(-hy, hy))
    t_mid = (night_mjds[0] + night_mjds[1] + day) / 2.0
    ra, dec = offset_sky(catalog.ra, catalog.dec, ce, cn)
    out.append(
        MovingObject(
            id=4_000_000,
            field=catalog.name,
            ra=ra,
            dec=dec,
            t_ref=t_mid,
            rate_east=ve_,
            rate_north=vn_,
            mag=float(rng.uniform(18.5, 21.0)),
            t_start=t_clean,
        )
    )
    return out


def _galaxy_offsets(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0): (east, north) offsets in arcsec."""
    a, d = np.radians(np.asarray(ra) - ra0), np.radians(np.asarray(dec))
    d0 = math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0
