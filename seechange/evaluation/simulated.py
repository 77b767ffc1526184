"""End-to-end quality of the pipeline on a simulated night, measured against the simulator's truth.

``evaluate_simulated_night(session, data_dir)`` reads what the stages wrote (Image, SubtractionImage,
Sighting, Photometry and Object rows, the reduced and subtraction files) for the night whose truth is under
``data_dir/truth`` and computes the quality figures (targets in docs/ARCHITECTURE.md "Quality targets"):

astrometry
    RMS over truth stars (16 < mag < 21, inside the CCD) of the sky distance between the reduced image's WCS
    evaluated at the star's true pixel position and the star's true (ra, dec), arcsec (2-D rms).
zero point
    ``Image.zero_point - truth.meta['zp']`` per reduced image, mag.
S_corr noise
    ``mad_std`` of S_corr over source-free pixels of each subtraction: unflagged, off the border, and farther
    than ``3 FWHM`` (more for bright sources) from every truth source (stars, galaxies, time-variable sources)
    and cosmic-ray pixel of the new image.
completeness
    Each transient with flux in a subtracted epoch (and more than one border width inside the grid) has a
    true difference-image SNR ``flux_e / sigma_f``, with
    ``sigma_f = sqrt(sum(P_D^2 var_D)) / sum(P_D^2)`` over the P_D stamp centred on its true position, where
    ``var_D`` is the subtraction's variance map (both images' noise, ``1/weight``) times
    ``renorm_factor^2`` (the correlated-noise correction the pipeline applied), i.e. the error of the
    optimal PSF fit on D. It is recovered when a positive good sighting lies within ``match_radius_arcsec``.
    SNR50 comes from a logistic fit of recovered vs true SNR.
false positives
    Good sightings matching (within the radius) no transient, variable star or moving object at that epoch,
    per subtraction, scaled by area to a full 2048 x 4096 CCD.
photometry
    pulls ``(psf_flux - flux_e) / psf_flux_err`` of recovered transients; median ``mag - true mag`` for
    true SNR >= 20.
association
    number of distinct Objects among the sightings of each recovered transient (target 1).
non-detection limits
    with ``limit_rounds`` > 0, :func:`seechange.evaluation.limits.evaluate_night_limits`: point sources
    injected around the quoted local limit (blank sky and high-noise sites), ``limit_dm50`` = 50 %
    completeness magnitude minus the quoted limit (target within 0.3 mag).

``evaluate_night_inprocess`` simulates a night, runs the stage functions in-process (no Kafka) into a fresh
database and evaluates it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from astropy.wcs import WCS
from numpy.typing import ArrayLike
from scipy import ndimage, optimize
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.imageio import read_ccd, read_ccd_headers
from seechange.models import Exposure, Image, Photometry, Sighting, SubtractionImage
from seechange.sim.truth import read_night_json, read_truth
from seechange.storage import resolve

__all__ = ["FULL_CCD_PIXELS", "TARGETS", "evaluate_night_inprocess", "evaluate_simulated_night"]

log = logging.getLogger(__name__)

FULL_CCD_PIXELS = 2048 * 4096
TIME_VARIABLE_KINDS = ("transient", "variable", "moving")

#: figure -> (description, check) used by the CLI table; checks take the value and return True on PASS.
TARGETS: dict[str, tuple[str, Any]] = {
    "astrometric_rms_arcsec": ("<= 0.1", lambda v: v <= 0.1),
    "zp_max_abs_error_mag": ("<= 0.03", lambda v: v <= 0.03),
    "scorr_std": ("1.00 +/- 0.05", lambda v: abs(v - 1.0) <= 0.05),
    "completeness_snr10": (">= 0.95", lambda v: v >= 0.95),
    "snr50": ("~5 (report)", None),
    "false_positives_per_ccd": ("<= 2", lambda v: v <= 2.0),
    "pull_std": ("0.8 - 1.25", lambda v: 0.8 <= v <= 1.25),
    "mag_offset_snr20": ("|x| <= 0.03", lambda v: abs(v) <= 0.03),
    "max_objects_per_transient": ("== 1", lambda v: v == 1),
    "limit_dm50": ("|x| <= 0.3 mag", lambda v: abs(v) <= 0.3),
}


# ------------------------------------------------------------------------------------------------ helpers
def _wcs_of(path: Path) -> WCS:
    import warnings

    from astropy.wcs import FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(read_ccd_headers(path)[0][1], relax=True).celestial  # compressed: the image is HDU 1


def _sky_sep_arcsec(ra1: ArrayLike, dec1: ArrayLike, ra2: ArrayLike, dec2: ArrayLike) -> np.ndarray:
    """Small-angle separation, arcsec."""
    dra = (np.asarray(ra1) - np.asarray(ra2) + 180.0) % 360.0 - 180.0
    return np.hypot(dra * np.cos(np.radians(dec2)), np.asarray(dec1) - np.asarray(dec2)) * 3600.0


def _latest(rows: list[Any]) -> Any:
    return max(rows, key=lambda r: r.id) if rows else None


def _source_free_mask(truth: Table, shape: tuple[int, int], fwhm_px: float, sky_sigma: float) -> np.ndarray:
    """True where no truth source (or cosmic ray) of the new image is within a flux-dependent radius."""
    ny, nx = shape
    near = np.zeros(shape, dtype=bool)
    x, y = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    flux = np.asarray(truth["flux_e"], float)
    # Moffat(beta=3)-like wing: the radius where the per-pixel surface brightness falls to 0.05 sigma,
    # at least 3 FWHM (galaxies and faint sources), at most 60 px.
    a = fwhm_px / 1.02
    peak = flux * 2.0 / (math.pi * a * a)
    ratio = np.maximum(peak / (0.05 * max(sky_sigma, 1e-3)), 1.0)
    radius = np.clip(a * np.sqrt(ratio ** (1.0 / 3.0) - 1.0), 3.0 * fwhm_px, 60.0)
    kind = np.asarray(truth["kind"])
    radius = np.where(kind == "galaxy", np.maximum(radius, 5.0 * fwhm_px), radius)
    for xi, yi, r, f in zip(x, y, radius, flux, strict=True):
        if f <= 0 or xi < -r or yi < -r or xi > nx + r or yi > ny + r:
            continue
        x0, x1 = max(int(xi - r), 0), min(int(xi + r) + 2, nx)
        y0, y1 = max(int(yi - r), 0), min(int(yi + r) + 2, ny)
        gy, gx = np.mgrid[y0:y1, x0:x1]
        near[y0:y1, x0:x1] |= (gx - xi) ** 2 + (gy - yi) ** 2 <= r * r
    crs = truth.meta.get("cosmic_ray_pixels") or []
    if len(crs):
        cr = np.zeros(shape, dtype=bool)
        c = np.asarray(crs, dtype=int)
        cr[c[:, 1], c[:, 0]] = True
        near |= ndimage.binary_dilation(cr, iterations=math.ceil(2 * fwhm_px))
    return ~near


def _true_snr(x: float, y: float, flux: float, psf_d: np.ndarray, var_d: np.ndarray) -> float:
    """``flux / sigma_f`` with ``sigma_f = sqrt(sum(P^2 var)) / sum(P^2)`` over the P_D stamp at (x, y).

    The stamp is cut at the image edges (P_D stamps carry the PSF's faint wing far beyond the flagged
    border; the wing adds nothing to ``sum(P^2)``), so every transient inside the border gets an SNR.
    """
    ny, nx = var_d.shape
    k = psf_d.shape[0] // 2
    ix, iy = round(x), round(y)
    if not (0 <= ix < nx and 0 <= iy < ny):
        return float("nan")
    p = np.asarray(psf_d, np.float64)
    p = p / p.sum()
    y0, y1, x0, x1 = max(iy - k, 0), min(iy + k + 1, ny), max(ix - k, 0), min(ix + k + 1, nx)
    p = p[y0 - (iy - k) : y1 - (iy - k), x0 - (ix - k) : x1 - (ix - k)]
    v = np.asarray(var_d[y0:y1, x0:x1], np.float64)
    if not np.all(np.isfinite(v)):
        return float("nan")
    p2 = p * p
    sigma = math.sqrt(float((p2 * v).sum())) / float(p2.sum())
    return flux / sigma if sigma > 0 else float("nan")


def _snr50(snr: np.ndarray, found: np.ndarray) -> float:
    """SNR at 50% completeness from a logistic fit with a plateau, ``c / (1 + exp(-(snr - s0) / w))``.

    The plateau ``c`` (< 1) takes the misses that no SNR explains (a transient on a saturated star, in a
    masked column): without it a few bright misses flatten the curve and moved the 50 % point to a negative
    SNR (-5.5 on a full-size night whose faint misses lie below SNR 5). The SNR where ``c / (1 + e^-z)``
    is 0.5; NaN if the plateau is at or below 50 % or nothing can be fitted.
    """
    ok = np.isfinite(snr)
    snr, found = snr[ok], found[ok].astype(float)
    if snr.size < 3 or found.all() or not found.any():
        return float("nan")

    def plateau(lc: float) -> float:
        return 1.0 / (1.0 + math.exp(-min(max(float(lc), -50.0), 50.0)))

    def nll(p: np.ndarray) -> float:
        s0, lw, lc = p
        z = np.clip((snr - s0) / math.exp(lw), -50, 50)
        c = plateau(lc)
        prob = np.clip(c / (1.0 + np.exp(-z)), 1e-9, 1 - 1e-9)
        return -float(np.sum(found * np.log(prob) + (1 - found) * np.log(1 - prob)))

    res = optimize.minimize(nll, np.array([5.0, 0.0, 3.0]), method="Nelder-Mead")
    if not (res.success or res.fun < 1e9):
        return float("nan")
    s0, lw, lc = (float(v) for v in res.x)
    c = plateau(lc)
    if c <= 0.5:
        return float("nan")
    return s0 + math.exp(lw) * math.log(1.0 / (2.0 * c - 1.0))


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_simulated_night(session: Session, data_dir: Path, *, match_radius_arcsec: float = 1.0) -> dict:
    """Compute the quality figures of a processed simulated night against its truth.

    Parameters
    ----------
    session : Session
        Session on the night's database (read only).
    data_dir : Path
        Data root holding the products and ``truth/``.
    match_radius_arcsec : float, optional
        Sighting-to-truth matching radius, arcsec.

    Returns
    -------
    dict
        The figures (see the module docstring), per-subtraction details in ``"subtractions"``, every
        transient epoch in ``"transients"`` and every false positive in ``"false_positive_details"``.
    """
    data_dir = Path(data_dir)
    night = read_night_json(data_dir)
    nx, ny = (int(v) for v in night["size"])
    area_scale = FULL_CCD_PIXELS / float(nx * ny)

    astro_d2: list[np.ndarray] = []
    zp_err: list[float] = []
    images: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in night["exposures"]:
        ccd = int(rec["ccdnum"])
        exp = session.scalars(
            select(Exposure).where(Exposure.filepath == rec["raw_path"], Exposure.section_id == str(ccd))
        ).first()
        if exp is None:
            continue
        img = _latest(list(session.scalars(select(Image).where(Image.exposure_id == exp.id))))
        if img is None:
            continue
        truth = read_truth(data_dir, rec["expname"], ccd)
        wcs = _wcs_of(resolve(data_dir, f"{img.filepath}.image.fits"))
        st = truth[
            (truth["kind"] == "star")
            & (truth["mag"] > 16)
            & (truth["mag"] < 21)
            & (truth["x"] > 0)
            & (truth["x"] < nx - 1)
            & (truth["y"] > 0)
            & (truth["y"] < ny - 1)
        ]
        if len(st):
            ra, dec = wcs.all_pix2world(np.asarray(st["x"]), np.asarray(st["y"]), 0)
            astro_d2.append(_sky_sep_arcsec(ra, dec, np.asarray(st["ra"]), np.asarray(st["dec"])) ** 2)
        if img.zero_point is not None and math.isfinite(img.zero_point):
            zp_err.append(float(img.zero_point) - float(truth.meta["zp"]))
        images[(rec["expname"], ccd)] = {
            "image_id": img.id,
            "ccd": ccd,
            "truth": truth,
            "epoch": rec["epoch"],
            "field": rec["field"],
        }

    sub_rows: list[dict[str, Any]] = []
    transient_rows: list[dict[str, Any]] = []
    fp_details: list[dict[str, Any]] = []
    scorr_vals: list[float] = []
    n_fp_total = 0
    per_ccd: dict[int, dict[str, int]] = {}
    for (expname, ccd), info in images.items():
        sub = _latest(
            list(
                session.scalars(
                    select(SubtractionImage).where(SubtractionImage.new_image_id == info["image_id"])
                )
            )
        )
        if sub is None:
            continue
        truth = info["truth"]
        base = resolve(data_dir, sub.filepath)
        # the first image HDU of each file: HDU 1 when tile-compressed, the primary in older files
        score_ccd = read_ccd(f"{base}.score.fits")
        scorr = score_ccd.data
        renorm = float(score_ccd.header.get("RENORM_FACTOR", 1.0))
        border = int(score_ccd.header.get("BORDER_PX", 0))
        weight = read_ccd(f"{base}.weight.fits", dtype=np.float64).data
        flags = read_ccd(f"{base}.flags.fits", dtype=None).data
        psf_d = read_ccd(f"{base}.psf.fits", dtype=np.float64).data
        with np.errstate(divide="ignore"):
            var_d = np.where(weight > 0, 1.0 / weight, np.inf) * renorm**2
        fwhm = float(truth.meta["fwhm_px"])
        sky_sigma = math.sqrt(float(truth.meta["sky_e"]))
        free = _source_free_mask(truth, scorr.shape, fwhm, sky_sigma) & (flags == 0) & (scorr != 0)
        s_std = float(mad_std(scorr[free])) if free.sum() > 100 else float("nan")
        scorr_vals.append(s_std)

        sightings = list(session.scalars(select(Sighting).where(Sighting.subtraction_id == sub.id)))
        phot = (
            {
                p.sighting_id: p
                for p in session.scalars(
                    select(Photometry).where(Photometry.sighting_id.in_([s.id for s in sightings]))
                )
            }
            if sightings
            else {}
        )
        s_ra = np.array([s.ra for s in sightings])
        s_dec = np.array([s.dec for s in sightings])

        tv = truth[np.isin(np.asarray(truth["kind"]), TIME_VARIABLE_KINDS)]
        matched_any = np.zeros(len(sightings), dtype=bool)
        for row in tv:
            if not sightings:
                break
            d = _sky_sep_arcsec(s_ra, s_dec, float(row["ra"]), float(row["dec"]))
            matched_any |= d <= match_radius_arcsec
        for row in tv[tv["kind"] == "transient"]:
            flux = float(row["flux_e"])
            x, y = float(row["x"]), float(row["y"])
            inside = border <= x < nx - border and border <= y < ny - border
            if flux <= 0 or not inside:
                continue
            snr = _true_snr(x, y, flux, psf_d, var_d)
            hit = None
            if sightings:
                d = _sky_sep_arcsec(s_ra, s_dec, float(row["ra"]), float(row["dec"]))
                cand = [i for i in np.argsort(d) if d[i] <= match_radius_arcsec and sightings[i].is_positive]
                good = [i for i in cand if sightings[i].is_good]
                hit = good[0] if good else (cand[0] if cand else None)
            tr: dict[str, Any] = {
                "expname": expname,
                "ccd": ccd,
                "field": info["field"],
                "id": int(row["id"]),
                "x": x,
                "y": y,
                "mag": float(row["mag"]),
                "flux_e": flux,
                "snr_true": snr,
                "detected": hit is not None,
                "detected_good": hit is not None and sightings[hit].is_good,
            }
            if hit is not None:
                s = sightings[hit]
                p = phot.get(s.id)
                tr.update(sighting_id=s.id, object_id=s.object_id, flags=s.flags, score=s.score)
                if p is not None and p.psf_flux_err and p.psf_flux_err > 0:
                    tr.update(
                        psf_flux=p.psf_flux,
                        psf_flux_err=p.psf_flux_err,
                        pull=(p.psf_flux - flux) / p.psf_flux_err,
                        mag_meas=p.mag if p.mag is not None else float("nan"),
                    )
            transient_rows.append(tr)

        n_fp = 0
        for i, s in enumerate(sightings):
            if not s.is_good or matched_any[i]:
                continue
            n_fp += 1
            st = truth[np.asarray(truth["kind"]) != "transient"]
            d = _sky_sep_arcsec(np.asarray(st["ra"]), np.asarray(st["dec"]), s.ra, s.dec)
            j = int(np.argmin(d)) if len(d) else -1
            crs = np.asarray(truth.meta.get("cosmic_ray_pixels") or np.zeros((0, 2)), float).reshape(-1, 2)
            d_cr = float(np.min(np.hypot(crs[:, 0] - s.x, crs[:, 1] - s.y))) if len(crs) else float("inf")
            p = phot.get(s.id)
            fp_details.append(
                {
                    "expname": expname,
                    "ccd": ccd,
                    "sighting_id": s.id,
                    "x": s.x,
                    "y": s.y,
                    "score": s.score,
                    "is_positive": s.is_positive,
                    "snr": p.snr if p else None,
                    "nearest_kind": str(st["kind"][j]) if j >= 0 else None,
                    "nearest_mag": float(st["mag"][j]) if j >= 0 else None,
                    "nearest_arcsec": float(d[j]) if j >= 0 else None,
                    "nearest_cr_px": d_cr,
                }
            )
        n_fp_total += n_fp
        c = per_ccd.setdefault(ccd, {"n_subtractions": 0, "false_positives": 0})
        c["n_subtractions"] += 1
        c["false_positives"] += n_fp
        sub_rows.append(
            {
                "expname": expname,
                "ccd": ccd,
                "subtraction_id": sub.id,
                "n_sightings": len(sightings),
                "n_good": sum(s.is_good for s in sightings),
                "false_positives": n_fp,
                "scorr_std": s_std,
                "renorm_factor": renorm,
                "score_std_pipeline": sub.score_std,
            }
        )

    snr_true = np.array([t["snr_true"] for t in transient_rows], float)
    found = np.array([t["detected_good"] for t in transient_rows], bool)
    hi = snr_true >= 10
    pulls = np.array([t["pull"] for t in transient_rows if "pull" in t and t["detected_good"]], float)
    dmag = np.array(
        [
            t["mag_meas"] - t["mag"]
            for t in transient_rows
            if t.get("detected_good") and t["snr_true"] >= 20 and "mag_meas" in t
        ],
        float,
    )
    objects: dict[tuple[str, int, int], set[int]] = {}  # transient ids are unique within a field's CCD
    for t in transient_rows:
        if t["detected_good"] and t.get("object_id") is not None:
            objects.setdefault((t["field"], t["ccd"], t["id"]), set()).add(int(t["object_id"]))
    n_sub = len(sub_rows)
    astro = np.concatenate(astro_d2) if astro_d2 else np.zeros(0)
    ccd_figures = {}
    for ccd, c in sorted(per_ccd.items()):
        mine = np.array([t["ccd"] == ccd for t in transient_rows], bool)
        sel = mine & hi if mine.size else mine
        ccd_figures[str(ccd)] = {
            "n_subtractions": c["n_subtractions"],
            "n_transient_epochs_snr10": int(sel.sum()),
            "completeness_snr10": float(found[sel].mean()) if sel.any() else float("nan"),
            "false_positives": c["false_positives"],
            "false_positives_per_ccd": c["false_positives"] / c["n_subtractions"] * area_scale,
        }
    return {
        "instrument": str(night.get("instrument", "DECam")),
        "per_ccd": ccd_figures,
        "n_images": len(images),
        "n_subtractions": n_sub,
        "size": [nx, ny],
        "astrometric_rms_arcsec": float(np.sqrt(np.mean(astro))) if astro.size else float("nan"),
        "n_astrometric_stars": int(astro.size),
        "zp_max_abs_error_mag": float(np.max(np.abs(zp_err))) if zp_err else float("nan"),
        "zp_median_error_mag": float(np.median(zp_err)) if zp_err else float("nan"),
        "scorr_std": float(np.nanmean(scorr_vals)) if scorr_vals else float("nan"),
        "scorr_std_per_subtraction": scorr_vals,
        "n_transient_epochs": len(transient_rows),
        "n_transient_epochs_snr10": int(hi.sum()),
        "completeness_snr10": float(found[hi].mean()) if hi.any() else float("nan"),
        "completeness_all": float(found.mean()) if found.size else float("nan"),
        "snr50": _snr50(snr_true, found),
        "false_positives": n_fp_total,
        "false_positives_per_subtraction": n_fp_total / n_sub if n_sub else float("nan"),
        "false_positives_per_ccd": n_fp_total / n_sub * area_scale if n_sub else float("nan"),
        "n_pulls": int(pulls.size),
        "pull_std": float(np.std(pulls, ddof=1)) if pulls.size > 1 else float("nan"),
        "pull_median": float(np.median(pulls)) if pulls.size else float("nan"),
        "mag_offset_snr20": float(np.median(dmag)) if dmag.size else float("nan"),
        "n_mag_offset_snr20": int(dmag.size),
        "max_objects_per_transient": max((len(v) for v in objects.values()), default=0),
        "n_transients_recovered": len(objects),
        "subtractions": sub_rows,
        "transients": transient_rows,
        "false_positive_details": fp_details,
    }


def evaluate_night_inprocess(
    data_dir: Path,
    database_url: str,
    *,
    seed: int = 42,
    n_fields: int = 1,
    n_epochs: int = 5,
    size: tuple[int, int] = (512, 1024),
    match_radius_arcsec: float = 1.0,
    create_db: bool = True,
    reduce_params: Any = None,
    subtract_params: Any = None,
    detect_params: Any = None,
    association_radius_arcsec: float | None = None,
    limit_rounds: int = 0,
    instrument: str = "DECam",
    ccdnums: list[int] | None = None,
) -> dict:
    """Simulate a night, run reduce / subtract / detect in-process into a database, and evaluate it.

    Parameters
    ----------
    data_dir : Path
        Empty (or new) data root for the night.
    database_url : str
        With ``create_db`` (default), the URL of a PostgreSQL *server* database under which a fresh database
        ``seechange_eval_<hex>`` is created and migrated; otherwise an already-migrated database to use.
    seed, n_fields, n_epochs, size
        Passed to :func:`seechange.sim.night.simulate_night`.
    match_radius_arcsec : float
        See :func:`evaluate_simulated_night`.
    create_db : bool
        Create a fresh database next to ``database_url``.
    reduce_params, subtract_params, detect_params : optional
        Step parameters (default: each step's defaults).
    association_radius_arcsec : float, optional
        Sighting-to-object association radius, arcsec (default: the settings' default).
    limit_rounds : int, optional
        Injection rounds of the non-detection limit check per difference image (on up to two of them;
        0: no check).
    instrument : str
        Simulated camera (``DECam``, ``LS4``); exposures last its default exposure time.
    ccdnums : list of int, optional
        CCDs of every exposure (default: one, the simulator's default CCD); figures are also given per CCD.

    Returns
    -------
    dict
        :func:`evaluate_simulated_night`'s figures plus ``"timings"`` (s, totals),
        ``"timings_per_ccd"`` (s per CCD image: reduce, subtract incl. the reference, detect) and
        ``"database_url"``.
    """
    from seechange.config import Settings
    from seechange.models.migrate import upgrade
    from seechange.models.session import make_engine, make_session_factory
    from seechange.pipeline.chain import InProcessChain
    from seechange.pipeline.parameters import PipelineParameters
    from seechange.sim.night import simulate_night

    data_dir = Path(data_dir)
    defaults = PipelineParameters()
    params = PipelineParameters(
        reduce=reduce_params or defaults.reduce,
        reference=defaults.reference,
        subtract=subtract_params or defaults.subtract,
        detect=detect_params or defaults.detect,
    )
    if association_radius_arcsec is None:
        association_radius_arcsec = Settings.model_fields["association_radius_arcsec"].default
    t0 = time.perf_counter()
    from seechange.instruments import get_instrument

    night = simulate_night(
        data_dir,
        seed=seed,
        n_fields=n_fields,
        n_epochs=n_epochs,
        size=size,
        instrument=get_instrument(instrument).name,
        ccdnums=ccdnums,
        exptime=get_instrument(instrument).exptime_default,
    )
    t_simulate = time.perf_counter() - t0
    url = database_url
    if create_db:
        from seechange.localservices.postgres import create_database

        url = create_database(database_url, f"seechange_eval_{uuid.uuid4().hex[:8]}")
    upgrade(url)
    engine = make_engine(url)
    sf = make_session_factory(engine)
    chain = InProcessChain(sf, data_dir, params, radius_arcsec=association_radius_arcsec)
    t_limits = 0.0
    try:
        for rec in night.exposures:
            image = chain.reduce(chain.ingest(rec.raw_path))
            sub = chain.subtract(image.id)
            if sub is not None:
                chain.detect(sub.id)
        with sf() as s:
            out = evaluate_simulated_night(s, data_dir, match_radius_arcsec=match_radius_arcsec)
        if limit_rounds > 0:
            from seechange.evaluation.limits import LimitCheckParams, evaluate_night_limits

            t1 = time.perf_counter()
            with sf() as s:
                out.update(
                    evaluate_night_limits(
                        s,
                        data_dir,
                        seed=seed,
                        subtract_params=params.subtract,
                        detect_params=params.detect,
                        params=LimitCheckParams(n_rounds=limit_rounds),
                    )
                )
            t_limits = time.perf_counter() - t1
    finally:
        engine.dispose()
    totals = chain.timings()
    timings = {"simulate": t_simulate, **{k: totals.get(k, 0.0) for k in ("reduce", "subtract", "detect")}}
    timings["limits"] = t_limits
    out["timings"] = {k: round(v, 2) for k, v in timings.items()}
    n_images = max(1, len(night.exposures))
    out["timings_per_ccd"] = {
        k: round(totals.get(k, 0.0) / n_images, 3) for k in ("ingest", "reduce", "subtract", "detect")
    }
    out["database_url"] = url
    return out
