"""LS4 (La Silla Schmidt Southern Survey camera, ESO 1.0 m Schmidt, La Silla).

From the public description: 32 fully depleted CCDs of about 2k x 4k in four quadrants of eight, about
1.0"/pixel, two amplifiers per CCD, filters fixed per quadrant (two quadrants i, one g, one z), 45 s
exposures. CCD numbers 1..32, quadrant ``q = (n - 1) // 8 + 1``, names ``Q<q>C<k>`` (k = 1..8 within the
quadrant); quadrants 1 and 2 see i, 3 sees g, 4 sees z (each CCD's FILTER card says so).
"""

from __future__ import annotations

from seechange.instruments.base import Instrument

QUADRANT_FILTERS = {1: "i", 2: "i", 3: "g", 4: "z"}
"""Band of each quadrant."""


def quadrant(ccdnum: int) -> int:
    """Quadrant (1..4) of an LS4 CCD number (1..32)."""
    return (ccdnum - 1) // 8 + 1


LS4 = Instrument(
    name="LS4",
    telescope="ESO 1.0 m Schmidt, La Silla",
    pixel_scale=1.0,
    ccd_size=(2048, 4096),
    ccds={n: f"Q{quadrant(n)}C{(n - 1) % 8 + 1}" for n in range(1, 33)},
    filters={"g": "g", "i": "i", "z": "z"},
    amps=("A", "B"),
    aliases=("LS4CAM", "LA SILLA SCHMIDT"),
    skip_ccds=frozenset(),
    exptime_default=45.0,
    quadrant_filters=QUADRANT_FILTERS,
)


def ccd_band(ccdnum: int) -> str:
    """The band an LS4 CCD sees (fixed by its quadrant)."""
    return QUADRANT_FILTERS[quadrant(ccdnum)]
