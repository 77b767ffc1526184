"""Pack simulated CCDs into one file per exposure, as archives deliver them.

Formats: ``single`` (one CCD per file, the primary HDU), ``mef`` (an empty primary HDU carrying the
exposure-level cards, then one image extension per CCD with its own cards), ``mef-fz`` (the same with every
CCD tile-compressed, ``CompImageHDU`` with RICE_1, lossless for integer pixels: a ``.fits.fz`` file).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from astropy.io import fits

from seechange.imageio import write_fits_atomic

__all__ = ["EXPOSURE_CARDS", "FORMATS", "pack_exposure", "suffix_of", "write_exposure_file"]

FORMATS = ("single", "mef", "mef-fz")

EXPOSURE_CARDS = (
    "INSTRUME",
    "OBSTYPE",
    "EXPTIME",
    "MJD-OBS",
    "DATE-OBS",
    "AIRMASS",
    "TELRA",
    "TELDEC",
    "RA",
    "DEC",
    "OBJECT",
    "EXPNUM",
    "ORIGIN",
)
"""Cards that describe the exposure: in the primary header of a multi-extension file (the rest per CCD)."""

_STRUCTURAL = frozenset(
    {"SIMPLE", "EXTEND", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BSCALE", "BZERO", "PCOUNT", "GCOUNT"}
)


def suffix_of(fmt: str) -> str:
    """File-name ending of a format: ``.fits`` or ``.fits.fz``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return ".fits.fz" if fmt == "mef-fz" else ".fits"


def pack_exposure(ccds: Sequence[fits.PrimaryHDU | fits.ImageHDU], fmt: str) -> fits.HDUList:
    """One exposure's CCDs as an HDU list of the given format.

    Parameters
    ----------
    ccds : sequence of HDU
        Each CCD as rendered (pixels + its full header, exposure cards included).
    fmt : {'single', 'mef', 'mef-fz'}
        ``single`` needs exactly one CCD.

    Returns
    -------
    astropy.io.fits.HDUList
        Primary HDU (exposure cards and ``NEXTEND``, no data, for ``mef``/``mef-fz``) then one extension
        per CCD, named by its ``DETPOS`` (the CCD name) when present.
    """
    suffix_of(fmt)
    if fmt == "single":
        if len(ccds) != 1:
            raise ValueError(f"format 'single' holds one CCD, got {len(ccds)}")
        return fits.HDUList([fits.PrimaryHDU(data=ccds[0].data, header=ccds[0].header)])
    primary = fits.PrimaryHDU()
    primary.header["NEXTEND"] = (len(ccds), "Number of extensions")  # as DECam raw files carry it
    first = ccds[0].header
    for key in EXPOSURE_CARDS:
        if key in first:
            primary.header[key] = (first[key], first.comments[key])
    out = [primary]
    for ccd in ccds:
        header = fits.Header(
            [c for c in ccd.header.cards if c.keyword not in _STRUCTURAL and c.keyword not in EXPOSURE_CARDS]
        )
        name = str(header.get("DETPOS", f"CCD{len(out)}"))
        if fmt == "mef-fz":
            out.append(fits.CompImageHDU(data=ccd.data, header=header, name=name, compression_type="RICE_1"))
        else:
            out.append(fits.ImageHDU(data=ccd.data, header=header, name=name))
    return fits.HDUList(out)


def write_exposure_file(path: Path, ccds: Sequence[fits.PrimaryHDU | fits.ImageHDU], fmt: str) -> None:
    """Write :func:`pack_exposure` of ``ccds`` to ``path`` atomically."""
    write_fits_atomic(path, pack_exposure(ccds, fmt))
