"""Quality on any folder of real reduced images: references found on the sky, injections, per-image figures.

Every FITS image in the folder (Community Pipeline ``ooi``/``oow``/``ood`` triplets or plain reduced images)
is loaded with the pipeline's own loader (:func:`~seechange.improc.prereduced.load_prereduced`: electrons,
weights, masks, cosmic rays, PSF from a PSFEx model beside the image, else from its stars, else from the
header FWHM). Images are grouped as the pipeline groups them
(same instrument and band, footprints covering at least ``min_overlap`` of each other,
:func:`~seechange.pipeline.references.footprint_overlap`), whatever their OBJECT names and CCDs; in each
group the first ``n_ref`` images by (MJD, file name) make the reference (coadd on the first one's grid) and
every later image is subtracted from it and measured with
:func:`~seechange.evaluation.real.evaluate_pair`.

Zero points: the header's (what the loader found), else from a Legacy Surveys CCD table in the folder
(``survey-ccds*.fits*``: ``ccdzpt`` per exposure and CCD, for ADU/s), else, with ``relative_zp`` (the
default), relative to the group's first image from stars matched through the WCSs (aperture fluxes; the
first image then gets the arbitrary REF_ZP when it has none: figures here only need relative zero
points); an image whose zero point cannot be had at all is left out and the report says so, as the
pipeline refuses it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sep
from astropy.io import fits
from astropy.table import Table

from seechange.errors import BadInput
from seechange.evaluation.real import FULL_CCD_PX, REF_ZP, SNR_GRID, evaluate_pair, summarise
from seechange.improc.astrometry import match_xy
from seechange.improc.coadd import coadd
from seechange.improc.detection import DetectParams
from seechange.improc.extract import extract_sources, noise_from_weight
from seechange.improc.prereduced import load_prereduced
from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import SubtractParams
from seechange.improc.types import ImageData
from seechange.pipeline.ingest_reduced import pair_cp_triplets
from seechange.pipeline.references import footprint_overlap

__all__ = ["FolderImage", "evaluate_real_folder", "load_folder"]

log = logging.getLogger(__name__)

#: A new image whose empty-sky pixels correlate with its reference's by more than this shares exposures with
#: it (e.g. a stack of the reference's members, as ``Stack-DEC-OBS04`` of decam-sfft with the OBS04 frames:
#: 0.5): it is reported but left out of the pooled figures (its difference is not a difference of
#: independent images). Independent images give 0 +/- 0.02.
MAX_SHARED_NOISE_CORR = 0.2

_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fit")


@dataclass
class FolderImage:
    """One loaded image of the folder."""

    name: str
    data: ImageData
    instrument: str
    corners: np.ndarray  # (4, 2) ra, dec in deg, polygon order


def _survey_zero_points(folder: Path) -> dict[tuple[int, str], float]:
    """``(expnum, ccdname) -> ccdzpt`` from Legacy Surveys CCD tables under ``folder`` (AB mag for ADU/s)."""
    out: dict[tuple[int, str], float] = {}
    for path in sorted(folder.rglob("survey-ccds*.fits*")):
        t = Table.read(path)
        if not {"expnum", "ccdname", "ccdzpt"} <= set(t.colnames):
            continue
        for r in t:
            out[(int(r["expnum"]), str(r["ccdname"]).strip())] = float(r["ccdzpt"])
    return out


def _header(path: Path) -> fits.Header:
    with fits.open(path) as hdul:
        primary = hdul[0].header
        ext = next(
            (h.header for h in hdul if getattr(h, "is_image", False) and h.header.get("NAXIS") == 2), None
        )
    merged = primary.copy()
    if ext is not None:
        merged.update(ext)
    return merged


def load_folder(
    folder: Path, *, params: ReduceParams | None = None, psfex: bool = True
) -> tuple[list[FolderImage], list[tuple[str, str]]]:
    """Load every reduced image under ``folder``; the images and the ``(file, reason)`` of those left out.

    With ``psfex`` (the default, as the pipeline's ingest does) an image with a PSFEx model beside it
    (:func:`~seechange.pipeline.ingest_reduced.psfex_beside`) gets its PSF from that model.
    """
    params = params or ReduceParams()
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(_SUFFIXES))
    paths = [p for p in paths if "psfex" not in p.name and not p.name.startswith("survey-ccds")]
    zpts = _survey_zero_points(folder)
    images: list[FolderImage] = []
    skipped: list[tuple[str, str]] = []
    for files in pair_cp_triplets(paths):
        name = str(files.image.relative_to(folder))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = load_prereduced(
                    files.image,
                    weight_path=files.weight,
                    mask_path=files.mask,
                    psf_path=files.psf if psfex else None,
                    params=params,
                )
            header = _header(files.image)
        except (BadInput, OSError, ValueError) as exc:
            skipped.append((name, " ".join(str(exc).split())))
            continue
        if not np.isfinite(data.zp):
            key = (
                int(header.get("EXPNUM", -1)),
                str(header.get("DETPOS", header.get("EXTNAME", ""))).strip(),
            )
            if key in zpts and float(header.get("EXPTIME", 0)) > 0:
                gain = float((data.meta or {}).get("gain", 1.0))
                data.zp = zpts[key] + 2.5 * np.log10(float(header["EXPTIME"])) + 2.5 * np.log10(gain)
                data.meta["zp_source"] = "survey-ccds"
        if not np.isfinite(data.astrom_rms_arcsec):
            data.astrom_rms_arcsec = 0.0  # header WCS, no catalogue fit: the registration is measured instead
        ny, nx = data.shape
        corners = data.wcs.all_pix2world(np.array([[0, 0], [nx - 1, 0], [nx - 1, ny - 1], [0, ny - 1]]), 0)
        instrument = str(header.get("INSTRUME", "unknown")).strip()
        images.append(FolderImage(name, data, instrument, np.asarray(corners, float)))
    return images, skipped


def _relative_zp(im: ImageData, anchor: ImageData) -> float:
    """Zero point of ``im`` from the aperture fluxes of stars it shares with ``anchor`` (NaN: < 3 stars)."""
    cats = []
    for d in (im, anchor):
        noise = noise_from_weight(d.weight, fill=d.bkg_rms if d.bkg_rms > 0 else 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = extract_sources(d.image, noise=noise, flags=d.flags, thresh=10.0, minarea=5)
        cats.append(t[(np.asarray(t["snr"]) >= 20) & (np.asarray(t["pixflags"]) == 0)] if len(t) else t)
    if min(len(c) for c in cats) < 3:
        return float("nan")
    ra, dec = im.wcs.all_pix2world(np.asarray(cats[0]["x"]), np.asarray(cats[0]["y"]), 0)
    ax, ay = anchor.wcs.all_world2pix(ra, dec, 0)
    bxy = np.column_stack([np.asarray(cats[1]["x"]), np.asarray(cats[1]["y"])])
    i, j = match_xy(np.column_stack([ax, ay]), bxy, 2.0)
    if len(i) < 3:
        return float("nan")
    r = 2.5 * max(im.fwhm_px, anchor.fwhm_px)
    xi, yi = np.asarray(cats[0]["x"])[i], np.asarray(cats[0]["y"])[i]
    fi = sep.sum_circle(np.ascontiguousarray(im.image, np.float64), xi, yi, r)[0]
    fa = sep.sum_circle(np.ascontiguousarray(anchor.image, np.float64), bxy[j, 0], bxy[j, 1], r)[0]
    ok = (fi > 0) & (fa > 0)
    if ok.sum() < 3:
        return float("nan")
    return float(anchor.zp + 2.5 * np.log10(np.median(fi[ok] / fa[ok])))


def _calibrate_group(group: list[FolderImage], skipped: list[tuple[str, str]]) -> list[FolderImage]:
    """Give every image of a group a zero point (relative to the first when missing); drop those without."""
    anchor = group[0].data
    if not np.isfinite(anchor.zp):
        anchor.zp = REF_ZP
        anchor.meta["zp_source"] = "arbitrary (relative calibration)"
    out = [group[0]]
    for im in group[1:]:
        if not np.isfinite(im.data.zp):
            im.data.zp = _relative_zp(im.data, anchor)
            im.data.meta["zp_source"] = "relative to " + group[0].name
        if np.isfinite(im.data.zp):
            out.append(im)
        else:
            skipped.append(
                (im.name, "no zero point (no card, no catalogue, no CCD table row, < 3 shared stars)")
            )
    return out


def _known_pixels(data: ImageData, sky: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pixel positions (x, y) on ``data`` of known transients given as (ra, dec) deg."""
    if not sky:
        return []
    x, y = data.wcs.all_world2pix(np.asarray([s[0] for s in sky]), np.asarray([s[1] for s in sky]), 0)
    return [(float(a), float(b)) for a, b in zip(x, y)]


def _groups(images: list[FolderImage], min_overlap: float) -> list[list[FolderImage]]:
    """Images of one instrument and band whose footprints cover each other, each group in (MJD, name) order."""
    order = sorted(images, key=lambda im: (im.data.mjd, im.name))
    groups: list[list[FolderImage]] = []
    for im in order:
        for g in groups:
            a = g[0]
            if (a.instrument, a.data.band) == (im.instrument, im.data.band) and (
                footprint_overlap(im.corners, a.corners) >= min_overlap
            ):
                g.append(im)
                break
        else:
            groups.append([im])
    return groups


def evaluate_real_folder(
    folder: Path,
    *,
    n_ref: int = 3,
    min_overlap: float = 0.5,
    seed: int = 0,
    n_inject: int = 20,
    n_rounds: int = 8,
    subtract_params: SubtractParams | None = None,
    detect_params: DetectParams | None = None,
    relative_zp: bool = True,
    known_sky: list[tuple[float, float]] | None = None,
    psfex: bool = True,
) -> dict[str, Any]:
    """Per-image and overall quality figures on a folder of real reduced images (see the module docstring).

    Parameters
    ----------
    folder : Path
        Folder searched recursively for FITS images.
    n_ref : int, optional
        Members of each reference; a group with no more images than that uses all but its last one.
    min_overlap : float, optional
        Fraction of a footprint that the group's first image must cover.
    seed, n_inject, n_rounds : optional
        Injections (see :func:`~seechange.evaluation.real.evaluate_pair`).
    subtract_params, detect_params : optional
        The pipeline's parameters (defaults: the pipeline's).
    relative_zp : bool, optional
        Calibrate images without a zero point against their group's first image (see above).
    known_sky : list of (ra, dec), optional
        Real transients known to be there (deg): not counted as good sightings without injections.
    psfex : bool, optional
        PSFs from the PSFEx models found beside the images (see :func:`load_folder`); False: from the
        images' stars or header FWHM only.

    Returns
    -------
    dict
        ``per_image`` (the figures of `evaluate_pair` plus completeness at SNR >= 10, SNR at 50 %, pulls std
        and median flux ratio of that image, the reference's members, ``independent``: False when it
        shares exposures with its reference, see MAX_SHARED_NOISE_CORR, and it is then left out of the
        pooled figures), ``skipped`` (file, reason),
        ``references`` (members per group) and the pooled figures of
        :func:`~seechange.evaluation.real._summarise` plus ``good_sightings_per_ccd`` (all images' good
        sightings over all their area, scaled to a full CCD).
    """
    subtract_params = subtract_params or SubtractParams()
    detect_params = detect_params or DetectParams()
    rng = np.random.default_rng(seed)
    images, skipped = load_folder(folder, psfex=psfex)
    edges = np.asarray(SNR_GRID, dtype=float)
    frames: list[dict[str, Any]] = []
    pooled: dict[str, list] = {"snr": [], "found": [], "pulls": [], "ratios": []}
    refs = []
    for group in _groups(images, min_overlap):
        group = (
            _calibrate_group(group, skipped) if relative_zp else [g for g in group if np.isfinite(g.data.zp)]
        )
        if len(group) < 2:
            skipped += [(im.name, "nothing else on its sky in this band") for im in group]
            continue
        k = min(n_ref, len(group) - 1)
        members, later = group[:k], group[k:]
        ref = coadd([m.data for m in members])
        refs.append({"band": group[0].data.band, "members": [m.name for m in members]})
        for im in later:
            frame, inj = evaluate_pair(
                im.name,
                im.data,
                ref,
                rng=rng,
                n_inject=n_inject,
                n_rounds=n_rounds,
                snr_range=(float(edges[0]), float(edges[-1])),
                subtract_params=subtract_params,
                detect_params=detect_params,
                known_transients=_known_pixels(im.data, known_sky or []),
            )
            one = summarise(
                [frame],
                np.asarray(inj["snr"]),
                np.asarray(inj["found"]),
                np.asarray(inj["pulls"]),
                np.asarray(inj["ratios"]),
                edges,
            )
            for key in ("completeness_snr_ge_10", "snr50", "pull_std", "flux_ratio_median", "n_injected"):
                frame[key] = one[key]
            frame["reference"] = [m.name for m in members]
            frame["psf_source"] = (im.data.meta or {}).get("psf_source")
            frame["independent"] = not (frame["noise_corr_with_ref"] > MAX_SHARED_NOISE_CORR)
            frames.append(frame)
            if frame["independent"]:
                for key in pooled:
                    pooled[key] += inj[key]
    independent = [f for f in frames if f["independent"]]
    out = summarise(
        independent,
        np.asarray(pooled["snr"]),
        np.asarray(pooled["found"]),
        np.asarray(pooled["pulls"]),
        np.asarray(pooled["ratios"]),
        edges,
    )
    area = sum(f["area_px"] for f in independent)
    n_good = sum(f["other_good_sightings"] for f in independent)
    out.pop("per_frame")
    out["per_image"] = frames
    out["skipped"] = skipped
    out["references"] = refs
    out["area_px"] = area
    out["good_sightings"] = n_good
    out["good_sightings_per_ccd"] = n_good * FULL_CCD_PX / area if area else float("nan")
    empty = [f["scorr_mad_std"] for f in independent if f["n_empty_px"] >= 200]
    out["scorr_std_mean"] = float(np.mean(empty)) if empty else float("nan")
    return out
