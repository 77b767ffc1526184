"""Astrometric calibration: match extracted stars to a reference catalogue and fit a TAN(-SIP) WCS."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.spatial import cKDTree

__all__ = ["AstrometryResult", "find_offset", "fit_tan_sip", "load_refcat", "match_xy", "solve_astrometry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AstrometryResult:
    """Result of `solve_astrometry`.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Fitted celestial WCS (TAN, with SIP when requested and enough stars matched).
    rms_arcsec : float
        RMS of the 2-D separations between matched sources (through the fitted WCS) and reference stars,
        arcsec (radial, i.e. both axes combined; the per-axis RMS is this / sqrt(2)).
    n_matched : int
        Stars kept in the final fit.
    src_index, ref_index : ndarray of int
        Row indices into the source table and the reference catalogue of the final matched pairs.
    offset_px : tuple of float
        Initial (dx, dy) offset found between the header WCS and the sources, pixels.
    """

    wcs: WCS
    rms_arcsec: float
    n_matched: int
    src_index: np.ndarray
    ref_index: np.ndarray
    offset_px: tuple[float, float]


def load_refcat(refcat_dir: Path, ra: float, dec: float, radius_deg: float) -> Table:
    """Read every ``*.ecsv`` reference catalogue in a folder and keep the stars within a radius.

    Parameters
    ----------
    refcat_dir : Path
        Folder holding the ``<field>.ecsv`` files (columns ``ra``, ``dec`` in degrees and ``mag_<band>``).
    ra, dec : float
        Centre, degrees.
    radius_deg : float
        Radius, degrees.

    Returns
    -------
    astropy.table.Table
        The stars within the radius (empty, with a warning, if none).
    """
    files = sorted(Path(refcat_dir).glob("*.ecsv"))
    if not files:
        raise FileNotFoundError(f"no *.ecsv reference catalogue in {refcat_dir}")
    centre = SkyCoord(ra * u.deg, dec * u.deg)
    parts = []
    for f in files:
        t = Table.read(f, format="ascii.ecsv")
        if len(t) == 0:
            continue
        sep = centre.separation(SkyCoord(np.asarray(t["ra"]) * u.deg, np.asarray(t["dec"]) * u.deg)).deg
        if np.any(sep <= radius_deg):
            parts.append(t[sep <= radius_deg])
    if not parts:
        warnings.warn(
            f"load_refcat: no stars within {radius_deg} deg of ({ra}, {dec})", RuntimeWarning, stacklevel=2
        )
        return Table(names=["ra", "dec"], dtype=["f8", "f8"])
    out = vstack(parts, metadata_conflicts="silent") if len(parts) > 1 else parts[0]
    return out


def find_offset(
    src_xy: np.ndarray, ref_xy: np.ndarray, *, max_offset_px: float, bin_px: float = 2.0
) -> tuple[float, float, int]:
    """Most common pixel offset ``ref - src`` among all pairs, by a 2-D histogram vote.

    Parameters
    ----------
    src_xy, ref_xy : ndarray, shape (n, 2)
        Pixel positions of the (brightest) sources and of the reference stars projected with the header WCS.
    max_offset_px : float
        Largest offset searched, pixels.
    bin_px : float, optional
        Histogram bin, pixels.

    Returns
    -------
    dx, dy : float
        Offset to add to source positions to land on the reference positions, pixels.
    votes : int
        Pairs supporting it (within one bin of the peak).
    """
    d = (ref_xy[None, :, :] - src_xy[:, None, :]).reshape(-1, 2)
    d = d[(np.abs(d[:, 0]) <= max_offset_px) & (np.abs(d[:, 1]) <= max_offset_px)]
    if len(d) == 0:
        return 0.0, 0.0, 0
    edges = np.arange(-max_offset_px, max_offset_px + bin_px, bin_px)
    h, xe, ye = np.histogram2d(d[:, 0], d[:, 1], bins=[edges, edges])
    # sum 2x2 neighbouring bins so a peak split over a bin edge still wins
    h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
    i, j = np.unravel_index(np.argmax(h2), h2.shape)
    sel = (d[:, 0] >= xe[i]) & (d[:, 0] < xe[i + 2]) & (d[:, 1] >= ye[j]) & (d[:, 1] < ye[j + 2])
    return float(np.median(d[sel, 0])), float(np.median(d[sel, 1])), int(sel.sum())


def match_xy(src_xy: np.ndarray, ref_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference star within radius for each source, keeping one-to-one pairs only."""
    tree = cKDTree(ref_xy)
    d, j = tree.query(src_xy, k=1, distance_upper_bound=radius)
    i = np.nonzero(np.isfinite(d))[0]
    j = j[i]
    # one-to-one: for reference stars claimed twice keep the closest source
    order = np.argsort(d[i])
    _, first = np.unique(j[order], return_index=True)
    keep = order[first]
    return i[keep], j[keep]


def solve_astrometry(
    sources: Table,
    refcat: Table,
    wcs: WCS,
    *,
    band: str | None = None,
    max_offset_arcsec: float = 10.0,
    match_radius_arcsec: float = 1.0,
    n_bright: int = 200,
    min_snr: float = 10.0,
    sip_degree: int | None = 2,
    min_stars_sip: int = 40,
    clip_sigma: float = 3.0,
) -> AstrometryResult:
    """Match sources to the reference catalogue despite a pointing error and fit a new WCS.

    Parameters
    ----------
    sources : astropy.table.Table
        Extracted sources (x, y 0-based pixels, flux, snr, flag).
    refcat : astropy.table.Table
        Reference catalogue (ra, dec degrees; ``mag_<band>`` used to pick the brightest).
    wcs : astropy.wcs.WCS
        Approximate header WCS of the image.
    band : str, optional
        Band letter; the reference stars are ranked by ``mag_<band>`` when that column exists.
    max_offset_arcsec : float, optional
        Largest pointing error searched, arcsec.
    match_radius_arcsec : float, optional
        Final matching radius, arcsec (the search starts 3 times wider and shrinks).
    n_bright : int, optional
        Brightest sources and reference stars used for the offset vote.
    min_snr : float, optional
        Sources below this SNR are not used.
    sip_degree : int or None, optional
        SIP distortion degree, used when at least ``min_stars_sip`` stars match; None for pure TAN.
    min_stars_sip : int, optional
        Minimum matches for a SIP fit.
    clip_sigma : float, optional
        Outlier rejection threshold on the radial residual.

    Returns
    -------
    AstrometryResult

    Raises
    ------
    RuntimeError
        When fewer than 6 stars can be matched.
    """
    ok = (np.asarray(sources["flag"]) < 4) & (np.asarray(sources["snr"]) >= min_snr)
    if "pixflags" in sources.colnames:
        ok &= np.asarray(sources["pixflags"]) == 0
    src_idx = np.nonzero(ok)[0]
    src_xy = np.column_stack([np.asarray(sources["x"])[src_idx], np.asarray(sources["y"])[src_idx]])
    scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0  # arcsec / pixel
    ny, nx = wcs.array_shape if wcs.array_shape else (src_xy[:, 1].max() + 1, src_xy[:, 0].max() + 1)
    ref_ra, ref_dec = np.asarray(refcat["ra"], float), np.asarray(refcat["dec"], float)
    rx, ry = wcs.all_world2pix(ref_ra, ref_dec, 0)
    margin = max_offset_arcsec / scale + 5
    inside = (rx > -margin) & (rx < nx + margin) & (ry > -margin) & (ry < ny + margin)
    ref_idx = np.nonzero(inside & np.isfinite(rx))[0]
    ref_xy = np.column_stack([rx[ref_idx], ry[ref_idx]])
    if len(src_xy) < 6 or len(ref_xy) < 6:
        raise RuntimeError(f"astrometry: too few stars ({len(src_xy)} sources, {len(ref_xy)} reference)")
    bright_src = np.argsort(-np.asarray(sources["flux"])[src_idx])[:n_bright]
    mag_col = f"mag_{band}" if band and f"mag_{band}" in refcat.colnames else None
    if mag_col:
        m = np.asarray(refcat[mag_col], float)[ref_idx]
        bright_ref = np.argsort(np.where(np.isfinite(m), m, np.inf))[:n_bright]
    else:
        bright_ref = np.arange(min(n_bright, len(ref_xy)))
    dx, dy, votes = find_offset(
        src_xy[bright_src], ref_xy[bright_ref], max_offset_px=max_offset_arcsec / scale
    )
    log.debug("astrometry: offset (%.2f, %.2f) px from %d votes", dx, dy, votes)
    world = SkyCoord(ref_ra[ref_idx] * u.deg, ref_dec[ref_idx] * u.deg)
    fit = wcs.celestial.deepcopy()
    cur_xy = ref_xy - [dx, dy]  # reference stars in the source frame
    radius_px = match_radius_arcsec / scale
    keep = np.zeros(0, int)
    # fit_wcs_from_points costs ~0.05 s (TAN) to ~0.15 s (SIP) per call on a full CCD: two passes, few clips
    radii = (3 * radius_px, radius_px)
    for step, radius in enumerate(radii):
        i, j = match_xy(src_xy, cur_xy, radius)
        if len(i) < 6:
            raise RuntimeError(f"astrometry: only {len(i)} matches within {radius * scale:.2f} arcsec")
        # SIP only in the final pass (the TAN fit already gives good matches)
        last = step == len(radii) - 1
        deg = sip_degree if (last and sip_degree and len(i) >= min_stars_sip) else None
        keep = np.ones(len(i), bool)
        for _ in range(3):
            fit = _fit(src_xy[i[keep]], world[j[keep]], deg)
            resid = _residual_arcsec(fit, src_xy[i], world[j])
            rms = np.sqrt(np.mean(resid[keep] ** 2))
            new = resid < max(clip_sigma * rms, 1e-3)
            if np.array_equal(new, keep) or new.sum() < 6:
                break
            keep = new
        px, py = fit.all_world2pix(ref_ra[ref_idx], ref_dec[ref_idx], 0)
        cur_xy = np.column_stack([px, py])
    resid = _residual_arcsec(fit, src_xy[i[keep]], world[j[keep]])
    rms = float(np.sqrt(np.mean(resid**2)))
    fit.pixel_shape = (int(nx), int(ny))
    return AstrometryResult(
        wcs=fit,
        rms_arcsec=rms,
        n_matched=int(keep.sum()),
        src_index=src_idx[i[keep]],
        ref_index=ref_idx[j[keep]],
        offset_px=(dx, dy),
    )


def _fit(xy: np.ndarray, world: SkyCoord, sip_degree: int | None) -> WCS:
    return fit_tan_sip(xy, world, sip_degree=sip_degree)


def fit_tan_sip(
    xy: np.ndarray, world: SkyCoord, *, sip_degree: int | None = None, iterations: int = 4
) -> WCS:
    """Least-squares TAN (optionally SIP) WCS through matched pixel and sky positions, by linear algebra.

    The same model as ``astropy.wcs.utils.fit_wcs_from_points(..., projection="TAN")``: the tangent point
    (CRVAL) is the centre of the stars' bounding box on the sky; CRPIX, the CD matrix and the forward SIP
    polynomial (terms of order 2 to ``sip_degree``; the inverse AP/BP left at zero, as astropy leaves them)
    are fitted. Given CRPIX the model is linear in the CD and SIP coefficients (intermediate world
    coordinates ``CD (u + A(u, v))``), so it is solved with ``lstsq`` and CRPIX moved by the fitted constant
    term, a few times (the move shrinks quadratically). astropy's ``least_squares`` on the same model cost
    0.05 to 0.15 s per call (up to six calls per CCD); this costs about a millisecond. Residuals are
    minimised in the tangent plane (isotropic on the sky) rather than in (RA, Dec) degrees.

    Parameters
    ----------
    xy : ndarray, shape (n, 2)
        0-based pixel positions, pixels.
    world : SkyCoord
        The matching sky positions.
    sip_degree : int, optional
        SIP polynomial degree (>= 2), or None for pure TAN.
    iterations : int, optional
        CRPIX updates.

    Returns
    -------
    astropy.wcs.WCS
        Celestial WCS with CD matrix (``-SIP`` ctypes when fitted), pixel shape the stars' extent.
    """
    from astropy.wcs import Sip
    from astropy.wcs.utils import celestial_frame_to_wcs

    xp, yp = np.asarray(xy[:, 0], float), np.asarray(xy[:, 1], float)
    n_terms = (
        0
        if not sip_degree
        else sum(1 for i in range(sip_degree + 1) for j in range(sip_degree + 1) if 1 < i + j <= sip_degree)
    )
    if len(xp) < 3 + n_terms:
        raise RuntimeError(f"astrometry: {len(xp)} stars cannot constrain a TAN fit with {n_terms} SIP terms")
    lon, lat = world.spherical.lon.deg, world.spherical.lat.deg
    wcs = celestial_frame_to_wcs(frame=world.frame, projection="TAN")
    sc1 = SkyCoord(lon.min() * u.deg, lat.max() * u.deg, frame=world.frame)
    sc2 = SkyCoord(lon.max() * u.deg, lat.min() * u.deg, frame=world.frame)
    mid = sc1.directional_offset_by(sc1.position_angle(sc2), sc1.separation(sc2) / 2)
    wcs.wcs.crval = (mid.spherical.lon.deg, mid.spherical.lat.deg)
    iwc = _gnomonic(lon, lat, *wcs.wcs.crval)  # intermediate world coordinates, degrees
    xpmin, xpmax, ypmin, ypmax = xp.min(), xp.max(), yp.min(), yp.max()
    crpix = np.array([(xpmax + xpmin) / 2.0 + 1.0, (ypmax + ypmin) / 2.0 + 1.0])
    terms = (
        []
        if not sip_degree
        else [(i, j) for i in range(sip_degree + 1) for j in range(sip_degree + 1) if 1 < i + j <= sip_degree]
    )
    cd = np.eye(2)
    poly = np.zeros((2, len(terms)))
    for _ in range(max(1, iterations)):
        uu, vv = xp + 1.0 - crpix[0], yp + 1.0 - crpix[1]
        design = np.column_stack([uu, vv, *[uu**i * vv**j for i, j in terms], np.ones_like(uu)])
        coef, *_ = np.linalg.lstsq(design, iwc, rcond=None)  # (2 + n_terms + 1, 2)
        cd = coef[:2].T
        poly = np.linalg.solve(cd, coef[2 : 2 + len(terms)].T) if terms else poly
        shift = -np.linalg.solve(cd, coef[-1])  # pixel offset that absorbs the constant term
        crpix = crpix + shift
        if np.max(np.abs(shift)) < 1e-9:
            break
    wcs.wcs.crpix = crpix
    wcs.wcs.cd = cd
    wcs.pixel_shape = (
        1 if xpmax <= 0.0 else int(np.ceil(xpmax)),
        1 if ypmax <= 0.0 else int(np.ceil(ypmax)),
    )
    if terms:
        assert sip_degree is not None
        wcs.wcs.ctype = [c + "-SIP" for c in wcs.wcs.ctype]
        a = np.zeros((sip_degree + 1, sip_degree + 1))
        b = np.zeros((sip_degree + 1, sip_degree + 1))
        for k, (i, j) in enumerate(terms):
            a[i, j], b[i, j] = poly[0, k], poly[1, k]
        zeros = np.zeros_like(a)
        wcs.sip = Sip(a, b, zeros, zeros, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


def _gnomonic(lon: np.ndarray, lat: np.ndarray, lon0: float, lat0: float) -> np.ndarray:
    """Standard coordinates (xi, eta) of sky positions in the tangent plane at (lon0, lat0), degrees: the
    intermediate world coordinates of a FITS TAN projection with the default LONPOLE."""
    a, d = np.radians(lon - lon0), np.radians(lat)
    d0 = np.radians(lat0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cos_c
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) / cos_c
    return np.degrees(np.column_stack([xi, eta]))


def _residual_arcsec(wcs: WCS, xy: np.ndarray, world: SkyCoord) -> np.ndarray:
    ra, dec = wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
    return SkyCoord(ra * u.deg, dec * u.deg).separation(world).arcsec
