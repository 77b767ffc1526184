"""Subtraction and detection quality on the real DECam pairs in ``shared/data/decam-sfft``.

Reference: ``Stack-DEC-OBS18.fits``; new images: ``DEC-OBS04{a..e}.mini.fits`` and ``Stack-DEC-OBS04.fits``
(all on one pixel grid). Point sources with the new image's measured PSF are injected over a range of
difference-image significance; completeness, photometric pulls, S_corr noise and false positives are
reported. The loader here is deliberately minimal (FITS -> electrons, sep background, saturation flags,
the pipeline's cosmic-ray flagging of pre-reduced images, a stacked-star PSF, relative zero points from
matched stars).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import sep
from astropy.io import fits
from astropy.stats import mad_std
from astropy.wcs import WCS
from scipy import ndimage

from seechange.improc.detection import DetectParams, detect_and_measure
from seechange.improc.inject import inject_point_sources
from seechange.improc.prereduced import flag_cosmic_rays
from seechange.improc.psf import header_fwhm_px
from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import SubtractParams, subtract
from seechange.improc.types import FLAG_EDGE, FLAG_SATURATED, ImageData
from seechange.pipeline.products import pixel_scale_arcsec
from seechange.units import FWHM_PER_SIGMA

__all__ = [
    "FULL_CCD_PX",
    "REF_ZP",
    "TRANSIENT_XY",
    "evaluate_pair",
    "evaluate_real_decam",
    "load_decam_sfft",
    "summarise",
]

log = logging.getLogger(__name__)
REF_ZP = 30.0  # arbitrary: the files carry no absolute calibration; new zps are relative to the reference
TRANSIENT_XY = (129.0, 128.0)  # the real transient near the galaxy (x, y pixels)
NEW_FILES = (
    "DEC-OBS04a.mini.fits",
    "DEC-OBS04b.mini.fits",
    "DEC-OBS04c.mini.fits",
    "DEC-OBS04d.mini.fits",
    "DEC-OBS04e.mini.fits",
    "Stack-DEC-OBS04.fits",
)
REF_FILE = "Stack-DEC-OBS18.fits"


def _stack_psf(img: np.ndarray, objs: np.ndarray, fwhm0: float, sat_e: float) -> np.ndarray:
    """Median of normalised, re-centred stamps of bright isolated unsaturated stars (Gaussian fallback)."""
    half = int(min(max(np.ceil(3 * fwhm0), 7), 20))
    ny, nx = img.shape
    xy = np.c_[objs["x"], objs["y"]]
    stamps = []
    for o in objs[np.argsort(-objs["flux"])]:
        x, y = o["x"], o["y"]
        d = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
        if (
            np.sum(d < 3 * half) > 1
            or not (half + 2 <= x < nx - half - 2 and half + 2 <= y < ny - half - 2)
            or o["peak"] > 0.5 * sat_e
            or o["flag"] != 0
            or o["b"] / o["a"] < 0.7
        ):
            continue
        ix, iy = round(x), round(y)
        st = img[iy - half - 2 : iy + half + 3, ix - half - 2 : ix + half + 3].astype(np.float64)
        st = ndimage.shift(st, (iy - y, ix - x), order=3, mode="nearest")[2:-2, 2:-2]
        stamps.append(st / st.sum())
        if len(stamps) >= 15:
            break
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    if len(stamps) >= 3:
        psf = np.median(stamps, axis=0)
    else:
        s = fwhm0 / FWHM_PER_SIGMA
        psf = np.exp(-(xx**2 + yy**2) / (2 * s * s))
    psf = np.where(np.hypot(xx, yy) <= half, np.clip(psf, 0, None), 0.0)
    return (psf / psf.sum()).astype(np.float32)


def _fwhm(psf: np.ndarray) -> float:
    """FWHM from the area above half maximum (robust to noisy wings), pixels."""
    return float(2.0 * np.sqrt(np.count_nonzero(psf >= 0.5 * psf.max()) / np.pi))


def load_decam_sfft(
    path: Path, *, n_combined: int = 1, zp: float = REF_ZP, params: ReduceParams | None = None
) -> ImageData:
    """Read one decam-sfft file into an :class:`ImageData` (electrons, weight, flags, PSF).

    Parameters
    ----------
    path : Path
        FITS file (big-endian float64 ADU, sky subtracted, TPV WCS).
    n_combined : int, optional
        Frames averaged into the file (5 for the ``Stack-*`` files): source Poisson variance is divided by it
        and cosmic-ray detection is skipped.
    zp : float, optional
        Zero point to record, AB mag (relative calibration is done by the caller).
    params : ReduceParams, optional
        The cosmic-ray options (default: the pipeline's); the cosmic rays are flagged as the pipeline's
        loader of pre-reduced images flags them (:func:`~seechange.improc.prereduced.flag_cosmic_rays`).
    """
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        adu = np.asarray(hdul[0].data, dtype=np.float32)
    gain = float(hdr["GAIN"])
    img = adu * np.float32(gain)
    bkg = sep.Background(img, bw=64, bh=64, fw=3, fh=3)
    img = (img - bkg.back()).astype(np.float32)
    rms = bkg.rms().astype(np.float32)
    sat_e = float(hdr.get("ESATUR", hdr["SATURATE"])) * gain
    flags = np.zeros(img.shape, np.uint16)
    sat = ndimage.binary_dilation(img > 0.9 * sat_e, iterations=2)
    flags[sat] |= FLAG_SATURATED
    var = rms**2 + np.clip(img, 0, None) / n_combined
    weight = np.where(flags == 0, 1.0 / var, 0.0).astype(np.float32)
    if n_combined == 1:
        # the pipeline's own path for pre-reduced images (Laplacian threshold, objlim relative to the PSF)
        wcs = WCS(hdr).celestial
        fwhm = header_fwhm_px(hdr, pixel_scale_arcsec(wcs))
        flag_cosmic_rays(img, weight, flags, float(np.median(rms)), hdr, params or ReduceParams(), fwhm)
    objs = sep.extract(img, 10.0, err=rms, minarea=9)
    psf = _stack_psf(img, objs, float(hdr.get("FWHM", 4.5)), sat_e)
    return ImageData(
        image=img,
        weight=weight,
        flags=flags,
        psf=psf,
        wcs=WCS(hdr).celestial,
        zp=zp,
        fwhm_px=_fwhm(psf),
        bkg_level=float(hdr.get("SKYBRITE", 0.0)) * gain,
        bkg_rms=float(np.median(rms)),
        meta={"path": str(path), "gain": gain, "n_psf_stars": len(objs), "objects": objs},
    )


def _calibrate_to(new: ImageData, ref: ImageData) -> tuple[float, float]:
    """Zero point of ``new`` relative to ``ref`` and registration rms (arcsec) from matched stars."""
    r = 3.0 * max(new.fwhm_px, ref.fwhm_px)
    on, orf = new.meta["objects"], ref.meta["objects"]
    pairs = []
    for o in on:
        d = np.hypot(orf["x"] - o["x"], orf["y"] - o["y"])
        j = int(np.argmin(d)) if len(d) else -1
        if j >= 0 and d[j] < 2.0 and o["flag"] == 0 and orf["flag"][j] == 0:
            pairs.append((o["x"], o["y"], orf["x"][j], orf["y"][j]))
    if len(pairs) < 2:
        return ref.zp, 0.0
    p = np.asarray(pairs)
    fn = sep.sum_circle(new.image, p[:, 0], p[:, 1], r)[0]
    fr = sep.sum_circle(ref.image, p[:, 2], p[:, 3], r)[0]
    ok = (fn > 0) & (fr > 0)
    zp = ref.zp + 2.5 * np.log10(np.median(fn[ok] / fr[ok])) if ok.sum() >= 2 else ref.zp
    scale = pixel_scale_arcsec(new.wcs)  # arcsec / pixel of the new image
    dx, dy = p[:, 0] - p[:, 2], p[:, 1] - p[:, 3]
    rms = float(np.sqrt(np.mean((dx - np.median(dx)) ** 2 + (dy - np.median(dy)) ** 2))) * scale
    return float(zp), rms


def _injection_sites(rng: np.random.Generator, avoid: np.ndarray, n: int, sep_px: float) -> np.ndarray:
    """Up to ``n`` random positions outside ``avoid`` and at least ``sep_px`` apart (x, y)."""
    ys, xs = np.nonzero(~avoid)
    order = rng.permutation(xs.size)
    chosen: list[tuple[float, float]] = []
    for k in order:
        x, y = xs[k] + rng.uniform(-0.5, 0.5), ys[k] + rng.uniform(-0.5, 0.5)
        if all((x - a) ** 2 + (y - b) ** 2 >= sep_px**2 for a, b in chosen):
            chosen.append((x, y))
            if len(chosen) == n:
                break
    return np.asarray(chosen).reshape(-1, 2)


def _quiet_std(res: Any, avoid: np.ndarray) -> tuple[float, float]:
    q = (res.flags == 0) & ~avoid
    s = res.score_corr[q]
    return float(mad_std(s)), float(np.std(s[np.abs(s) < 10]))


#: Difference-image SNR grid of the completeness curve.
SNR_GRID: tuple[float, ...] = tuple(float(v) for v in range(1, 21))


def evaluate_real_decam(
    data_dir: Path,
    *,
    seed: int = 0,
    n_inject: int = 20,
    n_rounds: int = 8,
    snr_grid: tuple[float, ...] = SNR_GRID,
    new_files: tuple[str, ...] = NEW_FILES,
    subtract_params: SubtractParams | None = None,
    detect_params: DetectParams | None = None,
) -> dict[str, Any]:
    """Completeness, pulls, S_corr noise and false positives of subtract + detect on the real pairs.

    Parameters
    ----------
    data_dir : Path
        Folder holding the decam-sfft files.
    seed : int, optional
        Seed of the injection positions, fluxes and Poisson noise.
    n_inject : int, optional
        Sources injected per round (placed at least 4 FWHM apart, away from the border and from sources).
    n_rounds : int, optional
        Injection rounds per new image.
    snr_grid : tuple of float, optional
        Bin edges of the difference-image significance (the expected S_corr peak of the injected source,
        computed from F_S, the flux and the score variance of both images, including the correlated-noise
        renormalisation); injected values are uniform between the first and last edge.
    new_files : tuple of str, optional
        New images to pair with the reference.

    Returns
    -------
    dict
        ``per_frame`` (renorm factor, raw score std, S_corr mad_std and clipped std, transient found,
        other good sightings), ``completeness`` (bin lo/hi, n, fraction found as good sightings),
        ``snr50``, ``completeness_snr_ge_10``, ``pull_std``, ``pull_median``, ``flux_ratio_median``,
        ``n_injected``, ``transient_found_all``, ``false_positives_per_frame``, ``scorr_std_mean``.
    """
    subtract_params = subtract_params or SubtractParams()
    detect_params = detect_params or DetectParams()
    rng = np.random.default_rng(seed)
    ref = load_decam_sfft(data_dir / REF_FILE, n_combined=5)
    frames: list[dict[str, Any]] = []
    inj_snr: list[float] = []
    inj_found: list[bool] = []
    pulls: list[float] = []
    ratios: list[float] = []
    for name in new_files:
        new = load_decam_sfft(data_dir / name, n_combined=5 if name.startswith("Stack") else 1)
        new.zp, new.astrom_rms_arcsec = _calibrate_to(new, ref)
        frame, inj = evaluate_pair(
            name,
            new,
            ref,
            rng=rng,
            n_inject=n_inject,
            n_rounds=n_rounds,
            snr_range=(float(snr_grid[0]), float(snr_grid[-1])),
            subtract_params=subtract_params,
            detect_params=detect_params,
            known_transients=[TRANSIENT_XY],
        )
        frames.append(frame)
        inj_snr += inj["snr"]
        inj_found += inj["found"]
        pulls += inj["pulls"]
        ratios += inj["ratios"]
    return summarise(
        frames,
        np.asarray(inj_snr),
        np.asarray(inj_found),
        np.asarray(pulls),
        np.asarray(ratios),
        np.asarray(snr_grid, dtype=float),
    )


#: Pixels of a full DECam CCD (2048 x 4096): false positives are scaled to this area.
FULL_CCD_PX = 2048 * 4096


def evaluate_pair(
    name: str,
    new: ImageData,
    ref: ImageData,
    *,
    rng: np.random.Generator,
    n_inject: int,
    n_rounds: int,
    snr_range: tuple[float, float],
    subtract_params: SubtractParams,
    detect_params: DetectParams,
    known_transients: list[tuple[float, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, list]]:
    """Subtract ``ref`` from ``new`` as the pipeline does, count good sightings, inject and recover.

    Parameters
    ----------
    name : str
        Label of the new image.
    new, ref : ImageData
        New image and reference (any grid overlapping it; zero points set).
    rng : numpy.random.Generator
        Injection positions, fluxes and Poisson noise.
    n_inject, n_rounds : int
        Sources per round (at least 4 FWHM apart, on source-free pixels) and rounds.
    snr_range : (float, float)
        Injected difference-image significances are uniform in this range.
    subtract_params, detect_params
        The pipeline's parameters.
    known_transients : list of (x, y), optional
        Real transients (pixels of ``new``): found or not, they are not counted as false positives.

    Returns
    -------
    (dict, dict)
        The per-image figures (S_corr mad_std on empty pixels, good sightings without injections, the area
        searched and those sightings scaled to a full CCD, noise correlation, renormalisation,
        registration noise) and the injections (``snr``, ``found``, ``pulls``, ``ratios`` lists).
    """
    known = list(known_transients or [])
    lo, hi = snr_range
    res = subtract(new, ref, params=subtract_params)
    ref_rs = res.meta["ref_resampled"]
    tab = detect_and_measure(res, new, ref_rs, params=detect_params)
    near_known = np.zeros(len(tab), dtype=bool)
    for tx, ty in known:
        if len(tab):
            near_known |= np.hypot(tab["x"] - tx, tab["y"] - ty) < 5
    found_tr = bool(np.any(near_known & tab["is_positive"])) if len(tab) and known else False
    others = int(np.sum(tab["is_good"] & ~near_known)) if len(tab) else 0
    sn = np.abs(res.score) / np.sqrt(res.score_var)
    bkg_new = new.bkg_rms if new.bkg_rms > 0 else float(mad_std(new.image[new.weight > 0]))
    bkg_ref = ref_rs.bkg_rms if ref_rs.bkg_rms > 0 else float(mad_std(ref_rs.image[ref_rs.weight > 0]))
    avoid = ndimage.binary_dilation(
        (np.abs(new.image) > 5 * bkg_new)
        | (np.abs(ref_rs.image) > 5 * bkg_ref)
        | (sn > 5)
        | (res.flags != 0),
        iterations=8,
    )
    yy, xx = np.mgrid[0 : new.shape[0], 0 : new.shape[1]]
    for tx, ty in known:
        avoid |= np.hypot(xx - tx, yy - ty) < 15
    b = res.border_px + 5
    avoid[:b], avoid[-b:], avoid[:, :b], avoid[:, -b:] = True, True, True, True
    mad, clipped = _quiet_std(res, avoid)
    quiet = ~avoid & (res.flags == 0)
    a, c = new.image[quiet].astype(np.float64), ref_rs.image[quiet].astype(np.float64)
    shared = float(np.corrcoef(a, c)[0, 1]) if a.size > 100 else float("nan")
    searched = (res.flags & np.uint16(FLAG_EDGE)) == 0
    area = int(np.count_nonzero(searched))
    frame: dict[str, Any] = {
        "file": name,
        "zp": new.zp,
        "fwhm_new": new.fwhm_px,
        "fwhm_ref": ref.fwhm_px,
        "noise_corr_new": res.noise_corr_new,
        "noise_corr_ref": res.noise_corr_ref,
        "score_std_raw": res.score_std,
        "renorm_factor": res.renorm_factor,
        "astrometric_sigma_px": res.meta.get("astrometric_sigma_px", float("nan")),
        "scorr_mad_std": mad,
        "scorr_std_clipped": clipped,
        "n_empty_px": int(np.count_nonzero(~avoid)),
        "noise_corr_with_ref": shared,
        "transient_found": found_tr,
        "other_good_sightings": others,
        "area_px": area,
        "good_sightings_per_ccd": others * FULL_CCD_PX / area if area else float("nan"),
        "n_detections": len(tab),
    }
    log.info("%s: %s", name, frame)
    inj: dict[str, list] = {"snr": [], "found": [], "pulls": [], "ratios": []}
    for _ in range(n_rounds):
        xy = _injection_sites(rng, avoid, n_inject, 4 * max(new.fwhm_px, res.fwhm_px))
        if len(xy) == 0:
            break
        target = rng.uniform(lo, hi, len(xy))
        ix, iy = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
        per_e = res.f_s / (np.sqrt(res.score_var[iy, ix]) * res.renorm_factor)  # significance per e-
        flux = target / per_e
        new_i = inject_point_sources(new, xy, flux, rng=rng)
        res_i = subtract(new_i, ref, params=subtract_params)
        t = detect_and_measure(res_i, new_i, res_i.meta["ref_resampled"], params=detect_params)
        for k in range(len(xy)):
            hit, good, j = False, False, -1
            if len(t):
                d = np.hypot(t["x"] - xy[k, 0], t["y"] - xy[k, 1])
                j = int(np.argmin(d))
                hit = bool(d[j] < 3.0 and t["is_positive"][j])
                good = hit and bool(t["is_good"][j])
            inj["snr"].append(float(target[k]))
            inj["found"].append(good)
            if hit:
                inj["pulls"].append(float((t["flux_psf"][j] - flux[k]) / t["flux_psf_err"][j]))
                inj["ratios"].append(float(t["flux_psf"][j] / flux[k]))
    return frame, inj


def summarise(
    frames: list[dict],
    snr: np.ndarray,
    found: np.ndarray,
    pulls: np.ndarray,
    ratios: np.ndarray,
    edges: np.ndarray,
) -> dict[str, Any]:
    """Completeness curve (bins ``edges`` of injected significance), SNR at 50 %, pulls, flux ratios."""
    comp = []
    for a, b in itertools.pairwise(edges):
        m = (snr >= a) & (snr < b)
        comp.append(
            {
                "lo": float(a),
                "hi": float(b),
                "n": int(m.sum()),
                "completeness": float(found[m].mean()) if m.any() else float("nan"),
            }
        )
    centres = np.array([(c["lo"] + c["hi"]) / 2 for c in comp])
    frac = np.array([c["completeness"] for c in comp])
    ok = np.isfinite(frac)
    above = np.nonzero(ok & (frac >= 0.5))[0]
    snr50 = float("nan")
    if above.size and above[0] > 0:
        i = above[0]
        x0, x1, y0, y1 = centres[i - 1], centres[i], frac[i - 1], frac[i]
        snr50 = float(x0 + (0.5 - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x1)
    fin = np.isfinite(pulls)
    return {
        "per_frame": frames,
        "completeness": comp,
        "snr50": snr50,
        "completeness_snr_ge_10": float(found[snr >= 10].mean()) if np.any(snr >= 10) else float("nan"),
        "n_injected": int(snr.size),
        "pull_std": float(np.std(pulls[fin])) if fin.any() else float("nan"),
        "pull_robust_std": float(mad_std(pulls[fin])) if fin.any() else float("nan"),
        "pull_median": float(np.median(pulls[fin])) if fin.any() else float("nan"),
        "flux_ratio_median": float(np.median(ratios)) if ratios.size else float("nan"),
        "transient_found_all": all(f["transient_found"] for f in frames),
        "false_positives_per_frame": [f["other_good_sightings"] for f in frames],
        "scorr_std_mean": float(np.mean([f["scorr_mad_std"] for f in frames])),
    }
