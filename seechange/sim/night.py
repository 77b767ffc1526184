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
from seechange.sim.instrument import BANDS, DEFAULT_SIZE, SKY_MAG, detpos
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
    catalogs: list[FieldCatalog]
    variables: list[list[TimeVariable]]
    calib: CalibrationFrames


def _expname(mjd: float) -> str:
    dt = Time(mjd, format="mjd", scale="utc").datetime
    return f"c4d_{dt:%y%m%d_%H%M%S}"


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
) -> NightPlan:
    """Decide the whole night without rendering anything (see ``simulate_night`` for the parameters)."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if n_fields < 1 or n_epochs < 1 or exptime <= 0 or n_ref_epochs < 0:
        raise ValueError("n_fields and n_epochs must be >= 1, exptime > 0, n_ref_epochs >= 0")
    detpos(ccdnum)
    size = (int(size[0]), int(size[1]))
    rng = seeds.rng_for(seed, seeds.NIGHT)
    names = [f"simfield{k:02d}" for k in range(n_fields)]
    centres = [(30.0 + 10.0 * k, FIELD_DEC) for k in range(n_fields)]
    airmass0 = rng.uniform(1.05, 1.5, n_fields)
    airmass_rate = rng.uniform(-0.12, 0.12, n_fields)  # per hour

    # Time order: epoch 0 of every field, then epoch 1, ...; starts 10-20 minutes apart.
    order = [(e, f) for e in range(n_epochs) for f in range(n_fields)]
    gaps = rng.uniform(10.0, 20.0, len(order)) / 1440.0
    mjds = [start_mjd + float(gaps[:i].sum()) for i in range(len(order))]

    specs = []
    for (e, f), mjd in zip(order, mjds):
        r = seeds.rng_for(seed, seeds.EXPOSURE, f, e, ccdnum, 0)
        hours = (mjd - start_mjd) * 24.0
        true_ra, true_dec = offset_sky(*centres[f], *r.normal(0.0, POINTING_JITTER_ARCSEC, 2))
        err, ang = r.uniform(2.0, 4.5), r.uniform(0.0, 2 * math.pi)
        specs.append(
            ExposureSpec(
                expname=_expname(mjd),
                expnum=round((mjd - 50000.0) * 1440.0),
                field=names[f],
                field_index=f,
                epoch=e,
                ccdnum=ccdnum,
                band=band,
                mjd=mjd,
                exptime=float(exptime),
                airmass=float(max(1.0, airmass0[f] + airmass_rate[f] * hours)),
                fwhm_arcsec=float(r.uniform(0.8, 1.8)),
                beta=3.0,
                ellipticity=float(r.uniform(0.0, 0.08)),
                psf_theta=float(r.uniform(0.0, math.pi)),
                sky_mag=float(SKY_MAG[band] + r.normal(0.0, 0.1)),
                cloud=float(abs(r.normal(0.0, 0.02))),
                ra=true_ra,
                dec=true_dec,
                rotation_deg=float(r.uniform(-0.005, 0.005)),
                pointing_east=float(err * math.cos(ang)),
                pointing_north=float(err * math.sin(ang)),
                size=size,
                seed=seed,
            )
        )

    catalogs, variables, field_records = [], [], []
    night_span = (mjds[0], mjds[-1])
    for f, name in enumerate(names):
        cat = make_field_catalog(seed, f, name, *centres[f], size=size)
        epoch_mjds = [s.mjd for s in specs if s.field_index == f]
        tv = make_time_variables(seed, f, cat, epoch_mjds, night_span, exptime, n_ref_epochs, size)
        catalogs.append(cat)
        variables.append(tv)
        field_records.append(
            FieldRecord(
                name=name,
                ra=centres[f][0],
                dec=centres[f][1],
                n_stars=len(cat.stars),
                n_galaxies=len(cat.galaxies),
                refcat_path=f"refcat/{name}.ecsv",
            )
        )
    exposures = [
        ExposureRecord(
            expname=s.expname,
            expnum=s.expnum,
            field=s.field,
            epoch=s.epoch,
            band=band,
            mjd=s.mjd,
            exptime=s.exptime,
            airmass=s.airmass,
            ccdnum=ccdnum,
            raw_path=raw_relpath(s.field, s.expname, ccdnum),
            truth_path=truth_relpath(s.expname, ccdnum),
        )
        for s in specs
    ]
    summary = NightSummary(
        seed=seed,
        band=band,
        ccdnum=ccdnum,
        size=size,
        n_ref_epochs=n_ref_epochs,
        exposures=exposures,
        fields=field_records,
        transients=[v.to_dict() for tv in variables for v in tv],
    )
    return NightPlan(
        summary=summary,
        specs=specs,
        catalogs=catalogs,
        variables=variables,
        calib=make_calibration(ccdnum, size),
    )


def render_planned(plan: NightPlan, index: int) -> tuple[fits.PrimaryHDU, Any]:
    """Render exposure ``index`` of a plan: (raw HDU, truth table). Identical on every call."""
    spec = plan.specs[index]
    return render_exposure(
        spec, plan.catalogs[spec.field_index], plan.variables[spec.field_index], plan.calib
    )


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
) -> NightSummary:
    """Write a simulated night under ``data_dir``.

    Writes ``calib/DECam/<ccdnum>/*.fits`` (when missing), ``refcat/<field>.ecsv``,
    ``raw/<field>/<expname>_<ccd>.fits``, ``truth/<expname>_<ccd>.ecsv`` and ``truth/night.json``.

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
    band : {'g', 'r', 'i', 'z'}
        Filter of the night.
    size : (int, int)
        Trimmed CCD size (nx, ny), pixels; source and transient counts scale with the area.
    ccdnum : int
        DECam CCD number (1..62).
    n_ref_epochs : int
        Leading epochs of each field with no transient or moving-object flux.
    exptime : float
        Exposure time, s.
    start_mjd : float
        Start of the first exposure, MJD.
    progress : callable, optional
        Called as ``progress(done, total)`` after each exposure.

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
    )
    write_calibration(data_dir, ccdnum, plan.calib)
    for f, cat in enumerate(plan.catalogs):
        write_reference_catalog(
            data_dir / plan.summary.fields[f].refcat_path, reference_catalog(seed, f, cat)
        )
    total = len(plan.specs)
    for i, rec in enumerate(plan.summary.exposures):
        hdu, truth = render_planned(plan, i)
        write_fits_atomic(data_dir / rec.raw_path, hdu)
        write_truth(data_dir, truth)
        log.info("wrote %s (%d of %d)", rec.raw_path, i + 1, total)
        if progress is not None:
            progress(i + 1, total)
    write_night_json(data_dir, plan.summary.to_dict())
    return plan.summary
