"""Ingest of already-reduced images (real DECam frames from ../shared/data) against real PostgreSQL and Kafka.

The decam-sfft headers carry the same (wrong) MJD-OBS in all ten files (see shared/data/README.md), so these
tests check rows, files and events, not any ordering by MJD.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from producers.ingest import Ingestor
from seechange.cli import main
from seechange.config import Settings
from seechange.imageio import read_image_data
from seechange.improc.reduction import ReduceParams
from seechange.improc.types import FLAG_BAD
from seechange.models import Exposure, Image
from seechange.models.session import make_session_factory
from seechange.pipeline.ingest import IngestError
from seechange.pipeline.ingest_reduced import (
    PROCESS,
    ReducedFiles,
    pair_cp_triplets,
    register_reduced_image,
)
from seechange.streaming.framing import decode
from seechange.streaming.keys import sky_tile_key
from seechange.streaming.registry import SchemaRegistry
from seechange.timestamps import epoch_ms
from tests.integration._runloop_worker import consume_all
from tests.paths import SHARED_DATA

DECAM_SCALE = 0.263  # arcsec / pixel
PIXELS = np.array([[0.0, 0.0], [255.0, 255.0], [17.5, 203.25], [128.0, 128.0], [250.0, 3.0]])


def _wcs(header: fits.Header | str) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        if isinstance(header, str):
            header = fits.Header.fromstring(header)
        return WCS(header).celestial


def _count(session: Session) -> tuple[int, int]:
    return (
        session.scalar(select(func.count()).select_from(Exposure)) or 0,
        session.scalar(select(func.count()).select_from(Image)) or 0,
    )


#: The decam-sfft frames carry no zero-point card and these data roots no reference catalogue, so ingest
#: would refuse them: the copies get this MAGZERO (ADU, the operator's card a survey table would give).
MAGZERO = 31.5


@pytest.fixture
def decam(shared_data: Path, test_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder inside the test data root holding copies of the decam-sfft frames, with ``MAGZERO``."""
    folder = Path(test_settings.data_dir) / "incoming" / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((shared_data / "decam-sfft").glob("DEC-OBS*.mini.fits")):
        shutil.copy(src, folder / src.name)
        with fits.open(folder / src.name, mode="update") as hdul:
            hdul[0].header["MAGZERO"] = MAGZERO
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_one_frame_becomes_exposure_and_image(
    db_session: Session, test_settings: Settings, decam: Path
) -> None:
    root = Path(test_settings.data_dir)
    path = decam / "DEC-OBS04a.mini.fits"
    before = _count(db_session)

    # without a zero-point card and with no reference catalogue to measure one: refused, nothing written
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["MAGZERO"]
    with pytest.raises(IngestError) as refusal:
        register_reduced_image(db_session, root, path, params=ReduceParams())
    assert str(refusal.value) == (
        "DEC-OBS04a.mini.fits: no zero point: no MAGZERO/MAGZPT/ZP card and no <data root>/refcat "
        "catalogue covers it"
    )
    assert _count(db_session) == before
    assert not list((root / "reduced").rglob("DEC-OBS04a.mini*"))

    with fits.open(path, mode="update") as hdul:
        hdul[0].header["MAGZERO"] = MAGZERO
    header = fits.getheader(path)
    exposure, image, created = register_reduced_image(db_session, root, path, params=ReduceParams())

    assert created
    assert _count(db_session) == (before[0] + 1, before[1] + 1)
    assert (exposure.instrument, exposure.origin_id, exposure.section_id) == (
        "DECam",
        "DEC-OBS04a.mini",
        "37",
    )
    assert exposure.filepath == f"incoming/{decam.name}/DEC-OBS04a.mini.fits"
    assert exposure.band == "i" and exposure.filter.startswith("i DECam")
    assert exposure.mjd == pytest.approx(58334.39133794, abs=1e-9)
    assert exposure.exp_time == 330.0
    assert exposure.gain == pytest.approx(3.984046692260535) and exposure.read_noise == pytest.approx(
        11.83702
    )
    assert image.exposure_id == exposure.id and image.band == "i" and image.section_id == "37"
    assert image.provenance.process == PROCESS
    assert [p.id for p in image.provenance.upstreams] == [exposure.provenance_id]
    assert (image.width, image.height) == (256, 256)

    # the header WCS (TPV) is kept: in the row, in the written file, and the exposure centre follows it
    file_world = _wcs(header).all_pix2world(PIXELS, 0)
    row_world = _wcs(image.wcs_header).all_pix2world(PIXELS, 0)
    assert np.abs(row_world - file_world).max() < 1e-6
    data = read_image_data(root / image.filepath)
    assert np.abs(data.wcs.all_pix2world(PIXELS, 0) - file_world).max() < 1e-6
    centre = _wcs(header).all_pix2world([[127.5, 127.5]], 0)[0]
    assert (exposure.ra, exposure.dec) == pytest.approx(tuple(centre), abs=1e-9)
    assert (image.ra, image.dec) == pytest.approx(tuple(centre), abs=1e-9)

    # the product files are readable, in electrons, background removed
    assert data.image.shape == (256, 256) and data.image.dtype == np.float32
    assert data.weight.shape == data.flags.shape == (256, 256)
    assert image.bkg_rms is not None and abs(float(np.median(data.image))) < 0.1 * image.bkg_rms
    assert image.bkg_rms == pytest.approx(header["AVSIG"] * header["GAIN"], rel=0.3)
    assert image.fwhm_arcsec == pytest.approx(header["FWHM"] * DECAM_SCALE, rel=0.15)
    assert image.zero_point == pytest.approx(MAGZERO + 2.5 * np.log10(header["GAIN"]), abs=1e-9)

    # a second call finds both rows and writes nothing
    image_file = root / f"{image.filepath}.image.fits"
    mtime = image_file.stat().st_mtime_ns
    exposure2, image2, created2 = register_reduced_image(db_session, root, path, params=ReduceParams())
    assert not created2 and (exposure2.id, image2.id) == (exposure.id, image.id)
    assert _count(db_session) == (before[0] + 1, before[1] + 1)
    assert image_file.stat().st_mtime_ns == mtime


def test_header_zero_point_and_mask_are_kept(
    db_session: Session, test_settings: Settings, decam: Path
) -> None:
    root = Path(test_settings.data_dir)
    with fits.open(decam / "DEC-OBS18a.mini.fits") as hdul:
        hdu = hdul[0].copy()
    hdu.header["MAGZERO"] = 30.25
    hdu.header["EXPNUM"] = 555123
    image_path = decam / "c4d_160818_000001_ooi_i_v1.fits"
    hdu.writeto(image_path)
    mask = np.zeros(hdu.data.shape, np.int16)
    mask[:, 40] = 1
    fits.PrimaryHDU(mask).writeto(decam / "c4d_160818_000001_ood_i_v1.fits")
    weight = np.full(hdu.data.shape, 1.0 / hdu.header["AVSIG"] ** 2, np.float32)
    fits.PrimaryHDU(weight).writeto(decam / "c4d_160818_000001_oow_i_v1.fits")

    triplets = pair_cp_triplets(sorted(decam.glob("c4d_*.fits")))
    assert triplets == [
        ReducedFiles(
            image_path, decam / "c4d_160818_000001_oow_i_v1.fits", decam / "c4d_160818_000001_ood_i_v1.fits"
        )
    ]
    t = triplets[0]
    exposure, image, created = register_reduced_image(
        db_session, root, t.image, weight_path=t.weight, mask_path=t.mask, params=ReduceParams()
    )
    assert created and exposure.origin_id == "555123"
    gain = hdu.header["GAIN"]
    assert image.zero_point == pytest.approx(30.25 + 2.5 * np.log10(gain), abs=1e-9)
    assert image.extra is not None and image.extra["zp_source"] == "MAGZERO"
    assert image.extra["source_mask"] == f"incoming/{decam.name}/c4d_160818_000001_ood_i_v1.fits"
    data = read_image_data(root / image.filepath)
    assert np.all(data.flags[:, 40] & FLAG_BAD) and np.all(data.weight[:, 40] == 0)
    good = data.flags == 0
    assert np.allclose(data.weight[good], 1.0 / (hdu.header["AVSIG"] * gain) ** 2, rtol=1e-5)


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"SIMPLE = not really a FITS file\n", "not a readable FITS file"),
        (None, "no celestial WCS"),
    ],
)
def test_bad_files_are_one_line_errors(
    db_session: Session, test_settings: Settings, decam: Path, content: bytes | None, expect: str
) -> None:
    path = decam / "bad.fits"
    if content is None:
        header = fits.getheader(decam / "DEC-OBS04c.mini.fits")
        for key in [k for k in header if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD", "PV"))]:
            del header[key]
        fits.PrimaryHDU(np.zeros((32, 32), np.float32), header).writeto(path)
    else:
        path.write_bytes(content)
    before = _count(db_session)
    with pytest.raises(IngestError, match=expect) as info:
        register_reduced_image(db_session, Path(test_settings.data_dir), path, params=ReduceParams())
    assert "\n" not in str(info.value)
    assert _count(db_session) == before
    with pytest.raises(IngestError, match="outside the data root"):
        register_reduced_image(
            db_session, Path(test_settings.data_dir), Path("/etc/hostname"), params=ReduceParams()
        )


def test_ingestor_emits_image_reduced_and_dead_letters(
    test_settings: Settings, db_engine: Engine, decam: Path
) -> None:
    registry = SchemaRegistry.load()
    factory = make_session_factory(db_engine)
    ingestor = Ingestor(test_settings, factory)
    bad = decam / "notes.fits"
    bad.write_text("observing log, not an image\n")
    good = ReducedFiles(decam / "DEC-OBS04b.mini.fits")
    try:
        report = ingestor.ingest_reduced([good, ReducedFiles(bad)])
        again = ingestor.ingest_reduced([good])
    finally:
        ingestor.close()

    assert report.new == 1 and len(report.images) == 1 and len(report.registered) == 1
    assert again.new == 0 and again.images == report.images and again.registered == report.registered
    assert len(report.failed) == 1 and report.failed[0][0] == str(bad)
    assert "not a readable FITS file" in report.failed[0][1] and "\n" not in report.failed[0][1]

    image_id = report.images[0]
    with factory() as session:
        image = session.get(Image, image_id)
        assert image is not None
        n_images = session.scalar(
            select(func.count()).select_from(Image).where(Image.exposure_id == report.registered[0])
        )
        ingested_at = image.exposure.ingested_at
        expected_path = image.filepath
        expected_key = sky_tile_key(image.exposure.healpix).encode()
    assert n_images == 1
    assert expected_path.startswith("reduced/") and expected_path.endswith("/DEC-OBS04b.mini")

    events = [
        m
        for m in consume_all(test_settings, "image-reduced", expect=2)
        if decode(registry, m.value() or b"", expect="image_reduced")[1]["image_id"] == image_id
    ]
    assert len(events) == 2  # one per call: the second call writes nothing but announces again
    for message in events:
        assert message.key() == expected_key  # keyed by the sky tile of the CCD centre
        name, record = decode(registry, message.value() or b"", expect="image_reduced")
        assert name == "image_reduced"
        assert record["image_id"] == image_id and record["exposure_id"] == report.registered[0]
        assert (
            record["image_path"] == expected_path and record["band"] == "i" and record["section_id"] == "37"
        )
        assert epoch_ms(record["ingested_at"]) == epoch_ms(ingested_at)

    dead = [
        m
        for m in consume_all(test_settings, "exposure-ready.dlq", expect=1)
        if m.value() == str(bad).encode()
    ]
    assert len(dead) == 1
    headers = dict(dead[0].headers() or [])
    assert headers["error_class"] == b"IngestError"
    assert "not a readable FITS file" in str(headers["error_message"])


def test_cli_pairs_community_pipeline_triplets(
    test_settings: Settings, database_url: str, db_engine: Engine, decam: Path
) -> None:
    names = {code: decam / f"c4d_180804_000002_{code}_i_v1.fits" for code in ("ooi", "oow", "ood")}
    with fits.open(decam / "DEC-OBS04d.mini.fits") as hdul:
        hdu = hdul[0].copy()
    hdu.writeto(names["ooi"])
    fits.PrimaryHDU(np.full(hdu.data.shape, 1e-3, np.float32)).writeto(names["oow"])
    fits.PrimaryHDU(np.zeros(hdu.data.shape, np.uint8)).writeto(names["ood"])
    env = {
        "SEECHANGE_KAFKA_BOOTSTRAP": test_settings.kafka_bootstrap,
        "SEECHANGE_DATABASE_URL": database_url,
        "SEECHANGE_DATA_DIR": str(test_settings.data_dir),
        "SEECHANGE_TOPIC_PREFIX": test_settings.topic_prefix,
    }
    runner = CliRunner()

    misuse = runner.invoke(main, ["ingest", "--weight", str(names["oow"]), str(names["ooi"])], env=env)
    assert misuse.exit_code == 2 and "--weight/--mask need --reduced" in misuse.output

    result = runner.invoke(
        main, ["ingest", *(str(p) for p in names.values())], env=env
    )  # no --reduced needed
    assert result.exit_code == 0, result.output
    assert "ingested 1 reduced image(s) (1 new), 0 failed" in result.output
    with make_session_factory(db_engine)() as session:
        image = session.scalars(
            select(Image)
            .join(Exposure)
            .where(Exposure.filepath == f"incoming/{decam.name}/{names['ooi'].name}")
        ).one()
        assert image.extra is not None
        assert image.extra["source_weight"] == f"incoming/{decam.name}/{names['oow'].name}"
        assert image.extra["source_mask"] == f"incoming/{decam.name}/{names['ood'].name}"
    data = read_image_data(Path(test_settings.data_dir) / image.filepath)
    gain = hdu.header["GAIN"]
    assert np.allclose(data.weight[data.flags == 0], 1e-3 / gain**2, rtol=1e-5)


@pytest.mark.skipif(
    not (SHARED_DATA / "legacypipe-decam").is_dir(), reason="../shared/data/legacypipe-decam not present"
)
def test_ingest_uses_the_psfex_model_beside_a_cp_triplet(
    test_settings: Settings, database_url: str, db_engine: Engine, decam: Path
) -> None:
    """A CP triplet with the survey's PSFEx model in ``psfex/`` beside it: the stored PSF is that model."""
    from seechange.improc.psf import psfex_psf

    src = SHARED_DATA / "legacypipe-decam" / "testcase3"
    stem = "c4d_180218_090701_{}_z_ls9.N10.fits"
    for code in ("ooi", "oow", "ood"):
        shutil.copy(src / stem.format(code), decam / stem.format(code))
    (decam / "psfex").mkdir()
    model = decam / "psfex" / "c4d_180218_090701_ooi_z_ls9-N10-psfex.fits"
    shutil.copy(src / "psfex" / model.name, model)
    with fits.open(decam / stem.format("ooi"), mode="update") as hdul:
        hdul[0].header["MAGZERO"] = 30.0  # the cut-out has none (the survey's CCD table holds it)
    env = {
        "SEECHANGE_KAFKA_BOOTSTRAP": test_settings.kafka_bootstrap,
        "SEECHANGE_DATABASE_URL": database_url,
        "SEECHANGE_DATA_DIR": str(test_settings.data_dir),
        "SEECHANGE_TOPIC_PREFIX": test_settings.topic_prefix,
    }
    result = CliRunner().invoke(main, ["ingest", str(decam / stem.format("ooi"))], env=env)
    assert result.exit_code == 0, result.output
    with make_session_factory(db_engine)() as session:
        image = session.scalars(
            select(Image).join(Exposure).where(Exposure.filepath.endswith(stem.format("ooi")))
        ).one()
        assert image.extra is not None and image.extra["psf_source"] == "psfex"
        assert image.extra["source_psf"] == f"incoming/{decam.name}/psfex/{model.name}"
    data = read_image_data(Path(test_settings.data_dir) / image.filepath)
    ny, nx = data.shape
    truth = psfex_psf(
        model, x=(nx - 1) / 2, y=(ny - 1) / 2, ccd="N10", max_size=min(ny, nx) - 1 + min(ny, nx) % 2
    )
    assert data.psf.shape == truth.stamp.shape
    assert np.allclose(data.psf, truth.stamp, atol=1e-7)
