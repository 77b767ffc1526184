"""Raw files as archives deliver them, against real PostgreSQL and Kafka: multi-extension and tile-compressed
files split into one Exposure (and one exposure-ready event) per science CCD, refused CCDs dead-lettered one
line each while the rest of the call goes on, and reduce reading only its own HDU.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from producers.ingest import Ingestor
from seechange.cli import main
from seechange.config import Settings
from seechange.imageio import read_ccd, read_image_data
from seechange.improc.reduction import ReduceParams
from seechange.instruments import DECAM
from seechange.models import Exposure, Image
from seechange.models.session import make_session_factory
from seechange.pipeline.reduce import ReduceResources, reduce_exposure_row
from seechange.sim.mef import pack_exposure
from seechange.sim.night import NightSummary, simulate_night
from seechange.streaming.framing import decode
from seechange.streaming.registry import SchemaRegistry
from tests.integration._runloop_worker import consume_all

SIZE = (128, 256)
FIELD = "ingestfiles00"


@pytest.fixture(scope="module")
def settings(test_settings: Settings) -> Settings:
    """The session's settings with a data root of this module's own (its night must not meet others')."""
    return test_settings.model_copy(update={"data_dir": Path(test_settings.data_dir) / "ingest-files"})


@pytest.fixture(scope="module")
def night(settings: Settings) -> NightSummary:
    """One field, two epochs, CCD 37 (N6), small CCDs; written under this module's data root.

    Its own start MJD (the EXPNUM follows it) and field name, so that it shares no natural key and no
    reference with the other modules' nights in the session's database.
    """
    root = Path(settings.data_dir)
    night = simulate_night(root, seed=7, n_fields=1, n_epochs=2, size=SIZE, start_mjd=60321.0)
    for e in night.exposures:
        with fits.open(root / e.raw_path, mode="update") as hdul:
            hdul[0].header["OBJECT"] = FIELD
    return night


@pytest.fixture
def folder(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Path]:
    out = Path(settings.data_dir) / "incoming" / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _exposure_file(
    night: NightSummary, root: Path, out: Path, numbers: list[int], fmt: str, *, expnum: int, epoch: int = 0
) -> Path:
    """One multi-CCD file of the night's exposure ``epoch``: its CCD (37) as rendered, the others relabelled."""
    with fits.open(root / night.exposures[epoch].raw_path) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    header["EXPNUM"] = expnum
    hdus = []
    for n in numbers:
        h = header.copy()
        h["CCDNUM"], h["DETPOS"] = n, DECAM.ccd_name(n)
        hdus.append(fits.ImageHDU(data, h))
    path = out / f"c4d_sim_{expnum}_ori{'.fits.fz' if fmt == 'mef-fz' else '.fits'}"
    pack_exposure(hdus, fmt).writeto(path)
    return path


def _rows(session: Session, filepath: str) -> list[Exposure]:
    return list(session.scalars(select(Exposure).where(Exposure.filepath == filepath).order_by(Exposure.hdu)))


def test_62_ccd_compressed_file_in_one_call_gives_62_rows_and_62_events(
    settings: Settings, db_engine: Engine, night: NightSummary, folder: Path
) -> None:
    root = Path(settings.data_dir)
    path = _exposure_file(night, root, folder, list(DECAM.ccds), "mef-fz", expnum=900001)
    factory = make_session_factory(db_engine)
    ingestor = Ingestor(settings, factory)
    try:
        report = ingestor.ingest([path], skip=frozenset())
        again = ingestor.ingest([path], skip=frozenset())
        default = ingestor.ingest([path])  # S30 and N30 skipped by default, with a word each
    finally:
        ingestor.close()
    assert report.failed == [] and report.skipped == []
    assert len(report.registered) == 62 and report.new == 62
    assert again.new == 0 and sorted(again.registered) == sorted(report.registered)
    assert default.new == 0 and len(default.registered) == 60
    assert sorted(label for label, _ in default.skipped) == [f"{path}[N30]", f"{path}[S30]"]
    rel = str(path.relative_to(root))
    with factory() as session:
        rows = _rows(session, rel)
        assert len(rows) == 62
        assert [r.hdu for r in rows] == list(range(1, 63))
        assert [r.section_id for r in rows] == [str(n) for n in DECAM.ccds]
        assert {r.origin_id for r in rows} == {"900001"} and {r.band for r in rows} == {"r"}
        ids = {r.id for r in rows}
    registry = SchemaRegistry.load()
    events = [
        decode(registry, m.value() or b"", expect="exposure_ready")[1]
        for m in consume_all(settings, "exposure-ready", expect=62, settle=1.0)
    ]
    mine = [e for e in events if e["exposure_id"] in ids]
    assert len(mine) == 62 + 62 + 60  # one per CCD per call (re-announced, never re-created)
    assert {e["exposure_id"] for e in mine} == ids and {e["raw_path"] for e in mine} == {rel}


def test_bad_ccds_and_files_are_dead_lettered_and_the_rest_of_the_call_ingested(
    settings: Settings, db_engine: Engine, night: NightSummary, folder: Path
) -> None:
    root = Path(settings.data_dir)
    three = _exposure_file(night, root, folder, [35, 36, 37], "mef", expnum=900002)
    with fits.open(three, mode="update") as hdul:
        hdul[2].header["MJD-OBS"] = "yesterday"  # one CCD's own card wins over the primary's
    yesterday = folder / "yesterday_37.fits"
    banana = folder / "banana_37.fits"
    for bad, card, value in ((yesterday, "MJD-OBS", "yesterday"), (banana, "FILTER", "banana")):
        with fits.open(root / night.exposures[1].raw_path) as hdul:
            hdul[0].header[card] = value
            hdul[0].header["EXPNUM"] = 900003
            hdul.writeto(bad)
    good = root / night.exposures[1].raw_path
    factory = make_session_factory(db_engine)
    ingestor = Ingestor(settings, factory)
    try:
        report = ingestor.ingest([yesterday, three, banana, good])
    finally:
        ingestor.close()
    failed = dict(report.failed)
    assert set(failed) == {str(yesterday), f"{three}[N5]", str(banana)}
    assert "yesterday_37.fits CCD N6: MJD-OBS = 'yesterday' is not an MJD" in failed[str(yesterday)]
    assert f"{three.name} CCD N5: MJD-OBS = 'yesterday'" in failed[f"{three}[N5]"]
    assert "FILTER = 'banana' is not a DECam filter" in failed[str(banana)]
    assert len(report.registered) == 3  # N4 and N6 of the three-CCD file, and the good file
    with factory() as session:
        assert [r.section_id for r in _rows(session, str(three.relative_to(root)))] == ["35", "37"]
    dead = {
        m.key(): dict(m.headers() or [])
        for m in consume_all(settings, "exposure-ready.dlq", expect=3, settle=1.0)
    }
    for label in failed:
        headers = dead[label.encode()]
        assert headers["error_class"] == b"IngestError"
        assert b"\n" not in headers["error_message"]


def test_cli_exit_status_counts_failures(
    settings: Settings, database_url: str, night: NightSummary, folder: Path
) -> None:
    root = Path(settings.data_dir)
    bad = folder / "ra400_37.fits"
    with fits.open(root / night.exposures[0].raw_path) as hdul:
        hdul[0].header["RA"] = 400.0
        hdul.writeto(bad)
    env = {
        "SEECHANGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SEECHANGE_DATABASE_URL": database_url,
        "SEECHANGE_DATA_DIR": str(settings.data_dir),
        "SEECHANGE_TOPIC_PREFIX": settings.topic_prefix,
    }
    result = CliRunner().invoke(main, ["ingest", str(bad), str(root / night.exposures[0].raw_path)], env=env)
    assert result.exit_code == 1, result.output
    assert "ingested 1 exposure(s)" in result.output and "1 failed" in result.output


def test_reduce_reads_only_its_hdu_and_gives_the_single_ccd_pixels(
    settings: Settings, db_engine: Engine, night: NightSummary, folder: Path
) -> None:
    root = Path(settings.data_dir)
    single = root / night.exposures[0].raw_path
    packed = _exposure_file(night, root, folder, [36, 37, 38], "mef-fz", expnum=900004)
    assert np.array_equal(read_ccd(packed, hdu=2).data, read_ccd(single).data)  # RICE_1 on int32: lossless
    factory = make_session_factory(db_engine)
    ingestor = Ingestor(settings, factory)
    try:
        report = ingestor.ingest([single, packed])
    finally:
        ingestor.close()
    assert report.failed == [] and len(report.registered) == 4
    resources = ReduceResources(root)
    with factory() as session, session.begin():
        by_file = {
            (e.filepath, e.section_id): e.id
            for e in session.scalars(select(Exposure).where(Exposure.id.in_(report.registered)))
        }
        a, _ = reduce_exposure_row(
            session, resources, by_file[(night.exposures[0].raw_path, "37")], params=ReduceParams()
        )
        b, _ = reduce_exposure_row(
            session, resources, by_file[(str(packed.relative_to(root)), "37")], params=ReduceParams()
        )
        paths = a.filepath, b.filepath
        assert b.filepath.endswith("c4d_sim_900004_ori_37")
        assert a.zero_point == pytest.approx(b.zero_point, abs=0) and a.fwhm_arcsec == b.fwhm_arcsec
        assert session.scalar(select(Image.extra).where(Image.id == b.id)) is not None
    da, db = (read_image_data(root / p) for p in paths)
    assert np.array_equal(da.image, db.image) and np.array_equal(da.flags, db.flags)
    assert np.array_equal(da.weight, db.weight)


def test_watch_ingests_compressed_files(
    settings: Settings, db_engine: Engine, night: NightSummary, folder: Path
) -> None:
    root = Path(settings.data_dir)
    path = _exposure_file(night, root, folder, [40, 41], "mef-fz", expnum=900005)
    (folder / f".{path.name}.123.tmp").write_bytes(b"half written")  # an atomic write in progress: ignored
    factory = make_session_factory(db_engine)
    ingestor = Ingestor(settings, factory)
    polls = iter(range(3))
    try:
        ingestor.watch(folder, poll_s=0.05, stop=lambda: next(polls, None) is None)
    finally:
        ingestor.close()
    with factory() as session:
        assert [r.section_id for r in _rows(session, str(path.relative_to(root)))] == ["40", "41"]
