"""Plan and write a whole simulated night: calibration, reference catalogues, raw exposures, truth."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits
from astropy.time import Time

from seechange.imageio import write_fits_atomic
from seechange.sim import seeds
from seechange.sim.calib import CalibrationFrames, make_calibration, write_calibration
from seechange.sim.catalog import FieldCatalog, make_field_catalog, reference_catalog, write_reference_catalog
from seechange.sim.exposure import ExposureSpec, render_exposure
from seechange.sim.instrument import DEFAULT_SIZE, sim_camera
from seechange.sim.mef import suffix_of, write_exposure_file
from seechange.sim.sky import offset_sky
from seechange.sim.transients import TimeVariable, make_time_variables
from seechange.sim.truth import raw_relpath, truth_relpath, write_night_json, write_truth

log = logging.getLogger(__name__)

FIELD_DEC = -20.0
"""Declination of every field centre, degrees (field k is at RA 30 + 10 k)."""
POINTING_JITTER_ARCSEC = 3.0
"""Per-axis rms of the true pointing about the field centre, arcsec."""


@dataclass(frozen=True)
class ExposureRecord:
    """One written CCD exposure (paths relative to the data root)."""

    expname: str
    expnum: int
    field: str
    epoch: int
    band: str
    mjd: float
    exptime: float
    airmass: float
    ccdnum: int
    raw_path: str
    truth_path: str
    instrument: str = "DECam"
    hdu: int | None = None  #: HDU of the CCD in ``raw_path`` (None: a single-CCD file)


@dataclass(frozen=True)
class FieldRecord:
    """One field of the night."""

    name: str
    ra: float
    dec: float
    n_stars: int
    n_galaxies: int
    refcat_path: str


@dataclass
class NightSummary:
    """What ``simulate_night`` wrote: exposures in time order, fields, and time-variable sources."""

    seed: int
    band: str
    ccdnum: int
    size: tuple[int, int]
    n_ref_epochs: int
    exposures: list[ExposureRecord] = field(default_factory=list)
    fields: list[FieldRecord] = field(default_factory=list)
    transients: list[dict[str, Any]] = field(default_factory=list)
    instrument: str = "DECam"
    ccdnums: list[int] = field(default_factory=list)
    format: str = "single"

    @property
    def raw_files(self) -> list[str]:
        """Distinct raw files in time order (a multi-CCD file holds several exposures' CCDs)."""
        return list(dict.fromkeys(e.raw_path for e in self.exposures))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the content of ``truth/night.json``)."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["epochs"] = {f.name: [e.expname for e in self.exposures if e.field == f.name] for f in self.fields}
        return d


@dataclass
class NightPlan:
    """Everything needed to render any exposure of the night, independently of the others."""

    summary: NightSummary
    specs: list[ExposureSpec]
    catalogs: dict[tuple[int, int], FieldCatalog]  #: by (field index, ccdnum)
    variables: dict[tuple[int, int], list[TimeVariable]]  #: by (field index, ccdnum)
    calibs: dict[int, CalibrationFrames]  #: by ccdnum

    @property
    def calib(self) -> CalibrationFrames:
        """The calibration frames of the night's first CCD."""
        return self.calibs[self.summary.ccdnums[0]]


EXPNAME_PREFIX = {"DECam": "c4d", "LS4": "ls4"}


def _expname(mjd: float, instrument: str = "DECam") -> str:
    dt = Time(mjd, format="mjd", scale="utc").datetime
    return f"{EXPNAME_PREFIX.get(instrument, instrument.lower())}_{dt:%y%m%d_%H%M%S}"


def plan_night(
    *,
    seed: int = 42,
    n_fields: int = 2,
    n_epochs: int = 6,
    band: str = "r",
    size: tuple[int, int] = DEFAULT_SIZE,
    ccdnum: int = 37,
    n_ref_epochs: int = 3,
    exptime: float = 60.0,
    start_mjd: float = 60000.0,
    instrument: str = "DECam",
    ccdnums: list[int] | None = None,
    fmt: str = "single",
) -> NightPlan:
    """Decide the whole night without rendering anything (see ``simulate_night`` for the parameters)."""
    camera = sim_camera(instrument)
    ccds = list(ccdnums) if ccdnums else [ccdnum]
    for n in ccds:
        camera.definition.ccd_name(n)
    suffix_of(fmt)  # checks the format
    bands = {n: camera.ccd_band(n, band) for n in ccds}
    if any(b not in camera.bands for b in bands.values()):
        raise ValueError(f"band must be one of {camera.bands} for {camera.name}, got {band!r}")
    if n_fields < 1 or n_epochs < 1 or exptime <= 0 or n_ref_epochs < 0:
        raise ValueError("n_fields and n_epochs must be >= 1, exptime > 0, n_ref_epochs >= 0")
    size = (int(size[0]), int(size[1]))
    scale = camera.pixel_scale
    multi = len(ccds) > 1
    rng = seeds.rng_for(seed, seeds.NIGHT)
    names = [f"simfield{k:02d}" for k in range(n_fields)]
    centres = [(30.0 + 10.0 * k, FIELD_DEC) for k in range(n_fields)]
    airmass0 = rng.uniform(1.05, 1.5, n_fields)
    airmass_rate = rng.uniform(-0.12, 0.12, n_fields)  # per hour
    # Time order: epoch 0 of every field, then epoch 1, ...; starts 10-20 minutes apart.
    order = [(e, f) for e in range(n_epochs) for f in range(n_fields)]
    gaps = rng.uniform(10.0, 20.0, len(order)) / 1440.0
    mjds = [start_mjd + float(gaps[:i].sum()) for i in range(len(order))]
    lo, hi = camera.seeing_arcsec
    specs = []
    for (e, f), mjd in zip(order, mjds):
        # the conditions of the exposure (keyed by its first CCD: a one-CCD night is unchanged)
        r = seeds.rng_for(seed, seeds.EXPOSURE, f, e, ccds[0], 0)
        hours = (mjd - start_mjd) * 24.0
        true_ra, true_dec = offset_sky(*centres[f], *r.normal(0.0, POINTING_JITTER_ARCSEC, 2))
        err, ang = r.uniform(2.0, 4.5), r.uniform(0.0, 2 * math.pi)
        fwhm = float(r.uniform(lo, hi))
        beta, ell, theta = 3.0, float(r.uniform(0.0, 0.08)), float(r.uniform(0.0, math.pi))
        sky_dev, cloud = r.normal(0.0, 0.1), float(abs(r.normal(0.0, 0.02)))
        rot = float(r.uniform(-0.005, 0.005))
        for n in ccds:
            east, north = camera.focal_plane_offset(n, size) if multi else (0.0, 0.0)
            ra, dec = offset_sky(true_ra, true_dec, east, north)
            specs.append(
                ExposureSpec(
                    expname=_expname(mjd, camera.name),
                    expnum=round((mjd - 50000.0) * 1440.0),
                    field=names[f],
                    field_index=f,
                    epoch=e,
                    ccdnum=n,
                    band=bands[n],
                    mjd=mjd,
                    exptime=float(exptime),
                    airmass=float(max(1.0, airmass0[f] + airmass_rate[f] * hours)),
                    fwhm_arcsec=fwhm,
                    beta=beta,
                    ellipticity=ell,
                    psf_theta=theta,
                    sky_mag=float(camera.sky_mag[bands[n]] + sky_dev),
                    cloud=cloud,
                    ra=ra,
                    dec=dec,
                    rotation_deg=rot,
                    pointing_east=float(err * math.cos(ang)),
                    pointing_north=float(err * math.sin(ang)),
                    size=size,
                    seed=seed,
                    instrument=camera.name,
                )
            )
    catalogs: dict[tuple[int, int], FieldCatalog] = {}
    variables: dict[tuple[int, int], list[TimeVariable]] = {}
    field_records = []
    night_span = (mjds[0], mjds[-1])
    for f, name in enumerate(names):
        epoch_mjds = [mjds[i] for i, (_, ff) in enumerate(order) if ff == f]
        n_stars = n_gal = 0
        for n in ccds:
            east, north = camera.focal_plane_offset(n, size) if multi else (0.0, 0.0)
            ra, dec = offset_sky(*centres[f], east, north)
            index = f if not multi else 1000 * (f + 1) + n  # keys the random streams of this CCD's sky
            cat = make_field_catalog(seed, index, name, ra, dec, size=size, pixel_scale=scale)
            catalogs[(f, n)] = cat
            variables[(f, n)] = make_time_variables(
                seed,
                index,
                cat,
                epoch_mjds,
                night_span,
                exptime,
                n_ref_epochs,
                size,
                pixel_scale=scale,
                peak_mag_range=camera.transient_peak_mag,
            )
            n_stars += len(cat.stars)
            n_gal += len(cat.galaxies)
        field_records.append(
            FieldRecord(
                name=name,
                ra=centres[f][0],
                dec=centres[f][1],
                n_stars=n_stars,
                n_galaxies=n_gal,
                refcat_path=f"refcat/{name}.ecsv",
            )
        )
    exposures = []
    for s in specs:
        one_file = fmt == "single"
        raw = (
            raw_relpath(s.field, s.expname, s.ccdnum)
            if one_file
            else f"raw/{s.field}/{s.expname}_ori{suffix_of(fmt)}"
        )
        exposures.append(
            ExposureRecord(
                expname=s.expname,
                expnum=s.expnum,
                field=s.field,
                epoch=s.epoch,
                band=s.band,
                mjd=s.mjd,
                exptime=s.exptime,
                airmass=s.airmass,
                ccdnum=s.ccdnum,
                raw_path=raw,
                truth_path=truth_relpath(s.expname, s.ccdnum),
                instrument=camera.name,
                hdu=None if one_file else ccds.index(s.ccdnum) + 1,
            )
        )
    summary = NightSummary(
        seed=seed,
        band=band,
        ccdnum=ccds[0],
        size=size,
        n_ref_epochs=n_ref_epochs,
        exposures=exposures,
        fields=field_records,
        transients=[v.to_dict() for key in sorted(variables) for v in variables[key]],
        instrument=camera.name,
        ccdnums=ccds,
        format=fmt,
    )
    return NightPlan(
        summary=summary,
        specs=specs,
        catalogs=catalogs,
        variables=variables,
        calibs={n: make_calibration(n, size) for n in ccds},
    )


def render_planned(plan: NightPlan, index: int) -> tuple[fits.PrimaryHDU, Any]:
    """Render exposure ``index`` of a plan: (raw HDU, truth table). Identical on every call."""
    spec = plan.specs[index]
    key = (spec.field_index, spec.ccdnum)
    return render_exposure(spec, plan.catalogs[key], plan.variables[key], plan.calibs[spec.ccdnum])


def simulate_night(
    data_dir: Path,
    *,
    seed: int = 42,
    n_fields: int = 2,
    n_epochs: int = 6,
    band: str = "r",
    size: tuple[int, int] = DEFAULT_SIZE,
    ccdnum: int = 37,
    n_ref_epochs: int = 3,
    exptime: float = 60.0,
    start_mjd: float = 60000.0,
    progress: Callable[[int, int], None] | None = None,
    instrument: str = "DECam",
    ccdnums: list[int] | None = None,
    fmt: str = "single",
) -> NightSummary:
    """Write a simulated night under ``data_dir``.

    Writes ``calib/<instrument>/<ccdnum>/*.fits`` (when missing), ``refcat/<field>.ecsv`` (one per field
    and CCD, ``refcat/<field>_<ccd>.ecsv``, for several CCDs), the raw files, ``truth/<expname>_<ccd>.ecsv``
    and ``truth/night.json``. Raw files: ``raw/<field>/<expname>_<ccd>.fits`` (``fmt='single'``), or one
    file per exposure holding every CCD, ``raw/<field>/<expname>_ori.fits`` (``mef``) or ``.fits.fz``
    (``mef-fz``, tile-compressed as the NOIRLab archive delivers DECam raw data).

    Parameters
    ----------
    data_dir : Path
        Data root (created if needed).
    seed : int
        Everything (except the camera's calibration frames) follows from it.
    n_fields : int
        Fields, at RA 30 + 10 k deg, Dec -20 deg.
    n_epochs : int
        Exposures per field; fields are interleaved in time, starts 10-20 minutes apart.
    band : str
        Filter of the night (DECam: g, r, i, z; LS4's CCDs see the band of their quadrant whatever this is).
    size : (int, int)
        Trimmed CCD size (nx, ny), pixels; source counts scale with the sky area, transients with the pixels.
    ccdnum : int
        The CCD number when ``ccdnums`` is not given.
    n_ref_epochs : int
        Leading epochs of each field with no transient or moving-object flux.
    exptime : float
        Exposure time, s.
    start_mjd : float
        Start of the first exposure, MJD.
    progress : callable, optional
        Called as ``progress(done, total)`` after each CCD.
    instrument : {'DECam', 'LS4'}
        Simulated camera (``seechange.sim.instrument.sim_camera``).
    ccdnums : list of int, optional
        Several CCDs per exposure, each at its own place in the focal plane.
    fmt : {'single', 'mef', 'mef-fz'}
        Raw file format (see above).

    Returns
    -------
    NightSummary
    """
    data_dir = Path(data_dir)
    plan = plan_night(
        seed=seed,
        n_fields=n_fields,
        n_epochs=n_epochs,
        band=band,
        size=size,
        ccdnum=ccdnum,
        n_ref_epochs=n_ref_epochs,
        exptime=exptime,
        start_mjd=start_mjd,
        instrument=instrument,
        ccdnums=ccdnums,
        fmt=fmt,
    )
    summary = plan.summary
    multi = len(summary.ccdnums) > 1
    for n, frames in plan.calibs.items():
        write_calibration(data_dir, n, frames, summary.instrument)
    for (f, n), cat in plan.catalogs.items():
        name = summary.fields[f].name
        path = data_dir / (f"refcat/{name}_{n:02d}.ecsv" if multi else summary.fields[f].refcat_path)
        write_reference_catalog(path, reference_catalog(seed, f if not multi else 1000 * (f + 1) + n, cat))
    total = len(plan.specs)
    pending: list[fits.PrimaryHDU] = []
    for i, rec in enumerate(summary.exposures):
        hdu, truth = render_planned(plan, i)
        write_truth(data_dir, truth)
        if fmt == "single":
            write_fits_atomic(data_dir / rec.raw_path, hdu)
            log.info("wrote %s (%d of %d)", rec.raw_path, i + 1, total)
        else:
            pending.append(hdu)
            last = i + 1 == total or summary.exposures[i + 1].raw_path != rec.raw_path
            if last:
                write_exposure_file(data_dir / rec.raw_path, pending, fmt)
                log.info("wrote %s (%d CCDs; %d of %d)", rec.raw_path, len(pending), i + 1, total)
                pending = []
        if progress is not None:
            progress(i + 1, total)
    write_night_json(data_dir, summary.to_dict())
    return summary
