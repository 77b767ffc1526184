"""What the pipeline knows about a camera: one :class:`Instrument` per module of this package.

An instrument definition is data, not code paths: focal-plane layout (CCD numbers and names), the header
keywords that carry each quantity, the filter-to-band map, the pixel scale, the per-amplifier electronics
cards and the CCDs not to process. Stages look values up here (or in the image) instead of assuming DECam.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from astropy.io import fits

from seechange.errors import ImpossibleValue

__all__ = ["Instrument", "UnknownFilter"]


class UnknownFilter(ImpossibleValue):
    """A FILTER card the instrument does not know (one line naming the value and the instrument)."""


@dataclass(frozen=True)
class Instrument:
    """One camera.

    Attributes
    ----------
    name : str
        Canonical name, as stored in ``Exposure.instrument`` (e.g. ``"DECam"``).
    aliases : tuple of str
        Upper-case ``INSTRUME`` values that mean this camera (the canonical name upper-cased is implied).
    telescope : str
        Telescope and site (for ``seechange instruments``).
    pixel_scale : float
        Nominal pixel scale, arcsec/pixel (used when an image carries no WCS to measure it from).
    ccd_size : (int, int)
        Nominal trimmed CCD size (nx, ny), pixels.
    ccds : Mapping[int, str]
        Science CCDs: CCD number (the ``ccdnum_key`` card) -> CCD name (the ``ccdname_key`` card).
    amps : tuple of str
        Amplifier suffixes of the per-amplifier cards (``DATASECA``, ``GAINA``, ...).
    filters : Mapping[str, str]
        First word of the FILTER card, lower-cased -> band.
    never_science : tuple of str
        Prefixes of CCD names that are never science CCDs (guide, focus, wavefront): skipped with a log line.
    skip_ccds : frozenset of str
        CCD names skipped by default (dead or unreliable); configurable per call.
    exptime_default : float
        Typical exposure time, s (the simulator's default).
    """

    name: str
    telescope: str
    pixel_scale: float
    ccd_size: tuple[int, int]
    ccds: Mapping[int, str]
    filters: Mapping[str, str]
    amps: tuple[str, ...] = ("A", "B")
    aliases: tuple[str, ...] = ()
    never_science: tuple[str, ...] = ()
    skip_ccds: frozenset[str] = frozenset()
    exptime_default: float = 60.0
    ccdnum_key: str = "CCDNUM"
    ccdname_key: str = "DETPOS"
    expnum_keys: tuple[str, ...] = ("EXPNUM", "OBSID")
    filter_key: str = "FILTER"
    exptime_key: str = "EXPTIME"
    mjd_key: str = "MJD-OBS"
    date_key: str = "DATE-OBS"
    ra_keys: tuple[str, ...] = ("RA", "TELRA")
    dec_keys: tuple[str, ...] = ("DEC", "TELDEC")
    quadrant_filters: Mapping[int, str] = field(default_factory=dict)

    # --- per-amplifier card names ---------------------------------------------------------------------

    def gain_card(self, amp: str) -> str:
        """Card of amplifier ``amp``'s gain, e-/ADU."""
        return f"GAIN{amp}"

    def read_noise_card(self, amp: str) -> str:
        """Card of amplifier ``amp``'s read noise, e-."""
        return f"RDNOISE{amp}"

    def saturation_card(self, amp: str) -> str:
        """Card of amplifier ``amp``'s saturation level, ADU."""
        return f"SATURAT{amp}"

    def datasec_card(self, amp: str) -> str:
        """Card of amplifier ``amp``'s data section."""
        return f"DATASEC{amp}"

    def biassec_card(self, amp: str) -> str:
        """Card of amplifier ``amp``'s overscan section."""
        return f"BIASSEC{amp}"

    # --- lookups ----------------------------------------------------------------------------------------

    def matches(self, instrume: str) -> bool:
        """True when an ``INSTRUME`` value (any case, padded) names this camera."""
        value = instrume.strip().upper()
        return value == self.name.upper() or value in self.aliases

    def band(self, filter_value: str) -> str:
        """Band of a FILTER card value (e.g. ``'r DECam SDSS c0002 6415.0 1480.0'`` -> ``'r'``).

        Raises
        ------
        UnknownFilter
            Empty, or a first word the instrument does not know.
        """
        words = str(filter_value).split()
        band = self.filters.get(words[0].lower()) if words else None
        if band is None:
            known = ", ".join(sorted(set(self.filters.values())))
            raise UnknownFilter(
                f"FILTER = {str(filter_value).strip()!r} is not a {self.name} filter ({known})"
            )
        return band

    def ccd_name(self, ccdnum: int) -> str:
        """Name of a science CCD number (e.g. DECam 35 -> ``'N4'``); ValueError for an unknown number."""
        try:
            return self.ccds[ccdnum]
        except KeyError:
            raise ValueError(f"{self.name} has no science CCD number {ccdnum}") from None

    def ccd_number(self, name: str) -> int:
        """Number of a science CCD name (inverse of :meth:`ccd_name`)."""
        for num, n in self.ccds.items():
            if n == name:
                return num
        raise ValueError(f"{self.name} has no science CCD named {name!r}")

    def identify_ccd(self, header: fits.Header) -> tuple[int | None, str | None]:
        """(CCD number, CCD name) from a merged header; either may be None when its card is missing."""
        num = header.get(self.ccdnum_key)
        name = header.get(self.ccdname_key)
        number = (
            int(num)
            if isinstance(num, int | float) or (isinstance(num, str) and num.strip().isdigit())
            else None
        )
        cname = str(name).strip().upper() if name is not None else None
        if cname is None and number is not None:
            cname = self.ccds.get(number)
        if number is None and cname is not None:
            number = next((k for k, v in self.ccds.items() if v == cname), None)
        return number, cname

    def skip_reason(self, name: str | None, skip: frozenset[str] | None = None) -> str | None:
        """Why a CCD is not processed (guide/focus CCD, or in the skip list), or None to process it."""
        if name is None:
            return None
        if any(name.startswith(p) for p in self.never_science):
            return f"{name} is a guide/focus CCD"
        if name in (self.skip_ccds if skip is None else skip):
            return f"{name} is in the skip list"
        return None

    def describe(self) -> str:
        """One line for ``seechange instruments``."""
        order = ["u", "g", "r", "i", "z", "Y"]
        bands = ",".join(sorted(set(self.filters.values()), key=lambda b: (order + [b]).index(b)))
        skip = ",".join(sorted(self.skip_ccds)) or "none"
        return (
            f"{self.name:<6} {self.telescope}; {len(self.ccds)} science CCDs of {self.ccd_size[0]}x"
            f'{self.ccd_size[1]}, {self.pixel_scale:g}"/px, {len(self.amps)} amps/CCD, bands {bands}, '
            f"skipped by default: {skip}"
        )
