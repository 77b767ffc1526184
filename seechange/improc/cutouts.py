"""Postage stamps around sightings: in memory, in one multi-HDU FITS per subtraction, gzipped for alerts."""

from __future__ import annotations

import gzip
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from seechange.improc.types import ImageData

__all__ = ["cutout_to_gzipped_fits", "make_cutouts", "read_cutout", "write_cutouts_file"]


def _stamp(data: np.ndarray, wcs: WCS, x: float, y: float, size: int) -> tuple[np.ndarray, fits.Header]:
    c = Cutout2D(np.asarray(data, dtype=np.float32), (x, y), (size, size), wcs=wcs, mode="partial",
                 fill_value=np.nan, copy=True)
    hdr = c.wcs.to_header()
    hdr["XCEN"] = (float(x), "0-based x of the sighting in the parent image")
    hdr["YCEN"] = (float(y), "0-based y of the sighting in the parent image")
    return c.data.astype(np.float32), hdr


def make_cutouts(
    new: ImageData, ref: ImageData, diff: np.ndarray, positions: Sequence[tuple[float, float]], *,
    size: int = 51, diff_wcs: WCS | None = None,
) -> list[dict]:
    """Stamps of the new image, the (resampled) reference and the difference around each position.

    Parameters
    ----------
    new, ref : ImageData
        New image and reference on the same grid (electrons).
    diff : ndarray
        Difference image on that grid (electrons).
    positions : sequence of (x, y)
        0-based pixel positions.
    size : int, optional
        Odd stamp side, pixels; stamps crossing the frame edge are padded with NaN.
    diff_wcs : astropy.wcs.WCS, optional
        WCS of ``diff``; default ``new.wcs``.

    Returns
    -------
    list of dict
        Per position: ``{"new": (data, header), "ref": (...), "diff": (...)}`` with float32 stamps and a
        FITS header carrying the stamp's WCS.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError("size must be a positive odd integer")
    dw = new.wcs if diff_wcs is None else diff_wcs
    out = []
    for x, y in positions:
        out.append({
            "new": _stamp(new.image, new.wcs, x, y, size),
            "ref": _stamp(ref.image, ref.wcs, x, y, size),
            "diff": _stamp(diff, dw, x, y, size),
        })
    return out


def write_cutouts_file(path: Path | str, stamps_by_sighting: Mapping[int, dict]) -> None:
    """Write one multi-HDU FITS: HDUs ``SIG{idx}_NEW``, ``SIG{idx}_REF``, ``SIG{idx}_DIFF`` per sighting.

    Parameters
    ----------
    path : Path or str
        Output file (overwritten).
    stamps_by_sighting : mapping of int to dict
        Sighting id -> a dict as returned by :func:`make_cutouts`.
    """
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [fits.PrimaryHDU()]
    for idx, st in stamps_by_sighting.items():
        for key in ("new", "ref", "diff"):
            data, hdr = st[key]
            hdus.append(fits.ImageHDU(data=np.asarray(data, dtype=np.float32), header=hdr,
                                      name=f"SIG{idx}_{key.upper()}"))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def read_cutout(path: Path | str, hdu_name: str) -> tuple[np.ndarray, fits.Header]:
    """Read one stamp (native float32) and its header by HDU name."""
    with fits.open(path) as hdul:
        h = hdul[hdu_name]
        return np.asarray(h.data, dtype=np.float32), h.header.copy()


def cutout_to_gzipped_fits(data: np.ndarray, header: fits.Header | None = None) -> bytes:
    """A stamp as gzip-compressed single-HDU FITS bytes (ZTF-style alert cutout)."""
    buf = io.BytesIO()
    fits.PrimaryHDU(data=np.asarray(data, dtype=np.float32), header=header).writeto(buf)
    return gzip.compress(buf.getvalue(), mtime=0)
