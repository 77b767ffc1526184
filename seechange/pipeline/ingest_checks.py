"""Validation at the door: everything later stages rely on, checked per CCD before any row is written.

Each check raises one member of the bad-input family with one line naming the card (the caller prefixes the
file and CCD): a readable 2-D image, sections inside the array, EXPTIME > 0, a parseable time (``MJD-OBS``,
else ``DATE-OBS``), RA in [0, 360) and Dec in [-90, 90] (decimal degrees or sexagesimal), a filter the
instrument knows, a usable WCS (or, for a single-CCD file, RA/DEC to build one from), and pixels that are not
all NaN or all one value.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from seechange.errors import ImpossibleValue
from seechange.improc.sections import parse_section, section_shape
from seechange.instruments import Instrument

__all__ = [
    "check_sections",
    "exposure_time",
    "observation_mjd",
    "optional_float",
    "parse_dec",
    "parse_ra",
    "pointing",
    "wcs_centre",
]

_SEXAGESIMAL = re.compile(r"^[+-]?\d+(\.\d*)?([:\s]\d+(\.\d*)?){1,2}$")


def _card(header: fits.Header, key: str) -> Any:
    value = header[key]
    return value.strip() if isinstance(value, str) else value


def exposure_time(header: fits.Header, key: str = "EXPTIME") -> float:
    """Exposure time, s: present, a number (string accepted), finite and > 0."""
    if key not in header:
        raise ImpossibleValue(f"missing header card {key}")
    value = _card(header, key)
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ImpossibleValue(f"{key} = {value!r} is not a number") from None
    if not math.isfinite(t) or t <= 0:
        raise ImpossibleValue(f"{key} = {value!r} must be > 0 s")
    return t


def observation_mjd(header: fits.Header, mjd_key: str = "MJD-OBS", date_key: str = "DATE-OBS") -> float:
    """Exposure start, MJD: ``MJD-OBS`` when present (it must parse), else ``DATE-OBS`` (ISO, UTC)."""
    if mjd_key in header:
        value = _card(header, mjd_key)
        try:
            mjd = float(value)
        except (TypeError, ValueError):
            raise ImpossibleValue(f"{mjd_key} = {value!r} is not an MJD") from None
        if not (math.isfinite(mjd) and 0.0 < mjd < 100000.0):
            raise ImpossibleValue(f"{mjd_key} = {value!r} is not a plausible MJD")
        return mjd
    if date_key in header:
        value = _card(header, date_key)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return float(Time(str(value), format="isot", scale="utc").mjd)
        except ValueError:
            raise ImpossibleValue(f"{date_key} = {value!r} is not an ISO date (and no {mjd_key})") from None
    raise ImpossibleValue(f"missing header cards {mjd_key} and {date_key}")


def _angle(value: Any, key: str, hours: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        deg = float(value)
    else:
        text = str(value).strip()
        try:
            if _SEXAGESIMAL.match(text):
                deg = Angle(text.replace(" ", ":"), unit="hourangle" if hours else "deg").deg
            else:
                deg = float(text)
        except ValueError:
            raise ImpossibleValue(f"{key} = {value!r} is not an angle") from None
    if not math.isfinite(deg):
        raise ImpossibleValue(f"{key} = {value!r} is not finite")
    return float(deg)


def parse_ra(value: Any, key: str = "RA") -> float:
    """RA in degrees from decimal degrees or sexagesimal hours (``'02:00:00.0'``); must be in [0, 360)."""
    ra = _angle(value, key, hours=True)
    if not 0.0 <= ra < 360.0:
        raise ImpossibleValue(f"{key} = {value!r} is outside [0, 360) deg")
    return ra


def parse_dec(value: Any, key: str = "DEC") -> float:
    """Dec in degrees from decimal or sexagesimal degrees (``'-20:00:00'``); must be in [-90, 90]."""
    dec = _angle(value, key, hours=False)
    if not -90.0 <= dec <= 90.0:
        raise ImpossibleValue(f"{key} = {value!r} is outside [-90, 90] deg")
    return dec


def pointing(header: fits.Header, inst: Instrument) -> tuple[float, float] | None:
    """(RA, Dec) deg of the first of the instrument's RA/DEC cards present (validated), or None."""
    ra_key = next((k for k in inst.ra_keys if k in header), None)
    dec_key = next((k for k in inst.dec_keys if k in header), None)
    if ra_key is None or dec_key is None:
        return None
    return parse_ra(header[ra_key], ra_key), parse_dec(header[dec_key], dec_key)


def wcs_centre(header: fits.Header, shape: tuple[int, int]) -> tuple[float, float] | None:
    """Sky position (deg) of the trimmed grid's centre from the header WCS; None when there is no WCS.

    Raises
    ------
    ImpossibleValue
        WCS cards present but unusable (astropy refuses them, or the centre is not finite / out of range).
    """
    if "CTYPE1" not in header or "CRVAL1" not in header:
        return None
    ny, nx = section_shape(str(header["DATASEC"])) if "DATASEC" in header else shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
            ra, dec = (float(v) for v in wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0])
    except Exception as exc:
        raise ImpossibleValue(f"unusable WCS (CTYPE/CRVAL/CRPIX/CD): {' '.join(str(exc).split())}") from exc
    if not wcs.has_celestial:
        raise ImpossibleValue(f"CTYPE1 = {header['CTYPE1']!r}: not a celestial WCS")
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise ImpossibleValue("CRVAL1/CRVAL2: the WCS gives no finite sky position for the CCD centre")
    ra %= 360.0
    if not -90.0 <= dec <= 90.0:
        raise ImpossibleValue(f"CRVAL2 = {header['CRVAL2']!r}: the WCS centre Dec {dec:.3f} is impossible")
    return ra, dec


def check_sections(header: fits.Header, shape: tuple[int, int], inst: Instrument) -> list[str]:
    """Check that every amplifier's data and overscan section (and DATASEC) lies inside the array.

    Returns
    -------
    list of str
        The amplifiers with a data section (at least one; each has its overscan section too).
    """
    ny, nx = shape
    amps = [a for a in inst.amps if inst.datasec_card(a) in header]
    if not amps:
        cards = "/".join(inst.datasec_card(a) for a in inst.amps)
        raise ImpossibleValue(f"missing header cards {cards} (amplifier data sections)")
    keys = ["DATASEC"] if "DATASEC" in header else []
    for a in amps:
        if inst.biassec_card(a) not in header:
            raise ImpossibleValue(f"missing header card {inst.biassec_card(a)} (overscan of amplifier {a})")
        keys += [inst.datasec_card(a), inst.biassec_card(a)]
    for key in keys:
        value = header[key]
        if not isinstance(value, str):
            raise ImpossibleValue(f"{key} = {value!r} is not a FITS section")
        x1, x2, y1, y2 = parse_section(value)
        if max(x1, x2) > nx or max(y1, y2) > ny:
            raise ImpossibleValue(f"{key} = {value!r} lies outside the {nx}x{ny} array")
    return amps


def optional_float(header: fits.Header, key: str) -> float | None:
    """A numeric optional card as a float; None when missing, blank or not a finite number."""
    if key not in header:
        return None
    try:
        value = float(_card(header, key))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
