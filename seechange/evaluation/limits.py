"""Non-detection limits checked against injected-source recovery on simulated difference images.

The limit a forced point quotes (``ForcedPhotometry.lim_mag``, ``prvNonDetections`` in alerts) claims: a
point source of that magnitude at that position would have been detected half of the time. This module
tests the claim the way a survey would, on the real subtraction path:

1. subtract the reference from a new image as the pipeline does (:func:`~seechange.improc.subtraction.subtract`,
   ZOGY) and quote the limit at chosen positions exactly as the detect stage does
   (:func:`~seechange.improc.forced.forced_on_zogy` then
   :func:`~seechange.improc.forced.limiting_magnitude` with the detection threshold);
2. choose the positions on blank sky *and* where the local noise is well above the image's median (in the
   wings of stars), so a limit from the image median would be wrong there by a measurable amount;
3. inject point sources (the new image's PSF, Poisson noise) at ``quoted limit + dm``, ``dm`` on a grid of
   offsets, subtract again, detect with the pipeline's detect parameters, and call a source recovered when
   a positive sighting lies within ``match_radius_px`` (a non-detection is "no sighting of the Object on the
   image", good or not, so that is the matching definition; good sightings are reported as well);
4. fit the completeness ``1 / (1 + exp((dm - dm50) / w))`` by maximum likelihood: ``dm50`` is the offset of
   the 50 % completeness magnitude from the quoted limit (target ``|dm50| <= 0.3`` mag). The same fit on
   ``m - median limit of the image`` shows what a median limit would have claimed for the noisy sites.

Positions already holding a sighting before injection, or within a few FWHM of a time-variable truth
source, are not used (a limit is only quoted where nothing was detected).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import ndimage, optimize
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.imageio import read_image_data
from seechange.improc.detection import DetectParams, detect_and_measure
from seechange.improc.forced import forced_on_zogy, limiting_magnitude
from seechange.improc.inject import inject_point_sources
from seechange.improc.subtraction import SubtractParams, subtract
from seechange.improc.types import ImageData
from seechange.models import CoaddImage, Exposure, Image, SubtractionImage
from seechange.sim.truth import read_night_json, read_truth
from seechange.storage import resolve

__all__ = [
    "LimitCheckParams",
    "evaluate_night_limits",
    "fit_completeness",
    "limit_recovery",
    "summarise_limits",
]

log = logging.getLogger(__name__)

TIME_VARIABLE_KINDS = ("transient", "variable", "moving")
_INJ_KEYS = (
    "dm",
    "dm_median",
    "lim_mag",
    "noise_ratio",
    "noisy",
    "found",
    "found_good",
    "snr_expected",
    "score_at",
    "score_peak",
)


@dataclass(frozen=True)
class LimitCheckParams:
    """How the limits are checked (not a step's parameters: nothing here feeds a provenance).

    Attributes
    ----------
    n_sites : int
        Injection positions per round (half on blank sky, half where the local noise is high).
    n_rounds : int
        Rounds of injection per difference image (one subtraction and detection each).
    dm_grid : tuple of float
        Offsets from the quoted limit of the injected magnitudes, mag (each site gets one at random).
    noisy_ratio : float
        A "noisy" site has a local flux error at least this times the image's median one.
    sep_fwhm : float
        Minimum distance between injected sources and to time-variable truth sources, FWHM.
    match_radius_px : float
        A positive sighting this close to an injected position recovers it, pixels.
    """

    n_sites: int = 40
    n_rounds: int = 4
    dm_grid: tuple[float, ...] = tuple(round(-1.0 + 0.1 * k, 1) for k in range(21))
    noisy_ratio: float = 1.3
    sep_fwhm: float = 4.0
    match_radius_px: float = 2.0


def _flux_err_map(res: Any) -> np.ndarray:
    """Per-pixel flux error of a point source, electrons: ``renorm sqrt(V_S) / F_S`` (what the fit quotes)."""
    return float(res.renorm_factor) * np.sqrt(np.asarray(res.score_var, np.float64)) / float(res.f_s)


def _choose_sites(
    res: Any,
    truth: Table,
    taken: Table,
    rng: np.random.Generator,
    params: LimitCheckParams,
) -> tuple[np.ndarray, np.ndarray]:
    """(xy, noisy) of up to ``n_sites`` positions: half blank sky, half high local noise."""
    ny, nx = res.diff.shape
    b = res.border_px + 3 * math.ceil(res.fwhm_px)
    err = _flux_err_map(res)
    med = float(np.nanmedian(err[b : ny - b : 4, b : nx - b : 4]))
    sep = params.sep_fwhm * res.fwhm_px
    kinds = np.asarray(truth["kind"]).astype(str)
    tv = truth[np.isin(kinds, TIME_VARIABLE_KINDS)]
    avoid = [(float(x), float(y), sep) for x, y in zip(tv["x"], tv["y"], strict=True)]
    avoid += [(float(x), float(y), 3.0 * res.fwhm_px) for x, y in zip(taken["x"], taken["y"], strict=True)]
    chosen: list[tuple[float, float, bool]] = []

    def free(x: float, y: float, ok_noisy: bool) -> bool:
        if not (b <= x < nx - b and b <= y < ny - b) or res.flags[round(y), round(x)] != 0:
            return False
        ratio = err[round(y), round(x)] / med
        if (ratio >= params.noisy_ratio) != ok_noisy:
            return False
        if any((x - a) ** 2 + (y - c) ** 2 < r * r for a, c, r in avoid):
            return False
        return all((x - a) ** 2 + (y - c) ** 2 >= sep * sep for a, c, _ in chosen)

    n_half = params.n_sites // 2
    # noisy sites: pixels whose local error is high (the wings of stars and galaxies, flagged neighbours)
    inner = np.zeros(err.shape, dtype=bool)
    inner[b : ny - b, b : nx - b] = True
    ys, xs = np.nonzero(inner & (res.flags == 0) & (err >= params.noisy_ratio * med) & np.isfinite(err))
    for k in rng.permutation(xs.size)[: 50 * params.n_sites]:
        if sum(c[2] for c in chosen) >= n_half:
            break
        x, y = xs[k] + rng.uniform(-0.5, 0.5), ys[k] + rng.uniform(-0.5, 0.5)
        if free(x, y, True):
            chosen.append((x, y, True))
    for _ in range(200 * params.n_sites):
        if len(chosen) >= params.n_sites:
            break
        x, y = rng.uniform(b, nx - b), rng.uniform(b, ny - b)
        if free(x, y, False):
            chosen.append((x, y, False))
    xy = np.array([(c[0], c[1]) for c in chosen], dtype=float).reshape(-1, 2)
    return xy, np.array([c[2] for c in chosen], dtype=bool)


def limit_recovery(
    new: ImageData,
    ref: ImageData,
    truth: Table,
    *,
    rng: np.random.Generator,
    subtract_params: SubtractParams,
    detect_params: DetectParams,
    params: LimitCheckParams = LimitCheckParams(),
) -> dict[str, list]:
    """Quote limits at chosen positions of one difference image, inject there and recover.

    Parameters
    ----------
    new, ref : ImageData
        The new image and its reference (as the pipeline reads them).
    truth : astropy.table.Table
        The new image's truth (``x``, ``y``, ``flux_e``, ``kind``), pixels of ``new``.
    rng : numpy.random.Generator
        Positions, offsets and Poisson noise.
    subtract_params, detect_params : SubtractParams, DetectParams
        The pipeline's parameters (``detect_params.threshold`` is the limit's significance).
    params : LimitCheckParams
        Sites, rounds, offsets.

    Returns
    -------
    dict of lists
        Per injected source: ``dm`` (injected minus quoted limit, mag), ``dm_median`` (injected minus the
        image's median limit), ``lim_mag``, ``noise_ratio`` (local flux error / median), ``noisy``,
        ``found`` (a positive sighting), ``found_good``, ``snr_expected`` (flux / quoted error),
        ``score_at`` (S_corr at the position after injection, bilinear) and ``score_peak`` (the highest
        S_corr pixel within ``match_radius_px``: what detection thresholds).
    """
    forced = detect_params.forced_params
    assert forced.limit_sigma is not None
    res = subtract(new, ref, params=subtract_params)
    control = detect_and_measure(res, new, res.meta["ref_resampled"], params=detect_params)
    ny, nx = res.diff.shape
    b = res.border_px
    err_map = _flux_err_map(res)
    med_err = float(np.nanmedian(err_map[b : ny - b : 4, b : nx - b : 4]))
    median_lim = float(limiting_magnitude(med_err, float(res.zp), forced.limit_sigma))
    out: dict[str, list] = {k: [] for k in _INJ_KEYS}
    for _ in range(params.n_rounds):
        xy, noisy = _choose_sites(res, truth, control, rng, params)
        if len(xy) == 0:
            break
        fr = forced_on_zogy(res, xy[:, 0], xy[:, 1], params=forced)
        lim = limiting_magnitude(fr.flux_err, float(res.zp), forced.limit_sigma)
        ok = np.isfinite(lim)
        xy, noisy, lim, err = xy[ok], noisy[ok], lim[ok], fr.flux_err[ok]
        dm = rng.choice(np.asarray(params.dm_grid, dtype=float), size=len(xy))
        mag = lim + dm
        flux = 10.0 ** (-0.4 * (mag - float(res.zp)))
        new_i = inject_point_sources(new, xy, flux, rng=rng)
        res_i = subtract(new_i, ref, params=subtract_params)
        t = detect_and_measure(res_i, new_i, res_i.meta["ref_resampled"], params=detect_params)
        sc = np.asarray(res_i.score_corr, np.float64)
        at = ndimage.map_coordinates(sc, [xy[:, 1], xy[:, 0]], order=1)
        r = params.match_radius_px
        oy, ox = np.mgrid[-math.ceil(r) : math.ceil(r) + 1, -math.ceil(r) : math.ceil(r) + 1]
        for k in range(len(xy)):
            iy, ix = np.rint(xy[k, 1]).astype(int) + oy, np.rint(xy[k, 0]).astype(int) + ox
            disk = (ix - xy[k, 0]) ** 2 + (iy - xy[k, 1]) ** 2 <= r * r
            out["score_at"].append(float(at[k]))
            out["score_peak"].append(float(sc[iy[disk], ix[disk]].max()))
            found = good = False
            if len(t):
                d = np.hypot(np.asarray(t["x"]) - xy[k, 0], np.asarray(t["y"]) - xy[k, 1])
                near = (d <= params.match_radius_px) & np.asarray(t["is_positive"], bool)
                found = bool(near.any())
                good = bool((near & np.asarray(t["is_good"], bool)).any())
            out["dm"].append(float(dm[k]))
            out["dm_median"].append(float(mag[k] - median_lim))
            out["lim_mag"].append(float(lim[k]))
            out["noise_ratio"].append(float(err[k] / med_err))
            out["noisy"].append(bool(noisy[k]))
            out["found"].append(found)
            out["found_good"].append(good)
            out["snr_expected"].append(float(flux[k] / err[k]))
    log.info(
        "limits: %d injections, median limit %.2f, renorm %.3f", len(out["dm"]), median_lim, res.renorm_factor
    )
    return out


def fit_completeness(dm: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """(dm50, width) of ``P(found) = 1 / (1 + exp((dm - dm50) / width))`` by maximum likelihood, mag.

    NaN when the data cannot constrain it (fewer than 10 points, or all found / none found).
    """
    dm = np.asarray(dm, dtype=float)
    f = np.asarray(found, dtype=float)
    if dm.size < 10 or f.all() or not f.any():
        return float("nan"), float("nan")

    def nll(p: np.ndarray) -> float:
        z = np.clip((dm - p[0]) / math.exp(p[1]), -50, 50)
        prob = np.clip(1.0 / (1.0 + np.exp(z)), 1e-9, 1 - 1e-9)
        return -float(np.sum(f * np.log(prob) + (1 - f) * np.log(1 - prob)))

    r = optimize.minimize(nll, np.array([0.0, math.log(0.2)]), method="Nelder-Mead")
    return float(r.x[0]), float(math.exp(r.x[1]))


def summarise_limits(inj: dict[str, list]) -> dict[str, Any]:
    """The figures of :func:`limit_recovery`'s injections (pooled over images).

    Returns
    -------
    dict
        ``limit_dm50`` (50 % completeness magnitude minus the quoted limit, all sites; the issue's figure),
        ``limit_dm50_blank`` / ``limit_dm50_noisy`` (per kind of site), ``limit_dm50_noisy_vs_median``
        (the noisy sites against the image's median limit instead), ``limit_dm50_good`` (good sightings
        only), widths, counts, the median noise ratio of the noisy sites and a binned completeness curve.
    """
    dm = np.asarray(inj["dm"], dtype=float)
    found = np.asarray(inj["found"], dtype=bool)
    good = np.asarray(inj["found_good"], dtype=bool)
    noisy = np.asarray(inj["noisy"], dtype=bool)
    dmm = np.asarray(inj["dm_median"], dtype=float)
    ratio = np.asarray(inj["noise_ratio"], dtype=float)
    all50, w_all = fit_completeness(dm, found)
    snr = np.asarray(inj["snr_expected"], dtype=float)
    peak = np.asarray(inj["score_peak"], dtype=float) - snr
    at = np.asarray(inj["score_at"], dtype=float) - snr
    curve = []
    for c in sorted(set(np.round(dm, 2).tolist())):
        m = np.isclose(dm, c)
        curve.append(
            {
                "dm": c,
                "n": int(m.sum()),
                "completeness": float(found[m].mean()),
                "completeness_blank": float(found[m & ~noisy].mean()) if (m & ~noisy).any() else float("nan"),
                "completeness_noisy": float(found[m & noisy].mean()) if (m & noisy).any() else float("nan"),
            }
        )
    return {
        "limit_n_injected": int(dm.size),
        "limit_n_noisy": int(noisy.sum()),
        "limit_noise_ratio_noisy_median": float(np.median(ratio[noisy])) if noisy.any() else float("nan"),
        "limit_dm50": all50,
        "limit_width": w_all,
        "limit_dm50_blank": fit_completeness(dm[~noisy], found[~noisy])[0],
        "limit_dm50_noisy": fit_completeness(dm[noisy], found[noisy])[0],
        "limit_dm50_noisy_vs_median": fit_completeness(dmm[noisy], found[noisy])[0],
        "limit_dm50_good": fit_completeness(dm, good)[0],
        # S_corr at the position minus its expectation flux/err (its spread: is err the noise there?), and
        # the highest pixel within the match radius minus it (what detection thresholds), per kind of site
        **{
            f"limit_{name}_{kind}": float(fn(v[m])) if m.any() else float("nan")
            for kind, m in (("blank", ~noisy), ("noisy", noisy))
            for name, fn, v in (
                ("score_spread", lambda a: np.std(a, ddof=1) if a.size > 1 else np.nan, at),
                ("peak_minus_expected", np.median, peak),
            )
        },
        "limit_curve": curve,
    }


def evaluate_night_limits(
    session: Session,
    data_dir: Path,
    *,
    seed: int = 0,
    max_subtractions: int = 2,
    subtract_params: SubtractParams | None = None,
    detect_params: DetectParams | None = None,
    params: LimitCheckParams = LimitCheckParams(),
) -> dict[str, Any]:
    """:func:`limit_recovery` on the first ``max_subtractions`` difference images of a processed simulated
    night (one per field first), pooled by :func:`summarise_limits`.

    Parameters
    ----------
    session : Session
        Session on the night's database (read only).
    data_dir : Path
        Data root holding the products and ``truth/``.
    seed : int, optional
        Seed of the sites, offsets and Poisson noise.
    max_subtractions : int, optional
        Difference images used.
    subtract_params, detect_params : optional
        The pipeline's parameters (default each step's defaults).
    params : LimitCheckParams, optional
        Sites, rounds, offsets.
    """
    night = read_night_json(data_dir)
    ccd = int(night["ccdnum"])
    by_image: dict[int, dict[str, Any]] = {}
    for rec in night["exposures"]:
        exp = session.scalars(select(Exposure).where(Exposure.filepath == rec["raw_path"])).first()
        if exp is not None:
            for image_id in session.scalars(select(Image.id).where(Image.exposure_id == exp.id)):
                by_image[int(image_id)] = rec
    subs = [
        s
        for s in session.scalars(select(SubtractionImage).order_by(SubtractionImage.mjd, SubtractionImage.id))
        if s.new_image_id in by_image
    ]
    firsts = {by_image[s.new_image_id]["field"]: s for s in reversed(subs)}
    ordered = list(firsts.values()) + [s for s in subs if s not in firsts.values()]
    rng = np.random.default_rng(seed)
    pooled: dict[str, list] = {}
    for sub in ordered[:max_subtractions]:
        img = session.get(Image, sub.new_image_id)
        refrow = session.get(CoaddImage, sub.reference_id)
        assert img is not None and refrow is not None
        new = read_image_data(resolve(data_dir, img.filepath))
        ref = read_image_data(resolve(data_dir, refrow.filepath))
        truth = read_truth(data_dir, by_image[img.id]["expname"], ccd)
        inj = limit_recovery(
            new,
            ref,
            truth,
            rng=rng,
            subtract_params=subtract_params or SubtractParams(),
            detect_params=detect_params or DetectParams(),
            params=params,
        )
        for k, v in inj.items():
            pooled.setdefault(k, []).extend(v)
    out = summarise_limits(pooled) if pooled else summarise_limits({k: [] for k in _INJ_KEYS})
    out["limit_n_subtractions"] = min(len(ordered), max_subtractions)
    return out
