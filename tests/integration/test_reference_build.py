"""``seechange reference build`` ahead of a night: the reference it builds is the one subtract then finds.

Real legacypipe-decam testcase3 g epochs (three programmes, CCDs N11, N12, N10): the first two, put in an
"archive" folder, are given to the builder; the third arrives later, as a night's image would, and its
subtraction must use the reference built beforehand (no second build).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from seechange.config import Settings
from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import SubtractParams
from seechange.models import CoaddImage, Image
from seechange.models.session import make_session_factory
from seechange.pipeline.ingest_reduced import pair_cp_triplets, register_reduced_image
from seechange.pipeline.reference_build import build_references
from seechange.pipeline.references import ReferenceParams
from seechange.pipeline.subtract import subtract_image_row
from tests.paths import SHARED_DATA


@pytest.fixture
def g_epochs(shared_data: Path, test_settings: Settings) -> Iterator[tuple[Path, Path]]:
    """(archive folder with the first two g epochs, the third epoch's image), MAGZERO from the CCD table."""
    src = shared_data / "legacypipe-decam" / "testcase3"
    base = Path(test_settings.data_dir) / "incoming" / f"refbuild-{uuid.uuid4().hex[:8]}"
    archive, tonight = base / "archive" / "deep", base / "tonight"
    archive.mkdir(parents=True)
    tonight.mkdir(parents=True)
    ccds = Table.read(src / "survey-ccds-1.fits.gz")
    zpt = {(int(r["expnum"]), str(r["ccdname"]).strip()): float(r["ccdzpt"]) for r in ccds}
    stamps = sorted({p.name.split("_")[1] + p.name.split("_")[2] for p in src.glob("c4d_*_ooi_g_*.fits")})
    assert len(stamps) == 3
    for path in sorted(src.glob("c4d_*_g_ls9.*.fits")):
        dest = (
            tonight if path.name.split("_")[1] + path.name.split("_")[2] == stamps[-1] else archive
        ) / path.name
        shutil.copy(path, dest)
        if "_ooi_" in path.name:
            with fits.open(dest, mode="update") as hdul:
                hdr = hdul[0].header
                key = (int(hdr["EXPNUM"]), str(hdul[1].header["DETPOS"]).strip())
                hdr["MAGZERO"] = zpt[key] + 2.5 * np.log10(float(hdr["EXPTIME"]))
    (archive / "survey-ccds-1.fits.gz").write_bytes(b"")  # an archive's side files are not images
    yield archive.parent, next(tonight.glob("*_ooi_*"))
    shutil.rmtree(base, ignore_errors=True)


def test_reference_built_ahead_is_found_by_subtract(
    db_engine: Engine, test_settings: Settings, g_epochs: tuple[Path, Path]
) -> None:
    archive, new_path = g_epochs
    root = Path(test_settings.data_dir)
    factory = make_session_factory(db_engine)
    params = ReferenceParams(n_ref_images=2)
    report = build_references(factory, root, [archive], reduce_params=ReduceParams(), ref_params=params)
    assert report.failed == [] and len(report.images) == 2
    # the first image by MJD already has both on its sky: the reference is built there, the second is covered
    assert [i for i, _ in report.built] == [min(report.images)]
    assert report.covered == [(max(report.images), report.built[0][1])] and report.not_built == []
    ref_id = report.built[0][1]
    with factory() as session:
        ref = session.get(CoaddImage, ref_id)
        assert ref is not None and sorted(m.id for m in ref.images) == sorted(report.images)
        assert ref.band == "g" and ref.reference_key.startswith("DECam/g/image")
        fields = {m.field for m in ref.images}
        assert len(fields) == 2  # two programmes' OBJECT names in one reference

    # built again: nothing new (covered)
    again = build_references(factory, root, [archive], reduce_params=ReduceParams(), ref_params=params)
    assert again.built == [] and sorted(i for i, _ in again.covered) == sorted(report.images)

    # the night's image, ingested later as the pipeline ingests reduced images, is subtracted against it
    (t,) = pair_cp_triplets([new_path])
    with factory() as session, session.begin():
        _, image, _ = register_reduced_image(
            session, root, t.image, weight_path=t.weight, mask_path=t.mask, params=ReduceParams()
        )
        assert image.field not in fields and image.id not in report.images
        sub = subtract_image_row(session, root, image.id, ref_params=params, params=SubtractParams())
        assert sub is not None and sub.reference_id == ref_id and sub.new_image_id == image.id
        n = session.scalar(select(func.count()).select_from(CoaddImage).where(CoaddImage.band == "g"))
        assert n == 1
        assert session.scalar(select(func.count()).select_from(Image)) == 3


def test_reference_build_command_reports(
    test_settings: Settings, g_epochs: tuple[Path, Path], database_url: str
) -> None:
    """The command on the archive folder: exit 0, every image accounted for, with the pipeline's parameters."""
    from seechange.cli import main

    archive, _ = g_epochs
    env = {"SEECHANGE_DATABASE_URL": database_url, "SEECHANGE_DATA_DIR": str(test_settings.data_dir)}
    result = CliRunner().invoke(main, ["reference", "build", str(archive)], env=env)
    assert result.exit_code == 0, result.output
    # the pipeline's n_ref_images (3): each image of the archive gets a line or is counted as covered
    # (what the module's database already holds on this sky decides which)
    last = result.output.strip().splitlines()[-1]
    n = [int(w) for w in last.replace(",", " ").split() if w.isdigit()]
    assert last.startswith("2 image(s)") and len(n) == 5 and n[1] + n[2] + n[3] == 2 and n[4] == 0


def test_reference_build_reduces_raw_exposures(db_engine: Engine, test_settings: Settings) -> None:
    """Raw multi-extension archives (``*_ori.fits.fz``, simulated) go through ingest + reduce, then build.

    Truth: the simulator's exposures (three epochs of one field, two CCDs each); every CCD becomes an
    Image of the reduce step's provenance, and the first epoch's images get references of their own sky
    whose members are exactly the simulated exposures of that CCD. A raw CCD without calibration frames
    is refused in one line naming the file and the CCD.
    """
    from seechange.models import Exposure
    from seechange.pipeline.reference_build import is_raw_file
    from seechange.sim.night import simulate_night

    root = Path(test_settings.data_dir) / f"refbuild-raw-{uuid.uuid4().hex[:8]}"
    night = simulate_night(
        root, seed=5, n_fields=1, n_epochs=3, n_ref_epochs=3, band="z", size=(512, 1024),
        start_mjd=60777.0, ccdnums=[37, 38], fmt="mef-fz",
    )  # fmt: skip
    raw = sorted({root / e.raw_path for e in night.exposures})
    assert len(raw) == 3 and all(p.name.endswith("_ori.fits.fz") and is_raw_file(p) for p in raw)
    cp = sorted((SHARED_DATA / "legacypipe-decam" / "testcase3").glob("*_ooi_*"))
    if cp:  # a real CP product is not raw (when ../shared/data is present)
        assert not is_raw_file(cp[0])
    renamed = root / "renamed.fits.fz"  # without the archive name: known by its overscan cards
    shutil.copy(raw[0], renamed)
    assert is_raw_file(renamed)
    renamed.unlink()
    factory = make_session_factory(db_engine)
    params = ReferenceParams(n_ref_images=3)
    report = build_references(factory, root, [root / "raw"], reduce_params=ReduceParams(), ref_params=params)
    assert report.failed == [] and len(report.images) == 6
    with factory() as session:
        rows = session.scalars(select(Image).where(Image.id.in_(report.images))).all()
        assert {session.get(Exposure, r.exposure_id).filepath for r in rows} == {
            str(p.relative_to(root)) for p in raw
        }
        assert all(session.get(Exposure, r.exposure_id).band == "z" for r in rows)
        # one reference per CCD's sky, from its three epochs
        assert len(report.built) == 2 and len(report.covered) == 4 and report.not_built == []
        for _, ref_id in report.built:
            ref = session.get(CoaddImage, ref_id)
            assert ref is not None and len(ref.images) == 3
            assert len({m.section_id for m in ref.images}) == 1

    # without calibration frames: one line naming the file and the CCD, nothing else registered
    shutil.rmtree(root / "calib")
    other = root / "raw2"
    other.mkdir()
    night2 = simulate_night(
        other, seed=6, n_fields=1, n_epochs=1, band="z", size=(512, 1024), start_mjd=60790.0, ccdnums=[37],
        fmt="mef-fz",
    )  # fmt: skip
    shutil.rmtree(other / "calib")
    f2 = sorted({other / e.raw_path for e in night2.exposures})
    bad = build_references(factory, root, f2, reduce_params=ReduceParams(), ref_params=params)
    assert bad.images == [] and len(bad.failed) == 1
    where, why = bad.failed[0]
    assert f2[0].name in where and "calibration" in why and "\n" not in why
    shutil.rmtree(root, ignore_errors=True)
