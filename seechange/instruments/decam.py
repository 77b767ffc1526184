"""DECam (Dark Energy Camera, Blanco 4 m, CTIO): 62 science CCDs of 2048x4096, 0.263"/px, two amplifiers.

CCD numbers 1..31 are the S chips and 32..62 the N chips (``DETPOS`` ``S1``..``S31``, ``N1``..``N31``),
numbered by focal-plane row from the south edge to the north edge; the guide (``FS1``..``FS4``,
``FN1``..``FN4``) and focus CCDs are never science. S30 (dead since 2013) and N30 (unreliable) are skipped
by default. Raw files from the NOIRLab archive: ``c4d_YYMMDD_HHMMSS_ori.fits.fz``, primary header plus one
tile-compressed extension per CCD with ``DATASECA/B``, ``BIASSECA/B``, ``GAINA/B``, ``RDNOISEA/B``,
``SATURATA/B``.
"""

from __future__ import annotations

from seechange.instruments.base import Instrument

_S_ROWS = (
    (29, 30, 31),
    (25, 26, 27, 28),
    (20, 21, 22, 23, 24),
    (14, 15, 16, 17, 18, 19),
    (8, 9, 10, 11, 12, 13),
    (1, 2, 3, 4, 5, 6, 7),
)
_N_ROWS = tuple(reversed(_S_ROWS))


def _ccds() -> dict[int, str]:
    out: dict[int, str] = {}
    for n, s in enumerate(s for row in _S_ROWS for s in row):
        out[n + 1] = f"S{s}"
    for n, s in enumerate(s for row in _N_ROWS for s in row):
        out[n + 32] = f"N{s}"
    return out


FOCAL_PLANE_ROWS: tuple[tuple[int, ...], ...] = tuple(
    tuple(num for num, name in _ccds().items() if name in {f"{side}{s}" for s in row})
    for side, rows in (("S", _S_ROWS), ("N", _N_ROWS))
    for row in rows
)
"""CCD numbers by focal-plane row, from the south edge to the north edge."""

DECAM = Instrument(
    name="DECam",
    telescope="Blanco 4 m, CTIO",
    pixel_scale=0.263,
    ccd_size=(2048, 4096),
    ccds=_ccds(),
    filters={"u": "u", "g": "g", "r": "r", "i": "i", "z": "z", "y": "Y", "vr": "VR"},
    amps=("A", "B"),
    aliases=("DECAM",),
    never_science=("F",),
    skip_ccds=frozenset({"S30", "N30"}),
    exptime_default=60.0,
)


#: Community Pipeline data-quality mask (``*_ood_*``) codes -> our flag bits (``seechange.improc.types``).
#: The CP writes one code per pixel (not bits): 1 bad pixel (bad-pixel mask), 2 bad (no data), 3 saturated,
#: 4 bleed trail, 5 cosmic ray, 6 low weight, 7 multi-exposure difference detection, 8 long streak
#: (satellite). Code 7 marks where the CP saw a change between exposures: a transient pipeline must not mask
#: it, so it maps to no flag. See docs/INSTRUMENTS.md.
CP_MASK_CODES: dict[int, int] = {1: 1, 2: 1, 3: 2, 4: 8, 5: 4, 6: 1, 7: 0, 8: 1}
