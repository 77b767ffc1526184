"""Calibration frames of one simulated CCD: master bias residual, dark, flat and bad-pixel mask.

These are properties of the instrument: they depend on the CCD number and size only (not on the
night's seed), are used by the renderer exactly as written, and are written once to
``calib/DECam/<ccdnum>/{bias,dark,flat,bpm}.fits`` on the trimmed grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from seechange.imageio import write_fits_atomic
from seechange.instruments import get_instrument
from seechange.sim import seeds
from seechange.sim.instrument import INSTRUMENT

log = logging.getLogger(__name__)

INSTRUMENT_SEED = 20_240_601
"""Seed of the camera's fixed defects and patterns (independent of any night's seed)."""
BPM_BAD_COLUMN = 1
BPM_HOT_PIXEL = 2
HOT_COLUMN_E = 600.0
"""Extra charge per pixel in a hot column, electrons."""
DEAD_COLUMN_RESPONSE = 0.05
"""Response of a dead column relative to the flat."""


@dataclass
class CalibrationFrames:
    """Calibration frames of one CCD on the trimmed grid (ny, nx).

    Attributes
    ----------
    bias : ndarray, float32
        Master-bias residual after overscan subtraction, ADU.
    dark : ndarray, float32
        Dark current, electrons/s.
    flat : ndarray, float32
        Relative response, mean 1 (1.0 in bad columns).
    bpm : ndarray, int16
        Non-zero = bad: 1 bad column, 2 hot pixel.
    dead_columns, hot_columns : list of (column, first_row, last_row_exclusive)
        The defective column segments (0-based trimmed pixels).
    """

    bias: np.ndarray
    dark: np.ndarray
    flat: np.ndarray
    bpm: np.ndarray
    dead_columns: list[tuple[int, int, int]]
    hot_columns: list[tuple[int, int, int]]


def make_calibration(ccdnum: int, size: tuple[int, int]) -> CalibrationFrames:
    """Build the calibration frames of one CCD (deterministic in ``ccdnum`` and ``size``).

    Parameters
    ----------
    ccdnum : int
        DECam CCD number.
    size : (int, int)
        Trimmed size (nx, ny), pixels.

    Returns
    -------
    CalibrationFrames
    """
    nx, ny = size
    rng = seeds.rng_for(INSTRUMENT_SEED, seeds.CALIBRATION, ccdnum, nx, ny)
    yy = (np.arange(ny, dtype=np.float32) / ny)[:, None]
    xx = (np.arange(nx, dtype=np.float32) / nx)[None, :]

    # Bias residual: fixed column pattern (+-1 ADU) and a decaying start-of-readout ramp (4 ADU).
    bias = (
        rng.normal(0.0, 1.0, nx).astype(np.float32)[None, :]
        + 4.0 * np.exp(-np.arange(ny, dtype=np.float32) / 40.0)[:, None]
    ).astype(np.float32)
    bias = np.broadcast_to(bias, (ny, nx)).copy()

    # Dark: 0.002 e-/s, amplifier glow in the outer bottom corners, sparse hot pixels.
    dark = np.full((ny, nx), 0.002, dtype=np.float32)
    r_a = np.hypot(xx * nx, yy * ny)
    r_b = np.hypot((1.0 - xx) * nx, yy * ny)
    dark += (0.3 * (np.exp(-r_a / 120.0) + np.exp(-r_b / 120.0))).astype(np.float32)
    n_hot = int(nx * ny * 2e-4)
    hy, hx = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    dark[hy, hx] += (10.0 ** rng.uniform(-1.0, 1.5, n_hot)).astype(np.float32)

    # Flat: ~5% large-scale gradient + vignetting, 1% pixel-to-pixel.
    large = 1.0 + 0.035 * (xx - 0.5) + 0.025 * (yy - 0.5) - 0.03 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    flat = (large * (1.0 + 0.01 * rng.standard_normal((ny, nx), dtype=np.float32))).astype(np.float32)

    bpm = np.zeros((ny, nx), dtype=np.int16)
    bpm[dark > 2.0] = BPM_HOT_PIXEL
    dead: list[tuple[int, int, int]] = []
    hot: list[tuple[int, int, int]] = []
    for kind in ("dead", "hot"):
        col = int(rng.integers(8, nx - 8))
        y0 = int(rng.integers(0, ny // 2)) if kind == "hot" else 0
        seg = (col, y0, ny)
        (dead if kind == "dead" else hot).append(seg)
        bpm[y0:ny, col] = BPM_BAD_COLUMN
        flat[y0:ny, col] = 1.0
    good = bpm == 0
    flat /= np.float32(flat[good].mean())
    for col, y0, y1 in dead + hot:
        flat[y0:y1, col] = 1.0
    return CalibrationFrames(bias=bias, dark=dark, flat=flat, bpm=bpm, dead_columns=dead, hot_columns=hot)


def calib_dir(data_dir: Path, ccdnum: int, instrument: str = INSTRUMENT) -> Path:
    """``<data_dir>/calib/<instrument>/<ccdnum>`` (where reduce looks for a CCD's frames)."""
    return Path(data_dir) / "calib" / instrument / str(ccdnum)


def write_calibration(
    data_dir: Path, ccdnum: int, frames: CalibrationFrames, instrument: str = INSTRUMENT
) -> list[Path]:
    """Write the four frames unless identical-shaped ones are already there.

    Parameters
    ----------
    data_dir : Path
        Data root.
    ccdnum : int
        DECam CCD number.
    frames : CalibrationFrames
        Frames from ``make_calibration``.
    instrument : str, optional
        Instrument name (``DECam``, ``LS4``).

    Returns
    -------
    list of Path
        The files written (empty when all four already existed with the right shape).
    """
    out = calib_dir(data_dir, ccdnum, instrument)
    out.mkdir(parents=True, exist_ok=True)
    items = {
        "bias": (frames.bias, "adu", "master bias residual after overscan subtraction"),
        "dark": (frames.dark, "electron/s", "dark current"),
        "flat": (frames.flat, "", "relative response, mean 1 over good pixels"),
        "bpm": (frames.bpm, "", "bad pixel mask: 0 good, 1 bad column, 2 hot pixel"),
    }
    written = []
    for name, (data, unit, what) in items.items():
        path = out / f"{name}.fits"
        if path.exists():
            with fits.open(path) as hdul:
                if hdul[0].shape == data.shape:
                    continue
            log.warning("replacing %s: its shape differs from %s", path, data.shape)
        hdr = fits.Header()
        hdr["INSTRUME"] = instrument
        hdr["CCDNUM"] = ccdnum
        hdr["DETPOS"] = get_instrument(instrument).ccd_name(ccdnum)
        hdr["BUNIT"] = unit
        hdr["COMMENT"] = f"Simulated {what}, trimmed grid."
        write_fits_atomic(path, data, hdr)
        written.append(path)
    return written
