"""References prepared ahead of a night (``seechange reference build``), as operators prepare templates.

The given reduced images (files, or folders searched recursively: Community Pipeline ``ooi``/``oow``/``ood``
triplets or plain reduced images) are registered as the ingest of reduced images registers them
(:func:`~seechange.pipeline.ingest_reduced.register_reduced_image`: same loader, same provenance, no
image-reduced event, so no service subtracts them). Raw exposures (e.g. DECam archive ``c4d_*_ori.fits.fz``,
recognised by :func:`is_raw_file`) go through the pipeline's own ingest and reduce step instead
(:func:`~seechange.pipeline.ingest.scan_raw_file`, :func:`~seechange.pipeline.ingest.register_exposure`,
:func:`~seechange.pipeline.reduce.reduce_exposure_row`: calibration frames and reference catalogue from the
data root, as the reduce service reads them; no event either). Then, in (MJD, id) order, each one's sky gets its
reference from the one reference code (:func:`~seechange.pipeline.references.prepare_reference`): the
first ``n_ref_images`` good images covering it by MJD, built once per sky, found later by the subtract step
of any new image that it covers (at least ``min_overlap`` of it), whatever its OBJECT name or CCD.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits
from sqlalchemy import select
from sqlalchemy.orm import Session

from seechange.errors import BadInput
from seechange.improc.reduction import ReduceParams
from seechange.models import Image
from seechange.pipeline.ingest import input_file, one_line_of, register_exposure, scan_raw_file
from seechange.pipeline.ingest_reduced import pair_cp_triplets, register_reduced_image
from seechange.pipeline.reduce import ReduceResources, reduce_exposure_row
from seechange.pipeline.references import ReferenceParams, ReferencePending, prepare_reference
from seechange.storage import md5sum

__all__ = ["ReferenceBuildReport", "build_references", "is_raw_file", "reduced_files_under"]

log = logging.getLogger(__name__)

_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fit")


@dataclass
class ReferenceBuildReport:
    """What ``build_references`` did.

    Attributes
    ----------
    images : list of int
        Image ids registered (or found registered) from the files.
    built, covered : list of (int, int)
        (image id, reference id): references built now, and images already covered by one.
    not_built : list of (int, str)
        (image id, why): too few good images on its sky, or a member not reduced yet.
    failed : list of (str, str)
        (file, one-line reason): files that could not be registered.
    """

    images: list[int] = field(default_factory=list)
    built: list[tuple[int, int]] = field(default_factory=list)
    covered: list[tuple[int, int]] = field(default_factory=list)
    not_built: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def reduced_files_under(paths: Iterable[Path]) -> list[Path]:
    """The FITS files given, folders searched recursively (sorted; PSFEx models and CCD tables left out).

    Raw exposures among them are kept (:func:`build_references` reduces them first)."""
    out: list[Path] = []
    for p in paths:
        found = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        out += [
            q
            for q in found
            if q.name.lower().endswith(_SUFFIXES)
            and "psfex" not in q.name
            and not q.name.startswith("survey-")
        ]
    return out


def is_raw_file(path: Path) -> bool:
    """True for a raw exposure: an archive name ``*_ori.fits*``, ``PROCTYPE = 'raw'``, or (no ``PROCTYPE``)
    amplifier overscan cards (``BIASSEC*``) in its first headers. NOIRLab's reduced products say
    ``PROCTYPE = 'InstCal'`` (or ``'Stacked'``, ...) and are not raw whatever cards they kept."""
    if "_ori." in path.name:
        return True
    try:
        with fits.open(path) as hdul:
            headers = [hdu.header for hdu in hdul[:2]]
    except OSError:
        return False  # not FITS: left to the reduced-image loader, which refuses it in one line
    proctype = next((str(h["PROCTYPE"]).strip().lower() for h in headers if "PROCTYPE" in h), None)
    if proctype is not None:
        return proctype == "raw"
    return any(str(k).startswith("BIASSEC") for h in headers for k in h)


def _register_raw(
    session_factory: Callable[[], Session],
    resources: ReduceResources,
    path: Path,
    reduce_params: ReduceParams,
    report: ReferenceBuildReport,
) -> None:
    """Ingest a raw file's CCDs and reduce each one as the reduce service does (one transaction per CCD)."""
    try:
        full = input_file(resources.data_root, path)
        outcomes = scan_raw_file(full)
    except BadInput as exc:
        report.failed.append((str(path), one_line_of(exc)))
        return
    digest = md5sum(full)
    for o in outcomes:
        label = str(path) if len(outcomes) == 1 else f"{path}[{o.label}]"
        if o.skipped is not None:
            continue
        if o.error is not None:
            report.failed.append((label, one_line_of(o.error)))
            continue
        try:
            with session_factory() as session, session.begin():
                exposure, _ = register_exposure(session, resources.data_root, full, info=o.info, md5=digest)
                image, _ = reduce_exposure_row(session, resources, exposure.id, params=reduce_params)
                report.images.append(image.id)
        except BadInput as exc:
            reason = one_line_of(exc)
            log.error("reference build: %s: %s", label, reason)
            report.failed.append((label, reason))


def build_references(
    session_factory: Callable[[], Session],
    data_root: Path,
    paths: Iterable[Path],
    *,
    reduce_params: ReduceParams,
    ref_params: ReferenceParams,
) -> ReferenceBuildReport:
    """Register the reduced images under ``paths`` and give each one's sky a reference (one transaction each).

    Parameters
    ----------
    session_factory : callable
        Makes a Session (one transaction per file registered and per reference prepared).
    data_root : Path
        The data root; every file must lie inside it.
    paths : iterable of Path
        Reduced image files, raw exposures (reduced here first) or folders (searched recursively).
    reduce_params, ref_params
        The pipeline's parameters (the provenances then match what the night's subtract step looks for).

    Returns
    -------
    ReferenceBuildReport
    """
    report = ReferenceBuildReport()
    files = reduced_files_under(paths)
    raw = [p for p in files if is_raw_file(p)]
    resources = ReduceResources(data_root)
    for path in raw:
        _register_raw(session_factory, resources, path, reduce_params, report)
    for item in pair_cp_triplets([p for p in files if p not in raw]):
        try:
            with session_factory() as session, session.begin():
                _, image, _ = register_reduced_image(
                    session,
                    data_root,
                    item.image,
                    weight_path=item.weight,
                    mask_path=item.mask,
                    psf_path=item.psf,
                    params=reduce_params,
                )
                report.images.append(image.id)
        except BadInput as exc:
            reason = " ".join(str(exc).split())
            log.error("reference build: %s: %s", item.image, reason)
            report.failed.append((str(item.image), reason))
    with session_factory() as session:
        rows = session.execute(select(Image.id, Image.mjd).where(Image.id.in_(report.images))).all()
        order = [int(r[0]) for r in sorted(rows, key=lambda r: (float(r[1]), int(r[0])))]
    for image_id in order:
        with session_factory() as session, session.begin():
            row = session.get(Image, image_id)
            assert row is not None
            try:
                ref, outcome = prepare_reference(session, data_root, row, params=ref_params)
            except ReferencePending as exc:
                report.not_built.append((image_id, str(exc)))
                continue
            if ref is None:
                report.not_built.append((image_id, outcome))
            elif outcome == "built":
                report.built.append((image_id, ref.id))
            else:
                report.covered.append((image_id, ref.id))
    return report
