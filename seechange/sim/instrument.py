"""Simulated cameras (DECam, LS4: their instrument definitions plus electronics and sky) and the raw geometry.

Everything here is a fixed property of the simulated camera; nothing depends on a seed.
The geometry follows ``docs/ARCHITECTURE.md`` ("Raw CCD FITS"): amplifier A's data on
the left, B's on the right, each amplifier with its own overscan strip on its outer edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seechange.instruments import DECAM, LS4, Instrument
from seechange.instruments.decam import FOCAL_PLANE_ROWS

INSTRUMENT = DECAM.name
PIXEL_SCALE = DECAM.pixel_scale
"""Pixel scale, arcsec/pixel (DECam, from the instrument definition)."""

DEFAULT_SIZE = DECAM.ccd_size
"""Default trimmed CCD size (nx, ny), pixels."""

N_OVERSCAN = 50
"""Overscan width per amplifier, pixels (columns)."""

AMP_NAMES = DECAM.amps
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


@dataclass(frozen=True)
class SimCamera:
    """A simulated camera: its instrument definition plus the electronics and sky the simulator draws from.

    Attributes
    ----------
    definition : Instrument
        The pipeline's definition (name, pixel scale, CCDs, amplifiers, filters).
    gain, read_noise, saturation, bias_level, bias_drift : dict
        Per amplifier: e-/ADU, e-, ADU above the overscan, ADU, ADU from first to last row.
    zero_point, extinction, sky_mag : dict
        Per band: AB mag of 1 e-/s at airmass 1, mag/airmass, dark-sky AB mag/arcsec^2.
    filter_name : dict
        Per band: the FILTER card written.
    seeing_arcsec : (float, float)
        Range of the FWHM drawn per exposure, arcsec.
    transient_peak_mag : (float, float)
        Range of the injected transients' peak AB magnitudes (uniform), set by the camera's depth.
    """

    definition: Instrument
    gain: dict[str, float]
    read_noise: dict[str, float]
    saturation: dict[str, float]
    bias_level: dict[str, float]
    bias_drift: dict[str, float]
    zero_point: dict[str, float]
    extinction: dict[str, float]
    sky_mag: dict[str, float]
    filter_name: dict[str, str]
    seeing_arcsec: tuple[float, float]
    transient_peak_mag: tuple[float, float] = (19.0, 23.0)

    @property
    def name(self) -> str:
        """Instrument name (``INSTRUME``)."""
        return self.definition.name

    @property
    def pixel_scale(self) -> float:
        """Arcsec/pixel."""
        return self.definition.pixel_scale

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands the camera can simulate."""
        return tuple(self.zero_point)

    def full_well_e(self, amp: str) -> float:
        """Charge at which a pixel of ``amp`` is full and bleeds, e-."""
        return self.saturation[amp] * SATURATION_PLATEAU * self.gain[amp]

    def ccd_band(self, ccdnum: int, band: str) -> str:
        """The band CCD ``ccdnum`` sees when the night's filter is ``band`` (LS4: fixed by quadrant)."""
        q = self.definition.quadrant_filters
        return q[(ccdnum - 1) // 8 + 1] if q else band

    def pick_ccds(self, n: int) -> list[int]:
        """``n`` science CCDs to simulate (not in the skip list): DECam from N6 (37) on; LS4 one quadrant after
        another in turn (so that a few CCDs see every band)."""
        inst = self.definition
        usable = [k for k, name in sorted(inst.ccds.items()) if name not in inst.skip_ccds]
        if not 1 <= n <= len(usable):
            raise ValueError(f"{self.name}: --ccds must be 1..{len(usable)}, got {n}")
        if inst.quadrant_filters:
            order = sorted(usable, key=lambda k: ((k - 1) % 8, (k - 1) // 8))
        else:
            start = usable.index(37) if 37 in usable else 0
            order = usable[start:] + usable[:start]
        return sorted(order[:n])

    def focal_plane_offset(self, ccdnum: int, size: tuple[int, int]) -> tuple[float, float]:
        """Approximate (east, north) offset of a CCD's centre from the pointing, arcsec, for CCDs of ``size``.

        DECam: the rows of ``FOCAL_PLANE_ROWS``, each row centred; LS4: four quadrants
        of 2 rows x 4 columns. Gaps of 5% of a CCD; the simulator's geometry, not a survey-grade one.
        """
        w, h = size[0] * self.pixel_scale * 1.05, size[1] * self.pixel_scale * 1.05
        if self.definition.quadrant_filters:  # LS4
            q, k = (ccdnum - 1) // 8, (ccdnum - 1) % 8
            col = (k % 4) + (4 if q % 2 else 0)
            row = (k // 4) + (2 if q >= 2 else 0)
            return (col - 3.5) * w, (row - 1.5) * h
        for r, numbers in enumerate(FOCAL_PLANE_ROWS):
            if ccdnum in numbers:
                k = numbers.index(ccdnum)
                return (k - (len(numbers) - 1) / 2.0) * w, (r - (len(FOCAL_PLANE_ROWS) - 1) / 2.0) * h
        raise ValueError(f"{self.name} has no CCD {ccdnum}")


DECAM_SIM = SimCamera(
    definition=DECAM,
    gain=GAIN,
    read_noise=READ_NOISE,
    saturation=SATURATION,
    bias_level=BIAS_LEVEL,
    bias_drift=BIAS_DRIFT,
    zero_point=ZERO_POINT,
    extinction=EXTINCTION,
    sky_mag=SKY_MAG,
    filter_name=FILTER_NAME,
    seeing_arcsec=(0.8, 1.8),
)

LS4_SIM = SimCamera(
    definition=LS4,
    # assumed electronics (not published per amplifier): deep-depletion CCDs, 18-bit-free 16-bit ADCs
    gain={"A": 1.6, "B": 1.7},
    read_noise={"A": 5.0, "B": 5.5},
    saturation={"A": 58000.0, "B": 59000.0},
    bias_level={"A": 1100.0, "B": 1250.0},
    bias_drift={"A": 3.0, "B": -2.0},
    # a 1.0 m aperture collects 1/16 of a 4 m's light: DECam's zero points minus 3.0 mag
    zero_point={"g": 25.3, "i": 25.2, "z": 24.9},
    extinction={"g": 0.20, "i": 0.08, "z": 0.08},
    sky_mag={"g": 22.0, "i": 20.3, "z": 18.7},
    filter_name={"g": "g", "i": "i", "z": "z"},
    seeing_arcsec=(1.5, 2.5),
    # DECam's range, 3.0 mag brighter like the zero points: the same share of transients above each
    # camera's limit (DECam's 19-23 left LS4 2 of 9 transients above its 5-sigma limit of ~21.5 in i)
    transient_peak_mag=(16.0, 20.0),
)

CAMERAS = {c.name.lower(): c for c in (DECAM_SIM, LS4_SIM)}


def sim_camera(name: str) -> SimCamera:
    """The simulated camera of an instrument name (``decam``, ``ls4``, any case)."""
    try:
        return CAMERAS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"no simulated camera {name!r} (known: {', '.join(sorted(CAMERAS))})") from None


def detpos(ccdnum: int) -> str:
    """DECam DETPOS name (e.g. 'N6') of a CCD number 1..62."""
    try:
        return DECAM.ccds[ccdnum]
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


def bias_level_rows(amp: str, ny: int, camera: SimCamera = DECAM_SIM) -> np.ndarray:
    """Electronic bias (overscan) level of every row of one amplifier, ADU.

    The level is ``BIAS_LEVEL + BIAS_DRIFT * y / ny + 0.8 sin(2 pi y / ny * 1.5)``: smooth, a few
    ADU from end to end, the same in the overscan and the data columns of that row.

    Parameters
    ----------
    amp : {'A', 'B'}
        Amplifier.
    ny : int
        Number of rows.
    camera : SimCamera, optional
        The camera (its bias levels and drifts).

    Returns
    -------
    ndarray, float32, shape (ny,)
        Level per row, ADU.
    """
    t = np.arange(ny, dtype=np.float64) / ny
    phase = 0.0 if amp == "A" else 1.3
    level = camera.bias_level[amp] + camera.bias_drift[amp] * t + 0.8 * np.sin(2 * np.pi * 1.5 * t + phase)
    return level.astype(np.float32)
