"""Shared pieces of the stage modules: image-row columns from an ImageData, file stems, data caches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from seechange.improc.types import ImageData
from seechange.spatial import healpix_index


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale of a celestial WCS, arcsec/pixel."""
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def image_columns(
    data: ImageData, *, filepath: str, provenance_id: str, field: str | None, section_id: str | None
) -> dict[str, Any]:
    """Column values shared by the three image tables (``ImageMixin``) for one product.

    Parameters
    ----------
    data : ImageData
        The product (its WCS gives centre and footprint).
    filepath : str
        Path stem relative to the data root.
    provenance_id, field, section_id : str
        Provenance and what the image is of.
    """
    ny, nx = data.shape
    corners = np.array([[0, 0], [0, ny - 1], [nx - 1, 0], [nx - 1, ny - 1]], dtype=float)
    world = data.wcs.all_pix2world(corners, 0)
    ra_c, dec_c = (float(v) for v in data.wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0])
    scale = pixel_scale_arcsec(data.wcs)
    meta = data.meta or {}
    header = data.wcs.to_header(relax=True)
    return {
        "filepath": filepath,
        "provenance_id": provenance_id,
        "mjd": float(data.mjd),
        "band": data.band,
        "field": field,
        "section_id": section_id,
        "ra": ra_c,
        "dec": dec_c,
        "ra_corner_00": float(world[0, 0]),
        "dec_corner_00": float(world[0, 1]),
        "ra_corner_01": float(world[1, 0]),
        "dec_corner_01": float(world[1, 1]),
        "ra_corner_10": float(world[2, 0]),
        "dec_corner_10": float(world[2, 1]),
        "ra_corner_11": float(world[3, 0]),
        "dec_corner_11": float(world[3, 1]),
        "healpix": healpix_index(ra_c, dec_c),
        "wcs_header": header.tostring(),
        "fwhm_arcsec": _finite(data.fwhm_px * scale),
        "bkg_level": _finite(data.bkg_level),
        "bkg_rms": _finite(data.bkg_rms),
        "zero_point": _finite(data.zp),
        "zero_point_err": _finite(meta.get("zp_err")),
        "lim_mag": _finite(meta.get("lim_mag")),
        "astrom_rms_arcsec": _finite(data.astrom_rms_arcsec),
        "n_stars": int(meta["n_stars"]) if meta.get("n_stars") is not None else None,
        "width": int(nx),
        "height": int(ny),
    }


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def product_stem(kind: str, provenance_id: str, name: str) -> str:
    """Relative stem ``<kind>/<prov8>/<name>`` of a product's files."""
    return str(Path(kind) / provenance_id[:8] / name)
