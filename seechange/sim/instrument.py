"""DECam-like instrument constants and the raw-frame geometry used by the simulator.

Everything here is a fixed property of the simulated camera; nothing depends on a seed.
The geometry follows ``docs/ARCHITECTURE.md`` ("Raw CCD FITS"): amplifier A's data on
the left, B's on the right, each amplifier with its own overscan strip on its outer edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INSTRUMENT = "DECam"
PIXEL_SCALE = 0.263
"""Pixel scale, arcsec/pixel."""

DEFAULT_SIZE = (2048, 4096)
"""Default trimmed CCD size (nx, ny), pixels."""

N_OVERSCAN = 50
"""Overscan width per amplifier, pixels (columns)."""

AMP_NAMES = ("A", "B")
GAIN = {"A": 3.9, "B": 4.1}
"""Gain per amplifier, e-/ADU."""
READ_NOISE = {"A": 6.8, "B": 7.2}
"""Read noise per amplifier, e-."""
SATURATION = {"A": 44800.0, "B": 45400.0}
"""Header saturation level per amplifier, ADU above the overscan level (SATURATA/B)."""
SATURATION_PLATEAU = 1.03
"""The digitised plateau of a full pixel is this factor above SATURATA/B (so it is always flagged)."""
BIAS_LEVEL = {"A": 1350.0, "B": 1620.0}
"""Mean overscan (electronic bias) level per amplifier, ADU."""
BIAS_DRIFT = {"A": 4.0, "B": -3.0}
"""Linear bias drift from the first to the last row, ADU (plus a weak sinusoid, see ``bias_level_rows``)."""

FULL_WELL_E = {amp: SATURATION[amp] * SATURATION_PLATEAU * GAIN[amp] for amp in AMP_NAMES}
"""Charge at which a pixel is full and bleeds along its column, e-."""

ZERO_POINT = {"g": 28.3, "r": 28.4, "i": 28.2, "z": 27.9}
"""AB magnitude giving 1 e-/s at airmass 1."""
EXTINCTION = {"g": 0.20, "r": 0.10, "i": 0.08, "z": 0.08}
"""Extinction coefficient, mag/airmass."""
SKY_MAG = {"g": 22.0, "r": 21.1, "i": 20.3, "z": 18.7}
"""Dark-time sky brightness, AB mag/arcsec^2."""
FILTER_NAME = {
    "g": "g DECam SDSS c0001 4720.0 1520.0",
    "r": "r DECam SDSS c0002 6415.0 1480.0",
    "i": "i DECam SDSS c0003 7835.0 1470.0",
    "z": "z DECam SDSS c0004 9260.0 1520.0",
}
BANDS = tuple(ZERO_POINT)

# DECam CCD numbering: rows of the focal plane from the south edge to the north edge.
_S_ROWS = (
    (29, 30, 31),
    (25, 26, 27, 28),
    (20, 21, 22, 23, 24),
    (14, 15, 16, 17, 18, 19),
    (8, 9, 10, 11, 12, 13),
    (1, 2, 3, 4, 5, 6, 7),
)
_N_ROWS = (
    (1, 2, 3, 4, 5, 6, 7),
    (8, 9, 10, 11, 12, 13),
    (14, 15, 16, 17, 18, 19),
    (20, 21, 22, 23, 24),
    (25, 26, 27, 28),
    (29, 30, 31),
)
_DETPOS: dict[int, str] = {}
for _n, _s in enumerate(s for row in _S_ROWS for s in row):
    _DETPOS[_n + 1] = f"S{_s}"
for _n, _s in enumerate(s for row in _N_ROWS for s in row):
    _DETPOS[_n + 32] = f"N{_s}"


def detpos(ccdnum: int) -> str:
    """DECam DETPOS name (e.g. 'N6') of a CCD number 1..62."""
    try:
        return _DETPOS[ccdnum]
    except KeyError:
        raise ValueError(f"CCDNUM must be 1..62, got {ccdnum}") from None


@dataclass(frozen=True)
class RawLayout:
    """Where each amplifier's data and overscan sit in the raw array.

    All slices are 0-based numpy column ranges of the raw array (rows are shared: all rows).
    ``trim_*`` are the amplifier's column ranges on the trimmed grid.

    Parameters
    ----------
    nx, ny : int
        Trimmed data size, pixels (nx must be even: two amplifiers of nx/2 columns).
    noverscan : int
        Overscan columns per amplifier.
    """

    nx: int
    ny: int
    noverscan: int = N_OVERSCAN

    def __post_init__(self) -> None:
        if self.nx % 2 or self.nx < 8 or self.ny < 8:
            raise ValueError(f"trimmed size must be even in x and at least 8x8, got {(self.nx, self.ny)}")

    @property
    def raw_shape(self) -> tuple[int, int]:
        """Raw array shape (rows, columns) = (ny, nx + 2 * noverscan)."""
        return (self.ny, self.nx + 2 * self.noverscan)

    def bias_cols(self, amp: str) -> slice:
        """Raw columns of the amplifier's overscan strip."""
        o, h = self.noverscan, self.nx // 2
        return slice(0, o) if amp == "A" else slice(o + 2 * h, 2 * o + 2 * h)

    def data_cols(self, amp: str) -> slice:
        """Raw columns of the amplifier's data section."""
        o, h = self.noverscan, self.nx // 2
        return slice(o, o + h) if amp == "A" else slice(o + h, o + 2 * h)

    def trim_cols(self, amp: str) -> slice:
        """Trimmed-grid columns read out by the amplifier."""
        h = self.nx // 2
        return slice(0, h) if amp == "A" else slice(h, 2 * h)

    def fits_section(self, cols: slice) -> str:
        """FITS ``[x1:x2,y1:y2]`` (1-based, inclusive) for a raw column range over all rows."""
        return f"[{cols.start + 1}:{cols.stop},1:{self.ny}]"

    def section_cards(self) -> dict[str, str]:
        """DATASECA/B, BIASSECA/B and DATASEC header values."""
        cards = {}
        for amp in AMP_NAMES:
            cards[f"DATASEC{amp}"] = self.fits_section(self.data_cols(amp))
            cards[f"BIASSEC{amp}"] = self.fits_section(self.bias_cols(amp))
        cards["DATASEC"] = self.fits_section(slice(self.noverscan, self.noverscan + self.nx))
        return cards


def bias_level_rows(amp: str, ny: int) -> np.ndarray:
    """Electronic bias (overscan) level of every row of one amplifier, ADU.

    The level is ``BIAS_LEVEL + BIAS_DRIFT * y / ny + 0.8 sin(2 pi y / ny * 1.5)``: smooth, a few
    ADU from end to end, the same in the overscan and the data columns of that row.

    Parameters
    ----------
    amp : {'A', 'B'}
        Amplifier.
    ny : int
        Number of rows.

    Returns
    -------
    ndarray, float32, shape (ny,)
        Level per row, ADU.
    """
    t = np.arange(ny, dtype=np.float64) / ny
    phase = 0.0 if amp == "A" else 1.3
    level = BIAS_LEVEL[amp] + BIAS_DRIFT[amp] * t + 0.8 * np.sin(2 * np.pi * 1.5 * t + phase)
    return level.astype(np.float32)
