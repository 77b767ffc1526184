"""Multi-extension Community Pipeline triplets (``ooi``/``oow``/``ood``, compressed and not) through ingest,
subtract and detect, against the simulator's truth.

A simulated night (one field, two DECam CCDs, 5 epochs, the first 3 building the reference) is reduced by
the pipeline's own raw reduction and written back as the CP delivers its products: one file per exposure and
product holding every CCD (an extension each, ``CCDNUM``/``DETPOS``/``EXTNAME``), image in ADU with
``GAIN`` and ``MAGZERO``, inverse-variance weight in ADU^-2, the data-quality mask as CP codes. The mask
file lists its CCDs in the opposite order (matching is by CCDNUM, not position); the last epoch carries no
``MAGZERO`` (its zero point is measured against the reference catalogue); one epoch is plain ``.fits``,
the others tile-compressed ``.fits.fz``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from producers.ingest import Ingestor
from seechange.config import Settings
from seechange.imageio import read_ccd, read_image_data
from seechange.improc.astrometry import load_refcat
from seechange.improc.calibrate import load_calibration
from seechange.improc.detection import DetectParams
from seechange.improc.reduction import ReduceParams, reduce_exposure
from seechange.improc.subtraction import SubtractParams
from seechange.improc.types import FLAG_BAD, FLAG_COSMIC_RAY, FLAG_SATURATED, ImageData
from seechange.models import Exposure, Image
from seechange.models.session import make_session_factory
from seechange.pipeline.detect import detect_on_subtraction
from seechange.pipeline.ingest_reduced import pair_cp_triplets, register_reduced_file
from seechange.pipeline.references import ReferenceParams
from seechange.pipeline.subtract import subtract_image_row
from seechange.sim.instrument import detpos
from seechange.sim.night import ExposureRecord, NightSummary, simulate_night
from seechange.sim.truth import read_truth
from seechange.sphere import angular_sep_arcsec
from seechange.streaming.framing import decode
from seechange.streaming.keys import sky_tile_key
from seechange.streaming.registry import SchemaRegistry
from tests.integration._chain_night import N_REF, SIZE, bright_transients
from tests.integration._runloop_worker import consume_all

SEED = 4242
CCDS = [35, 37]
N_EPOCHS = 5
FILTER = "r DECam SDSS c0002 6415.0 1480.0"
MATCH_ARCSEC = 1.0


def _cp_codes(flags: np.ndarray) -> np.ndarray:
    """Our flag bits as CP data-quality codes (one code per pixel)."""
    out = np.zeros(flags.shape, np.int16)
    out[flags != 0] = 1
    out[(flags & FLAG_COSMIC_RAY) != 0] = 5
    out[(flags & FLAG_SATURATED) != 0] = 3
    return out


def _reduce(root: Path, e: ExposureRecord) -> tuple[ImageData, fits.Header]:
    """The pipeline's raw reduction of one simulated CCD (no database)."""
    ccd = read_ccd(root / e.raw_path)
    calib = load_calibration(root / "calib" / "DECam" / str(e.ccdnum))
    refcat = load_refcat(root / "refcat", float(ccd.header["CRVAL1"]), float(ccd.header["CRVAL2"]), 0.6)
    data = reduce_exposure(ccd.data, ccd.header, calib, refcat, params=ReduceParams(), band=e.band)
    return data, ccd.header


def _write_cp(
    folder: Path,
    expname: str,
    ccds: list[tuple[ExposureRecord, ImageData, fits.Header]],
    *,
    compressed: bool,
    with_zp: bool,
) -> Path:
    """One exposure's CP triplet, every CCD in each file; the image's path."""
    e0, _, raw0 = ccds[0]
    primary = fits.Header()
    for key in ("MJD-OBS", "EXPTIME", "AIRMASS", "OBJECT"):
        primary[key] = raw0[key]
    primary.update(INSTRUME="DECam", EXPNUM=e0.expnum, FILTER=FILTER, PRODTYPE="image")
    suffix = ".fits.fz" if compressed else ".fits"
    hdus: dict[str, list[fits.ImageHDU | fits.CompImageHDU]] = {"ooi": [], "oow": [], "ood": []}
    for e, data, _ in ccds:
        gain = 4.0
        name = detpos(e.ccdnum)
        h = data.wcs.to_header(relax=True)
        h.update(CCDNUM=e.ccdnum, DETPOS=name, EXTNAME=name, GAIN=gain)
        if with_zp:
            h["MAGZERO"] = data.zp - 2.5 * math.log10(gain)  # ours is for electrons, the card for ADU
        weight = np.where(data.flags == 0, data.weight * gain**2, 0).astype(np.float32)
        planes = {
            "ooi": (data.image / gain).astype(np.float32),
            "oow": weight,
            "ood": _cp_codes(data.flags),
        }
        for kind, plane in planes.items():
            hdr = h.copy()
            if compressed:
                hdus[kind].append(fits.CompImageHDU(plane, hdr, compression_type="RICE_1", quantize_level=64))
            else:
                hdus[kind].append(fits.ImageHDU(plane, hdr))
    hdus["ood"].reverse()  # the mask lists its CCDs in the other order: matched by CCDNUM
    for kind, extensions in hdus.items():
        fits.HDUList([fits.PrimaryHDU(header=primary), *extensions]).writeto(
            folder / f"{expname}_{kind}_r_v1{suffix}"
        )
    return folder / f"{expname}_ooi_r_v1{suffix}"


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NightSummary, list[Path]]:
    """The simulated night, its CP products under ``<root>/cp`` (one triplet per exposure), the images."""
    root = tmp_path_factory.mktemp("cp-mef")
    summary = simulate_night(
        root, seed=SEED, n_fields=1, n_epochs=N_EPOCHS, size=SIZE, n_ref_epochs=N_REF, ccdnums=CCDS
    )
    folder = root / "cp"
    folder.mkdir()
    by_exposure: dict[str, list[tuple[ExposureRecord, ImageData, fits.Header]]] = {}
    for e in summary.exposures:
        by_exposure.setdefault(e.expname, []).append((e, *_reduce(root, e)))
    images = []
    for n, (expname, ccds) in enumerate(by_exposure.items()):
        images.append(_write_cp(folder, expname, ccds, compressed=n != 1, with_zp=n != N_EPOCHS - 1))
    return root, summary, images


def test_cp_mef_triplets_ingest_per_ccd_and_reach_detect(
    db_session: Session, night: tuple[Path, NightSummary, list[Path]]
) -> None:
    root, summary, image_files = night
    triplets = pair_cp_triplets(sorted((root / "cp").iterdir()))
    assert [t.image for t in triplets] == sorted(image_files)
    assert all(t.weight is not None and t.mask is not None for t in triplets)

    images: list[Image] = []
    for t in triplets:
        outcomes = register_reduced_file(db_session, root, t, params=ReduceParams())
        assert [o.label for o in outcomes] == [detpos(c) for c in CCDS]
        assert all(o.error is None and o.created for o in outcomes), [o.error for o in outcomes]
        images += [o.image for o in outcomes if o.image is not None]
    db_session.flush()
    assert len(images) == N_EPOCHS * len(CCDS)
    n_exp = db_session.scalar(select(func.count()).select_from(Exposure))
    assert n_exp == N_EPOCHS * len(CCDS)

    # one Exposure and Image per CCD: the CCD's HDU, section, truth zero point, mask codes as flags
    for image in images:
        exposure = image.exposure
        ccdnum = int(exposure.section_id)
        assert exposure.hdu == 1 + CCDS.index(ccdnum) and image.section_id == str(ccdnum)
        e = next(x for x in summary.exposures if x.expnum == int(exposure.origin_id) and x.ccdnum == ccdnum)
        truth = read_truth(root, e.expname, e.ccdnum)
        assert image.extra is not None
        original = read_ccd(root / exposure.filepath, exposure.hdu)
        assert original.header["CCDNUM"] == ccdnum
        if e.epoch == N_EPOCHS - 1:  # no card: measured against the reference catalogue
            assert image.extra["zp_source"] == "refcat" and "MAGZERO" not in original.header
            assert image.zero_point == pytest.approx(float(truth.meta["zp"]), abs=0.05)
        else:  # the card (for ADU) converted to electrons
            assert image.extra["zp_source"] == "MAGZERO"
            assert image.zero_point == pytest.approx(
                original.header["MAGZERO"] + 2.5 * math.log10(4.0), abs=1e-9
            )
        data = read_image_data(root / image.filepath)
        mask = read_ccd(root / image.extra["source_mask"], detpos(ccdnum), dtype=None).data
        assert np.all(data.flags[mask == 3] & FLAG_SATURATED) and np.all(data.flags[mask == 1] & FLAG_BAD)
        assert np.all(data.weight[mask != 0] == 0)

    # the same file again: nothing new
    again = register_reduced_file(db_session, root, triplets[0], params=ReduceParams())
    assert [o.created for o in again] == [False, False]
    assert {o.image.id for o in again if o.image} == {i.id for i in images[: len(CCDS)]}

    # subtract and detect in time order; every bright injected transient found by a good sighting, unless
    # the reference is flagged under it (the coadd keeps a member's bad column in a bright star's wings)
    sightings = []
    subs = []
    for image in sorted(images, key=lambda i: (i.mjd, i.section_id)):
        sub = subtract_image_row(
            db_session, root, image.id, ref_params=ReferenceParams(), params=SubtractParams()
        )
        if sub is None:
            continue
        subs.append(sub)
        sightings += detect_on_subtraction(
            db_session, root, sub.id, params=DetectParams(), radius_arcsec=1.5, threads=1
        )
    assert len(subs) == (N_EPOCHS - N_REF) * len(CCDS)
    good = [s for s in sightings if s.is_good]
    bright = bright_transients(root, summary)
    assert len(bright) >= 3
    found = [
        any(
            abs(s.mjd - t["mjd"]) < 0.01 and angular_sep_arcsec(s.ra, s.dec, t["ra"], t["dec"]) < MATCH_ARCSEC
            for s in good
        )
        for t in bright
    ]
    for t, ok in zip(bright, found, strict=True):
        if not ok:
            assert _reference_flagged_at(root, subs, t), f"transient at {t} not found"
    assert sum(found) >= 3, (sum(found), len(bright))


def _reference_flagged_at(root: Path, subs: list, t: dict[str, float]) -> bool:
    """Whether a reference coadd has flagged pixels within 3 px of the transient's position."""
    for sub in subs:
        ref = read_image_data(root / sub.reference.filepath)
        x, y = (round(float(v)) for v in ref.wcs.all_world2pix([[t["ra"], t["dec"]]], 0)[0])
        ny, nx = ref.flags.shape
        if 3 <= x < nx - 3 and 3 <= y < ny - 3 and np.any(ref.flags[y - 3 : y + 4, x - 3 : x + 4]):
            return True
    return False


def test_cp_mef_ccd_without_zero_point_is_refused_alone(
    db_session: Session, night: tuple[Path, NightSummary, list[Path]], tmp_path: Path
) -> None:
    """A CCD with no MAGZERO under a data root with no reference catalogue: that CCD refused in one line
    (no row, no file), the file's other CCD ingested."""
    _, _, image_files = night
    src = image_files[0]
    other = tmp_path / "root"
    (other / "cp").mkdir(parents=True)
    for code in ("ooi", "oow", "ood"):
        name = src.name.replace("_ooi_", f"_{code}_")
        with fits.open(src.parent / name) as hdul:
            hdul[0].header["EXPNUM"] = 900001  # another exposure than the other test's
            if code == "ooi":
                del hdul[2].header["MAGZERO"]
            hdul.writeto(other / "cp" / name)
    (t,) = pair_cp_triplets(sorted((other / "cp").iterdir()))
    before = db_session.scalar(select(func.count()).select_from(Image))
    outcomes = register_reduced_file(db_session, other, t, params=ReduceParams())
    assert [o.label for o in outcomes] == [detpos(c) for c in CCDS]
    assert outcomes[0].error is None and outcomes[0].created
    assert str(outcomes[1].error) == (
        f"{src.name} CCD {detpos(CCDS[1])}: no zero point: no MAGZERO/MAGZPT/ZP card and no <data root>/refcat "
        "catalogue covers it"
    )
    assert db_session.scalar(select(func.count()).select_from(Image)) == (before or 0) + 1
    written = sorted(p.name for p in (other / "reduced").rglob("*.image.fits"))
    assert written == [f"{src.name.removesuffix('.fits.fz')}_{CCDS[0]}.image.fits"]


def test_ingestor_dead_letters_one_ccd_of_a_cp_file(
    test_settings: Settings, db_engine: Engine, night: tuple[Path, NightSummary, list[Path]], tmp_path: Path
) -> None:
    """Through the ingest producer: the good CCD announced on image-reduced, the refused one dead-lettered as
    ``path[CCD]`` with one line."""
    _, _, image_files = night
    settings = test_settings.model_copy(update={"data_dir": tmp_path})
    src = image_files[0]
    for code in ("ooi", "oow", "ood"):
        name = src.name.replace("_ooi_", f"_{code}_")
        with fits.open(src.parent / name) as hdul:
            hdul[0].header["EXPNUM"] = 900002
            if code == "ooi":
                del hdul[1].header["MAGZERO"]
            hdul.writeto(tmp_path / name)
    (t,) = pair_cp_triplets(sorted(tmp_path.glob("*.fits*")))
    ingestor = Ingestor(settings, make_session_factory(db_engine))
    try:
        report = ingestor.ingest_reduced([t])
    finally:
        ingestor.close()
    bad = f"{t.image}[{detpos(CCDS[0])}]"
    assert len(report.images) == 1 and report.new == 1
    assert [f[0] for f in report.failed] == [bad]
    assert "no zero point" in report.failed[0][1] and "\n" not in report.failed[0][1]
    registry = SchemaRegistry.load()
    events = [
        m
        for m in consume_all(settings, "image-reduced", expect=1)
        if decode(registry, m.value() or b"", expect="image_reduced")[1]["image_id"] == report.images[0]
    ]
    assert len(events) == 1
    with Session(db_engine) as session:
        image = session.get(Image, report.images[0])
        assert image is not None
        assert events[0].key() == sky_tile_key(image.exposure.healpix).encode()
    dead = [m for m in consume_all(settings, "exposure-ready.dlq", expect=1) if m.key() == bad.encode()]
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert headers["origin_path"] == str(t.image).encode()
