"""Render one raw CCD exposure (int32 FITS, two amplifiers with overscan) and its truth table.

Signal chain, in electrons on the trimmed grid unless stated:

1. ``E = (sky + sources) * flat + dark * exptime``; dead columns respond at 5% of the flat.
2. Shot noise on E (exact Poisson below 200 e-, Gaussian with variance E above), hot-column charge,
   cosmic rays (1-3 pixel tracks).
3. Charge above the amplifier's full well (``SATURAT? * 1.03 * GAIN?``) bleeds up and down its column.
4. Per amplifier: ``ADU = E / gain + bias + level(row) + read_noise / gain * N(0, 1)``; full pixels are
   set to ``level(row) + 1.03 * SATURAT?``. Overscan columns get ``level(row)`` plus read noise only.
5. Rounded to integers, clipped to [0, 65535], stored as int32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from seechange.sim import seeds
from seechange.sim.calib import DEAD_COLUMN_RESPONSE, HOT_COLUMN_E, CalibrationFrames
from seechange.sim.catalog import FieldCatalog
from seechange.sim.instrument import (
    AMP_NAMES,
    SATURATION_PLATEAU,
    RawLayout,
    SimCamera,
    bias_level_rows,
    sim_camera,
)
from seechange.sim.psf import MoffatPSF
from seechange.sim.render import add_galaxies, add_point_sources
from seechange.sim.saturation import bleed_columns
from seechange.sim.sky import dec_sexagesimal, make_tan_wcs, offset_sky, ra_sexagesimal
from seechange.sim.transients import TimeVariable

POISSON_EXACT_BELOW = 200.0
"""Pixels with expected counts below this get exact Poisson draws; above, a Gaussian of equal variance, e-."""
COSMIC_RAYS_PER_FULL_CCD = 300
RENDER_PAD_PX = 40
"""Sources whose centres lie up to this far outside the CCD are still rendered (their stamps overlap)."""


@dataclass(frozen=True)
class ExposureSpec:
    """Observing conditions and identity of one CCD exposure.

    Attributes
    ----------
    expname, expnum, field, field_index, epoch, ccdnum, band
        Identity.
    mjd : float
        Exposure start (``MJD-OBS``).
    exptime : float
        Seconds.
    airmass : float
    fwhm_arcsec, beta, ellipticity, psf_theta
        Moffat PSF (FWHM arcsec, index, 1 - b/a, major-axis angle rad from +x).
    sky_mag : float
        Sky brightness, AB mag/arcsec^2.
    cloud : float
        Grey extinction from clouds, mag.
    ra, dec, rotation_deg : float
        True sky position of the trimmed-grid centre (deg) and true rotation (deg).
    pointing_east, pointing_north : float
        Error of the header WCS centre relative to the truth, arcsec.
    size : (int, int)
        Trimmed size (nx, ny), pixels.
    seed : int
        Night seed (the noise streams are keyed by field index, epoch and ccdnum).
    """

    expname: str
    expnum: int
    field: str
    field_index: int
    epoch: int
    ccdnum: int
    band: str
    mjd: float
    exptime: float
    airmass: float
    fwhm_arcsec: float
    beta: float
    ellipticity: float
    psf_theta: float
    sky_mag: float
    cloud: float
    ra: float
    dec: float
    rotation_deg: float
    pointing_east: float
    pointing_north: float
    size: tuple[int, int]
    seed: int
    instrument: str = "DECam"

    @property
    def camera(self) -> SimCamera:
        """The simulated camera."""
        return sim_camera(self.instrument)

    @property
    def mjd_mid(self) -> float:
        """Mid-exposure MJD."""
        return self.mjd + self.exptime / 2.0 / 86400.0

    @property
    def zp(self) -> float:
        """AB magnitude of 1 electron in this exposure: ``mag = -2.5 log10(flux_e) + zp``."""
        return (
            self.camera.zero_point[self.band]
            - self.camera.extinction[self.band] * (self.airmass - 1.0)
            - self.cloud
            + 2.5 * math.log10(self.exptime)
        )

    @property
    def sky_e(self) -> float:
        """Sky per pixel in this exposure before the flat, electrons."""
        c = self.camera
        return self.exptime * c.pixel_scale**2 * 10.0 ** (-0.4 * (self.sky_mag - c.zero_point[self.band]))

    def true_wcs(self) -> WCS:
        """The WCS used to place sources on the trimmed grid."""
        return make_tan_wcs(
            self.ra, self.dec, self.size[0], self.size[1], self.rotation_deg, self.camera.pixel_scale
        )

    def header_wcs(self) -> WCS:
        """The approximate WCS written in the header (shifted centre, no rotation)."""
        ra, dec = offset_sky(self.ra, self.dec, self.pointing_east, self.pointing_north)
        return make_tan_wcs(ra, dec, self.size[0], self.size[1], 0.0, self.camera.pixel_scale)

    def psf(self) -> MoffatPSF:
        """The exposure's PSF in pixels."""
        return MoffatPSF(
            self.fwhm_arcsec / self.camera.pixel_scale, self.beta, self.ellipticity, self.psf_theta, 64
        )


def render_exposure(
    spec: ExposureSpec, catalog: FieldCatalog, variables: list[TimeVariable], calib: CalibrationFrames
) -> tuple[fits.PrimaryHDU, Table]:
    """Render one raw CCD and its truth.

    Parameters
    ----------
    spec : ExposureSpec
        Conditions and identity.
    catalog : FieldCatalog
        Static sources of the field.
    variables : list
        The field's transients, variable stars and moving object.
    calib : CalibrationFrames
        The CCD's calibration frames (same size as ``spec.size``).

    Returns
    -------
    hdu : astropy.io.fits.PrimaryHDU
        Raw int32 image, shape (ny, nx + 2 * 50), with the header of ``docs/ARCHITECTURE.md``.
    truth : astropy.table.Table
        id, kind, ra, dec, x, y, mag, flux_e for every source rendered, with ``meta`` (see ``truth.py``).
    """
    nx, ny = spec.size
    if calib.flat.shape != (ny, nx):
        raise ValueError(f"calibration shape {calib.flat.shape} does not match size {spec.size}")
    key = (seeds.EXPOSURE, spec.field_index, spec.epoch, spec.ccdnum)
    wcs = spec.true_wcs()
    psf = spec.psf()
    zp, sky_e = spec.zp, spec.sky_e
    truth = _source_table(spec, catalog, variables, wcs, zp)

    signal = np.zeros((ny, nx), dtype=np.float32)
    kind = np.asarray(truth["kind"])
    point = kind != "galaxy"
    x, y, flux = (np.asarray(truth[c], dtype=np.float64) for c in ("x", "y", "flux_e"))
    add_point_sources(signal, psf, x[point], y[point], flux[point], math.sqrt(sky_e))
    gal_rows = np.flatnonzero(~point)
    if gal_rows.size:
        gal = catalog.galaxies
        index = np.searchsorted(np.asarray(gal["id"]), np.asarray(truth["id"])[gal_rows])
        # Position angles are defined on an unrotated CCD: add the true rotation.
        add_galaxies(
            signal,
            psf,
            x[gal_rows],
            y[gal_rows],
            flux[gal_rows],
            np.asarray(gal["r_eff"])[index] / spec.camera.pixel_scale,
            np.asarray(gal["q"])[index],
            np.asarray(gal["pa"])[index] + math.radians(spec.rotation_deg),
            np.asarray(gal["n"])[index],
        )

    response = calib.flat.copy()
    for col, y0, y1 in calib.dead_columns:
        response[y0:y1, col] *= DEAD_COLUMN_RESPONSE
    expected = (signal + np.float32(sky_e)) * response + calib.dark * np.float32(spec.exptime)
    del signal, response

    rng = seeds.rng_for(spec.seed, *key, 1)
    electrons = _shot_noise(rng, expected)
    del expected
    for col, y0, y1 in calib.hot_columns:
        electrons[y0:y1, col] += rng.poisson(HOT_COLUMN_E, y1 - y0).astype(np.float32)
    cr_pixels = _add_cosmic_rays(seeds.rng_for(spec.seed, *key, 2), electrons)

    cam = spec.camera
    layout = RawLayout(nx, ny)
    full_well = np.empty(nx, dtype=np.float32)
    for amp in AMP_NAMES:
        full_well[layout.trim_cols(amp)] = cam.full_well_e(amp)
    n_bled = bleed_columns(electrons, full_well)
    full = electrons >= full_well[None, :]

    raw = np.empty(layout.raw_shape, dtype=np.float32)
    noise_rng = seeds.rng_for(spec.seed, *key, 3)
    for amp in AMP_NAMES:
        level = bias_level_rows(amp, ny, cam)[:, None]
        sigma = np.float32(cam.read_noise[amp] / cam.gain[amp])
        tc, dc, bc = layout.trim_cols(amp), layout.data_cols(amp), layout.bias_cols(amp)
        data = electrons[:, tc] / np.float32(cam.gain[amp]) + calib.bias[:, tc] + level
        data += sigma * noise_rng.standard_normal(data.shape, dtype=np.float32)
        plateau = np.broadcast_to(level + np.float32(cam.saturation[amp] * SATURATION_PLATEAU), data.shape)
        amp_full = full[:, tc]
        data[amp_full] = plateau[amp_full]
        raw[:, dc] = data
        raw[:, bc] = level + sigma * noise_rng.standard_normal((ny, bc.stop - bc.start), dtype=np.float32)
    np.rint(raw, out=raw)
    np.clip(raw, 0, 65535, out=raw)
    image = raw.astype(np.int32)

    header = _raw_header(spec, layout)
    truth.meta.update(_truth_meta(spec, wcs, psf, cr_pixels, int(full.sum()), n_bled))
    return fits.PrimaryHDU(data=image, header=header), truth


def _source_table(
    spec: ExposureSpec, catalog: FieldCatalog, variables: list[TimeVariable], wcs: WCS, zp: float
) -> Table:
    """Every source whose centre falls on (or just off) the CCD, with its flux in this exposure."""
    band = f"mag_{spec.band}"
    ids, kinds, ras, decs, mags = [], [], [], [], []
    for kind, tab in (("star", catalog.stars), ("galaxy", catalog.galaxies)):
        ids.append(np.asarray(tab["id"]))
        kinds.append(np.full(len(tab), kind))
        ras.append(np.asarray(tab["ra"]))
        decs.append(np.asarray(tab["dec"]))
        mags.append(np.asarray(tab[band]))
    t = spec.mjd_mid
    pos = [v.position_at(t) for v in variables]
    ids.append(np.array([v.id for v in variables], dtype=np.int64))
    kinds.append(np.array([v.kind for v in variables], dtype="<U9"))
    ras.append(np.array([p[0] for p in pos]))
    decs.append(np.array([p[1] for p in pos]))
    mags.append(np.array([v.mag_at(t) for v in variables]))
    ra, dec = np.concatenate(ras), np.concatenate(decs)
    x, y = wcs.all_world2pix(ra, dec, 0)
    nx, ny = spec.size
    pad = RENDER_PAD_PX
    keep = (x > -pad) & (x < nx - 1 + pad) & (y > -pad) & (y < ny - 1 + pad)
    mag = np.concatenate(mags)[keep]
    with np.errstate(over="ignore"):
        flux = np.where(np.isfinite(mag), 10.0 ** (-0.4 * (mag - zp)), 0.0)
    table = Table(
        {
            "id": np.concatenate(ids)[keep],
            "kind": np.concatenate(kinds).astype("<U9")[keep],
            "ra": ra[keep],
            "dec": dec[keep],
            "x": x[keep],
            "y": y[keep],
            "mag": mag,
            "flux_e": flux,
        }
    )
    for col, unit in (
        ("ra", "deg"),
        ("dec", "deg"),
        ("x", "pix"),
        ("y", "pix"),
        ("mag", "mag"),
        ("flux_e", "electron"),
    ):
        table[col].unit = unit
    return table


def _shot_noise(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Poisson realisation of ``expected`` electrons (Gaussian approximation above 200 e-), float32."""
    out = rng.standard_normal(expected.shape, dtype=np.float32)
    out *= np.sqrt(np.maximum(expected, 0.0))
    out += expected
    low = expected < POISSON_EXACT_BELOW
    if low.any():
        out[low] = rng.poisson(np.maximum(expected[low], 0.0)).astype(np.float32)
    return out


def _add_cosmic_rays(rng: np.random.Generator, electrons: np.ndarray) -> list[list[int]]:
    """Add cosmic-ray tracks of 1-3 pixels in place; return their pixels as [x, y] (0-based)."""
    ny, nx = electrons.shape
    n = int(rng.poisson(COSMIC_RAYS_PER_FULL_CCD * nx * ny / (2048 * 4096)))
    steps = np.array([(1, 0), (0, 1), (1, 1), (1, -1)])
    pixels: list[list[int]] = []
    for _ in range(n):
        x0, y0 = int(rng.integers(0, nx)), int(rng.integers(0, ny))
        length = int(rng.choice([1, 2, 2, 3, 3]))
        dx, dy = steps[rng.integers(0, 4)]
        total = 10.0 ** rng.uniform(2.8, 4.3)
        share = rng.dirichlet(np.full(length, 3.0)) * total
        for k in range(length):
            xx, yy = x0 + k * dx, y0 + k * dy
            if 0 <= xx < nx and 0 <= yy < ny:
                electrons[yy, xx] += np.float32(share[k])
                pixels.append([int(xx), int(yy)])
    return pixels


def _raw_header(spec: ExposureSpec, layout: RawLayout) -> fits.Header:
    hw = spec.header_wcs()
    cam = spec.camera
    h = fits.Header()
    h["INSTRUME"] = (cam.name, f"simulated {cam.name} camera")
    h["OBSTYPE"] = "object"
    h["DETPOS"] = cam.definition.ccd_name(spec.ccdnum)
    h["CCDNUM"] = spec.ccdnum
    h["FILTER"] = cam.filter_name[spec.band]
    h["EXPTIME"] = (spec.exptime, "[s]")
    h["MJD-OBS"] = (spec.mjd, "exposure start")
    h["DATE-OBS"] = Time(spec.mjd, format="mjd", scale="utc").isot
    h["AIRMASS"] = round(spec.airmass, 4)
    h["TELRA"] = (ra_sexagesimal(hw.wcs.crval[0]), "telescope RA")
    h["TELDEC"] = (dec_sexagesimal(hw.wcs.crval[1]), "telescope Dec")
    h["RA"] = (ra_sexagesimal(hw.wcs.crval[0]), "pointing RA")
    h["DEC"] = (dec_sexagesimal(hw.wcs.crval[1]), "pointing Dec")
    h["OBJECT"] = spec.field
    h["EXPNUM"] = spec.expnum
    h["PIXSCAL1"] = (cam.pixel_scale, "[arcsec/pixel]")
    h["PIXSCAL2"] = (cam.pixel_scale, "[arcsec/pixel]")
    inst = cam.definition
    for amp in AMP_NAMES:
        h[inst.gain_card(amp)] = (cam.gain[amp], "[e-/ADU]")
        h[inst.read_noise_card(amp)] = (cam.read_noise[amp], "[e-]")
        h[inst.saturation_card(amp)] = (cam.saturation[amp], "[ADU] above the overscan level")
    for k, v in layout.section_cards().items():
        h[k] = v
    h["BUNIT"] = "adu"
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = float(hw.wcs.crval[0]), float(hw.wcs.crval[1])
    h["CRPIX1"], h["CRPIX2"] = float(hw.wcs.crpix[0]), float(hw.wcs.crpix[1])
    for (i, j), v in np.ndenumerate(hw.wcs.cd):
        h[f"CD{i + 1}_{j + 1}"] = float(v)
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    h["COMMENT"] = "WCS keywords describe the TRIMMED grid (DATASEC), 1-based, approximate (few arcsec)."
    h["ORIGIN"] = "SeeChange simulator"
    return h


def _truth_meta(
    spec: ExposureSpec, wcs: WCS, psf: MoffatPSF, cr_pixels: list[list[int]], n_full: int, n_bled: int
) -> dict[str, Any]:
    spec_d = asdict(spec)
    spec_d["size"] = list(spec.size)
    wcs_hdr = {k: (v if not isinstance(v, np.generic) else v.item()) for k, v in wcs.to_header().items()}
    return {
        "expname": spec.expname,
        "ccdnum": spec.ccdnum,
        "field": spec.field,
        "band": spec.band,
        "mjd": spec.mjd,
        "mjd_mid": spec.mjd_mid,
        "exptime": spec.exptime,
        "airmass": spec.airmass,
        "fwhm_arcsec": spec.fwhm_arcsec,
        "fwhm_px": psf.fwhm_px,
        "psf_beta": spec.beta,
        "psf_ellipticity": spec.ellipticity,
        "psf_theta_rad": spec.psf_theta,
        "zp": spec.zp,
        "sky_e": spec.sky_e,
        "sky_mag": spec.sky_mag,
        "true_wcs": wcs_hdr,
        "header_pointing_error_arcsec": [spec.pointing_east, spec.pointing_north],
        "cosmic_ray_pixels": cr_pixels,
        "n_full_well_pixels": n_full,
        "n_bleed_pixels": n_bled,
        "spec": spec_d,
    }
