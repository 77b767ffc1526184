"""Instrument definitions and the registry that finds one from a header's ``INSTRUME`` card.

A third camera is a new module defining an :class:`~seechange.instruments.base.Instrument` and one line in
``INSTRUMENTS`` below.
"""

from __future__ import annotations

from astropy.io import fits

from seechange.errors import ImpossibleValue
from seechange.instruments.base import Instrument, UnknownFilter
from seechange.instruments.decam import DECAM
from seechange.instruments.ls4 import LS4

__all__ = [
    "DECAM",
    "INSTRUMENTS",
    "LS4",
    "Instrument",
    "UnknownFilter",
    "UnknownInstrument",
    "get_instrument",
    "instrument_of_header",
]

INSTRUMENTS: tuple[Instrument, ...] = (DECAM, LS4)
"""Every known camera."""


class UnknownInstrument(ImpossibleValue):
    """An ``INSTRUME`` value no definition claims (one line naming it)."""


def get_instrument(name: str) -> Instrument:
    """The instrument whose name or alias is ``name`` (any case, padded).

    Raises
    ------
    UnknownInstrument
        No known camera has that name.
    """
    for inst in INSTRUMENTS:
        if inst.matches(str(name)):
            return inst
    known = ", ".join(i.name for i in INSTRUMENTS)
    raise UnknownInstrument(f"INSTRUME = {str(name).strip()!r} is not a known instrument ({known})")


def instrument_of_header(header: fits.Header) -> Instrument:
    """The instrument of a (merged) header, from its ``INSTRUME`` card.

    Raises
    ------
    UnknownInstrument
        The card is missing or names no known camera.
    """
    if "INSTRUME" not in header:
        raise UnknownInstrument("missing header card INSTRUME")
    return get_instrument(str(header["INSTRUME"]))
