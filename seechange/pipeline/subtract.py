"""Subtract stage: find or build the reference CoaddImage, resample it, ZOGY; SubtractionImage + files out.

References are found on the sky (footprint, band, instrument): :mod:`seechange.pipeline.references`. An image
that is a member of its reference, or that comes while its sky has too few good images, is not subtracted,
and its row says why (``extra["subtraction"]``). An image without a zero point is refused (bad input).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.compression import compressed_hdu
from seechange.errors import MissingRow, UnusableImage
from seechange.imageio import read_ccd, read_image_data, write_fits_atomic, write_image_data
from seechange.improc.subtraction import SubtractParams, subtract, without_spikes
from seechange.improc.types import ImageData
from seechange.improc.zogy import ZogyResult
from seechange.models import Image, Provenance, SubtractionImage
from seechange.models.upsert import insert_or_get
from seechange.parameters import default_threads
from seechange.pipeline.products import image_columns, product_stem
from seechange.pipeline.references import (
    NO_REFERENCE,
    PENDING_GIVE_UP_S,
    REFERENCE_MEMBER,
    ReferenceParams,
    ReferencePending,
    find_or_build_reference,
)
from seechange.provenance import get_or_create_provenance
from seechange.storage import resolve

__all__ = [
    "NO_REFERENCE",
    "PENDING_GIVE_UP_S",
    "REFERENCE_MEMBER",
    "ReferenceParams",
    "ReferencePending",
    "find_or_build_reference",
    "read_zogy",
    "subtract_image_row",
    "subtraction_event",
    "write_zogy",
]

log = logging.getLogger(__name__)


def write_image_data_any(data_root: Path, stem: str, data: ImageData) -> None:
    """Write an ImageData's four files under the data root."""
    write_image_data(resolve(data_root, stem), data, {})


# --------------------------------------------------------------------------------------- ZOGY products on disk
_SCALARS = (
    "f_d",
    "f_s",
    "score_std",
    "renorm_factor",
    "noise_corr_new",
    "noise_corr_ref",
    "zp",
    "fwhm_px",
    "border_px",
)


def write_zogy(
    data_root: Path, stem: str, result: ZogyResult, ref_on_new: ImageData, *, threads: int | None = None
) -> None:
    """Write D (``diff``), its weight, P_D (``psf``), S_corr and V_S (``score``), flags and the resampled ref.

    S itself is not stored: it is ``S_corr * renorm_factor * sqrt(V_S)`` (:func:`read_zogy` rebuilds it; to
    float32 rounding, except on the FLAG_EDGE pixels where S_corr is 0). That saves one full-frame write and
    read (about 0.1 s each on 2048x4096). The planes are tile-compressed (:mod:`seechange.compression`):
    D, S_corr and the resampled reference quantised to a quarter of their pixel noise, the weight and V_S to
    1/256 of their median, the flags losslessly; the PSF stamp is plain. Each plane is the first image HDU
    after an empty primary (V_S is HDU ``VAR`` of the score file). The files are written by ``threads``
    threads (default every core; quantisation, compression and file writes release the GIL for the most
    part).
    """
    base = resolve(data_root, stem)
    header = result.wcs.to_header(relax=True)
    for name in _SCALARS:
        header[f"HIERARCH {name.upper()}"] = float(getattr(result, name))
    with np.errstate(divide="ignore"):
        weight = np.where(result.diff_variance > 0, 1.0 / result.diff_variance, 0.0).astype(np.float32)
    f32 = np.float32

    def score_file() -> fits.HDUList:
        return fits.HDUList(
            [
                fits.PrimaryHDU(),
                compressed_hdu(
                    result.score_corr.astype(f32, copy=False), header, quantise="noise", name="SCORR"
                ),
                compressed_hdu(result.score_var.astype(f32, copy=False), quantise="relative", name="VAR"),
            ]
        )

    jobs: list[tuple[str, Callable[[], fits.HDUList | fits.CompImageHDU | fits.PrimaryHDU]]] = [
        ("score", score_file),
        ("diff", lambda: compressed_hdu(result.diff.astype(f32, copy=False), header, quantise="noise")),
        ("weight", lambda: compressed_hdu(weight, header, quantise="relative")),
        ("ref", lambda: compressed_hdu(ref_on_new.image.astype(f32, copy=False), header, quantise="noise")),
        ("flags", lambda: compressed_hdu(result.flags.astype(np.uint16, copy=False), header)),
        ("psf", lambda: fits.PrimaryHDU(result.psf_d.astype(f32, copy=False))),
    ]

    def write(suffix: str, make: Callable[[], fits.HDUList | fits.CompImageHDU | fits.PrimaryHDU]) -> None:
        write_fits_atomic(Path(f"{base}.{suffix}.fits"), make())

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        for f in [pool.submit(write, suffix, make) for suffix, make in jobs]:
            f.result()


def read_zogy(data_root: Path, stem: str, *, threads: int | None = None) -> tuple[ZogyResult, np.ndarray]:
    """Read what :func:`write_zogy` wrote: the ZogyResult and the resampled reference image.

    Reads the tile-compressed files and the older uncompressed ones (each plane in the primary HDU, V_S in
    ``VAR``) alike. ``threads`` files are read in parallel (default every core).
    """
    base = resolve(data_root, stem)

    def first(suffix: str, dtype: type) -> tuple[np.ndarray, fits.Header]:
        ccd = read_ccd(f"{base}.{suffix}.fits", dtype=dtype)
        return ccd.data, ccd.header

    def var() -> np.ndarray:
        return read_ccd(f"{base}.score.fits", "VAR").data

    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        f_diff = pool.submit(first, "diff", np.float32)
        f_weight = pool.submit(first, "weight", np.float32)
        f_score = pool.submit(first, "score", np.float32)
        f_var = pool.submit(var)
        f_flags = pool.submit(first, "flags", np.uint16)
        f_ref = pool.submit(first, "ref", np.float32)
        f_psf = pool.submit(first, "psf", np.float32)
        diff, header = f_diff.result()
        weight, _ = f_weight.result()
        score_corr, _ = f_score.result()
        score_var = f_var.result()
        flags, _ = f_flags.result()
        ref, _ = f_ref.result()
        psf, _ = f_psf.result()
    with np.errstate(divide="ignore"):
        variance = np.where(weight > 0, 1.0 / weight, np.inf).astype(np.float32)
    scalars: dict[str, Any] = {n: float(header[n.upper()]) for n in _SCALARS}
    scalars["border_px"] = int(scalars["border_px"])
    score = score_corr * np.float32(scalars["renorm_factor"]) * np.sqrt(score_var)
    result = ZogyResult(
        diff=diff,
        diff_variance=variance,
        psf_d=psf,
        score=score,
        score_var=score_var,
        score_corr=score_corr,
        flags=flags,
        wcs=WCS(header, naxis=2),
        **scalars,
    )
    return result, ref


class ReferenceCache:
    """The last reference(s) read by this process, spikes already flagged (issue 11: a service
    subtracts the CCDs of one sky one after the other; reading the reference's four files and flagging
    its spikes again cost about 0.3 s per CCD). Keyed by the image file's path, size and modification
    time and the spike threshold, so a rewritten reference is read again. The arrays are shared: never
    modify them (resampling and ZOGY do not).
    """

    def __init__(self, max_items: int = 1) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, int, int, float], ImageData] = OrderedDict()

    def get(self, stem: Path, spike_nsigma: float) -> ImageData:
        """The reference of ``stem`` (the four-file image format) with its single-pixel spikes flagged."""
        st = Path(f"{stem}.image.fits").stat()
        key = (str(stem), st.st_size, st.st_mtime_ns, float(spike_nsigma))
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        self.make_room()
        ref = without_spikes(read_image_data(stem), spike_nsigma)
        self._items[key] = ref
        return ref

    def make_room(self) -> None:
        """Drop the oldest references until one more fits: before a reference is read or built, so that a
        process never holds more than ``max_items`` (the evicted one stayed alive through the next
        subtraction: ~160 MB more at the subtract service's peak)."""
        while self._items and len(self._items) >= self.max_items:
            self._items.popitem(last=False)


_REFERENCES = ReferenceCache()


def subtract_image_row(
    session: Session, data_root: Path, image_id: int, *, ref_params: ReferenceParams, params: SubtractParams
) -> SubtractionImage | None:
    """Subtract the reference from one Image (find before make); None when no reference can exist yet."""
    image = session.get(Image, image_id)
    if image is None:
        raise MissingRow(f"image {image_id} is not in the database")
    if image.zero_point is None or not np.isfinite(image.zero_point):
        raise UnusableImage(f"image {image_id} ({image.filepath}): no zero point; it cannot be subtracted")
    reference = find_or_build_reference(
        session, data_root, image, params=ref_params, before_build=_REFERENCES.make_room
    )
    if reference is None:
        return None
    provs = [session.get(Provenance, image.provenance_id), session.get(Provenance, reference.provenance_id)]
    prov = get_or_create_provenance(session, "subtract", params.critical(), [p for p in provs if p])
    found = select(SubtractionImage).where(
        SubtractionImage.new_image_id == image.id,
        SubtractionImage.reference_id == reference.id,
        SubtractionImage.provenance_id == prov.id,
    )
    existing = session.scalars(found).one_or_none()
    if existing is not None:
        return existing
    t0 = time.perf_counter()
    new = read_image_data(resolve(data_root, image.filepath))
    ref = _REFERENCES.get(resolve(data_root, reference.filepath), params.spike_nsigma)
    result = subtract(new, ref, params=params, ref_spikes_flagged=True)
    del new, ref
    ref_on_new = result.meta["ref_resampled"]
    stem = product_stem("subtractions", prov.id, Path(image.filepath).name)
    write_zogy(data_root, stem, result, ref_on_new, threads=params.threads)
    diff_data = ImageData(
        image=result.diff,
        weight=np.zeros((1, 1), np.float32),
        flags=result.flags,
        psf=result.psf_d,
        wcs=result.wcs,
        zp=result.zp,
        fwhm_px=result.fwhm_px,
        bkg_level=0.0,
        bkg_rms=float(np.sqrt(np.nanmedian(result.diff_variance[::4, ::4]))),
        astrom_rms_arcsec=float(np.hypot(image.astrom_rms_arcsec or 0, reference.astrom_rms_arcsec or 0)),
        mjd=image.mjd,
        band=image.band,
    )
    values = image_columns(
        diff_data, filepath=stem, provenance_id=prov.id, field=image.field, section_id=image.section_id
    )
    values.update(
        new_image_id=image.id,
        reference_id=reference.id,
        score_std=float(result.score_std),
        extra={
            "renorm_factor": float(result.renorm_factor),
            "f_d": float(result.f_d),
            "noise_corr_new": float(result.noise_corr_new),
            "noise_corr_ref": float(result.noise_corr_ref),
        },
    )
    sub, _ = insert_or_get(
        session, SubtractionImage, values, conflict=("new_image_id", "reference_id", "provenance_id")
    )
    log.info(
        "subtracted image %d - coadd %d -> subtraction %d in %.2f s (S_corr std %.3f, renorm %.3f)",
        image.id,
        reference.id,
        sub.id,
        time.perf_counter() - t0,
        result.score_std,
        result.renorm_factor,
    )
    return sub


def subtraction_event(sub: SubtractionImage, *, produced_at_ms: int, ingested_at_ms: int) -> dict[str, Any]:
    """The subtraction-done record for a SubtractionImage row."""
    return {
        "subtraction_id": sub.id,
        "image_id": sub.new_image_id,
        "reference_id": sub.reference_id,
        "field": sub.field or "",
        "band": sub.band,
        "mjd": sub.mjd,
        "path": sub.filepath,
        "provenance_id": sub.provenance_id,
        "produced_at": produced_at_ms,
        "ingested_at": ingested_at_ms,
    }
