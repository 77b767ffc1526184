"""Deterministic synthetic DECam-like survey: raw CCD exposures, calibration frames, reference catalogues, truth.

``simulate_night(data_dir, seed=..., ...)`` writes, under the data root (``docs/ARCHITECTURE.md``)::

    raw/<field>/<expname>_<ccd>.fits        raw CCD, int32, shape (ny, nx + 100)
    calib/DECam/<ccdnum>/bias.fits           float32, ADU, trimmed grid (ny, nx)
    calib/DECam/<ccdnum>/dark.fits           float32, electrons/s, trimmed grid
    calib/DECam/<ccdnum>/flat.fits           float32, mean 1 over good pixels, trimmed grid
    calib/DECam/<ccdnum>/bpm.fits            int16, 0 good, 1 bad column, 2 hot pixel
    refcat/<field>.ecsv                      ra, dec (deg), mag_g, mag_r, mag_i, mag_z (AB); stars, r < 21
    truth/<expname>_<ccd>.ecsv               every rendered source (read with ``read_truth``)
    truth/night.json                         fields, exposures in time order, transient parameters

``<ccd>`` is the CCD number with two digits (``37``); ``<expname>`` is ``c4d_YYMMDD_HHMMSS`` of MJD-OBS.

Raw format
----------
One primary HDU, ``BITPIX = 32`` (int32, no BZERO; values 0..65535). Columns (1-based, as in the header):
``BIASSECA = [1:50]`` | ``DATASECA = [51:50+nx/2]`` | ``DATASECB = [51+nx/2:50+nx]`` |
``BIASSECB = [51+nx:100+nx]``, all rows. Amplifier A reads the left half of the trimmed grid, B the
right half; each overscan strip holds only that amplifier's bias level (which drifts smoothly by a few
ADU along the rows) plus read noise. ``SATURATA``/``SATURATB`` are in ADU **above the overscan level**;
pixels that reached full well (including bleed trails) sit at ``1.03 * SATURAT?`` above it, so
``raw - overscan >= SATURAT?`` flags all of them. The header WCS (``CRPIX`` 1-based) describes the
**trimmed** grid and is off by 2 to 4.5 arcsec (a shift; the true WCS also has a rotation of up to
0.005 deg); ``MJD-OBS`` is the exposure start (light curves are evaluated at mid-exposure).

Calibration equation (what ``reduce`` must do, per amplifier ``amp``, on the trimmed grid)
--------------------------------------------------------------------------------------------
::

    overscan[y] = median over the BIASSEC<amp> columns of raw[y, :]       (per row; a running
                  median over ~31 rows lowers its noise, the drift is smooth)
    adu         = raw[:, DATASEC<amp>] - overscan[:, None]                 (trim)
    electrons   = ((adu - bias) * GAIN<amp> - dark * EXPTIME) / flat

with ``bias``, ``dark`` and ``flat`` the columns of the calibration frames read by that amplifier.
The result has the sky (``truth.meta['sky_e']`` e-/pixel) plus sources with exactly their true
``flux_e``: ``mag = -2.5 log10(flux_e) + zp`` with ``zp = truth.meta['zp']``. Flag ``bpm != 0``
(bad, bit 1) and ``adu >= SATURAT<amp>`` (saturated, bit 2; bleed trails are included). Noise per
pixel in electrons: variance = electrons(before flat division) + RDNOISE<amp>^2.

Everything follows from ``seed`` through ``numpy.random.Generator(PCG64)`` streams keyed per field and
per exposure (``seeds.py``), so any exposure can be re-rendered alone (``plan_night`` then
``render_planned``) with identical bytes. The calibration frames depend only on the CCD number and size.
"""

from seechange.sim.catalog import FieldCatalog, make_field_catalog, reference_catalog
from seechange.sim.exposure import ExposureSpec, render_exposure
from seechange.sim.night import (
    ExposureRecord,
    FieldRecord,
    NightPlan,
    NightSummary,
    plan_night,
    render_planned,
    simulate_night,
)
from seechange.sim.truth import raw_relpath, read_night_json, read_truth, truth_relpath

__all__ = [
    "ExposureRecord",
    "ExposureSpec",
    "FieldCatalog",
    "FieldRecord",
    "NightPlan",
    "NightSummary",
    "make_field_catalog",
    "plan_night",
    "raw_relpath",
    "read_night_json",
    "read_truth",
    "reference_catalog",
    "render_exposure",
    "render_planned",
    "simulate_night",
    "truth_relpath",
]
