"""FITS section strings ('[x1:x2,y1:y2]', 1-based inclusive) to numpy slices."""

from __future__ import annotations

import re

from seechange.errors import ImpossibleValue

__all__ = ["parse_section", "section_shape", "section_slices"]

_SECTION_RE = re.compile(r"^\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*$")


def parse_section(section: str) -> tuple[int, int, int, int]:
    """Parse a FITS section string.

    Parameters
    ----------
    section : str
        FITS section such as ``'[1:1024,1:4096]'`` (x = column first, 1-based, inclusive). The ranges may be
        reversed (``'[1024:1,1:4096]'``), meaning the data are read out in the opposite direction.

    Returns
    -------
    x1, x2, y1, y2 : int
        The four 1-based inclusive bounds, as written.

    Raises
    ------
    TypeError
        If ``section`` is not a string.
    ValueError
        If the string is not a valid section or a bound is < 1.
    """
    if not isinstance(section, str):
        raise TypeError(f"section must be a string, got {type(section).__name__}")
    m = _SECTION_RE.match(section)
    if m is None:
        raise ImpossibleValue(f"not a FITS section: {section!r}")
    x1, x2, y1, y2 = (int(g) for g in m.groups())
    if min(x1, x2, y1, y2) < 1:
        raise ImpossibleValue(f"FITS section bounds are 1-based: {section!r}")
    return x1, x2, y1, y2


def _axis_slice(a: int, b: int) -> slice:
    """1-based inclusive range (possibly reversed) to a 0-based numpy slice."""
    if a <= b:
        return slice(a - 1, b)
    # reversed: a down to b inclusive; the stop index b-2 is -1 when b == 1, which must be None
    return slice(a - 1, b - 2 if b >= 2 else None, -1)


def section_slices(section: str) -> tuple[slice, slice]:
    """Convert a FITS section to numpy slices.

    Parameters
    ----------
    section : str
        FITS section ``'[x1:x2,y1:y2]'`` (1-based inclusive).

    Returns
    -------
    (slice, slice)
        ``(rows, cols)`` for indexing a numpy array ``data[rows, cols]``. Reversed ranges give slices with
        step -1, so the selected pixels come out in the order the section lists them.
    """
    x1, x2, y1, y2 = parse_section(section)
    return _axis_slice(y1, y2), _axis_slice(x1, x2)


def section_shape(section: str) -> tuple[int, int]:
    """Shape ``(ny, nx)`` in pixels of the region a FITS section describes."""
    x1, x2, y1, y2 = parse_section(section)
    return abs(y2 - y1) + 1, abs(x2 - x1) + 1
