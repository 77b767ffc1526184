"""References found on the sky, on the real legacypipe-decam testcase3 epochs (three OBJECT names, three CCDs).

The CP cut-outs carry no MAGZERO card; the tests write the survey's own zero point (``ccdzpt`` of the CCD
table, for ADU/s, plus 2.5 log10 EXPTIME for the image's ADU) into copies of the headers, which is what an
operator's ingest would do with that table.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from seechange.config import Settings
from seechange.errors import UnusableImage
from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import SubtractParams
from seechange.models import CoaddImage, Image
from seechange.models.session import make_session_factory
from seechange.pipeline.ingest_reduced import pair_cp_triplets, register_reduced_image
from seechange.pipeline.references import (
    NO_REFERENCE,
    REFERENCE_MEMBER,
    ReferenceParams,
    find_or_build_reference,
)
from seechange.pipeline.subtract import subtract_image_row


@pytest.fixture
def testcase3(shared_data: Path, test_settings: Settings) -> Iterator[Path]:
    """Copies of the testcase3 triplets inside the data root, with MAGZERO from the survey CCD table."""
    src = shared_data / "legacypipe-decam" / "testcase3"
    folder = Path(test_settings.data_dir) / "incoming" / f"tc3-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    ccds = Table.read(src / "survey-ccds-1.fits.gz")
    zpt = {(int(r["expnum"]), str(r["ccdname"]).strip()): float(r["ccdzpt"]) for r in ccds}
    for path in sorted(src.glob("c4d_*.fits")):
        shutil.copy(path, folder / path.name)
        if "_ooi_" in path.name:
            with fits.open(folder / path.name, mode="update") as hdul:
                hdr = hdul[0].header
                key = (int(hdr["EXPNUM"]), str(hdul[1].header["DETPOS"]).strip())
                hdr["MAGZERO"] = zpt[key] + 2.5 * np.log10(float(hdr["EXPTIME"]))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _register(session: Session, root: Path, folder: Path, band: str) -> list[Image]:
    images = []
    for t in pair_cp_triplets(sorted(folder.glob(f"c4d_*_{band}_ls9.*.fits"))):
        _, image, _ = register_reduced_image(
            session, root, t.image, weight_path=t.weight, mask_path=t.mask, params=ReduceParams()
        )
        images.append(image)
    session.flush()
    return sorted(images, key=lambda i: i.mjd)


def test_testcase3_epochs_share_one_reference_across_objects_and_ccds(
    db_session: Session, test_settings: Settings, testcase3: Path
) -> None:
    root = Path(test_settings.data_dir)
    images = _register(db_session, root, testcase3, "g")
    assert len(images) == 3
    assert len({i.field for i in images}) == 3 and len({i.section_id for i in images}) == 3
    assert all(i.zero_point is not None and np.isfinite(i.zero_point) for i in images)
    params = ReferenceParams(n_ref_images=2)

    # the first two (by MJD) are the members: the second completes the set and builds it
    assert find_or_build_reference(db_session, root, images[0], params=params) is None
    assert images[0].extra is not None and images[0].extra["subtraction"] in (REFERENCE_MEMBER, NO_REFERENCE)
    assert find_or_build_reference(db_session, root, images[1], params=params) is None
    assert images[1].extra is not None and images[1].extra["subtraction"] == REFERENCE_MEMBER
    ref = find_or_build_reference(db_session, root, images[2], params=params)
    assert ref is not None
    assert sorted(m.id for m in ref.images) == sorted([images[0].id, images[1].id])
    assert ref.reference_key == f"DECam/g/image{images[0].id}"
    assert ref.band == "g"
    # found again (no second build), and the new image is subtracted against it
    again = find_or_build_reference(db_session, root, images[2], params=params)
    assert again is not None and again.id == ref.id
    n_refs = db_session.scalars(
        select(CoaddImage).where(CoaddImage.reference_key.like(f"DECam/g/image{images[0].id}%"))
    ).all()
    assert len(n_refs) == 1
    sub = subtract_image_row(db_session, root, images[2].id, ref_params=params, params=SubtractParams())
    assert sub is not None and sub.reference_id == ref.id and sub.new_image_id == images[2].id


def test_other_band_does_not_use_the_reference(
    db_session: Session, test_settings: Settings, testcase3: Path
) -> None:
    root = Path(test_settings.data_dir)
    g = _register(db_session, root, testcase3, "g")
    r = _register(db_session, root, testcase3, "r")
    params = ReferenceParams(n_ref_images=2)
    for image in g:
        find_or_build_reference(db_session, root, image, params=params)
    # r has two epochs: both are members of their own reference, the g reference is not used
    assert find_or_build_reference(db_session, root, r[1], params=params) is None
    assert r[1].extra is not None and r[1].extra["subtraction"] == REFERENCE_MEMBER


def test_image_without_zero_point_is_refused_by_subtract(
    db_session: Session, test_settings: Settings, testcase3: Path
) -> None:
    root = Path(test_settings.data_dir)
    images = _register(db_session, root, testcase3, "z")
    images[2].zero_point = None
    db_session.flush()
    with pytest.raises(UnusableImage, match="no zero point"):
        subtract_image_row(
            db_session,
            root,
            images[2].id,
            ref_params=ReferenceParams(n_ref_images=2),
            params=SubtractParams(),
        )


def test_parallel_builders_make_one_reference(
    db_engine: Engine, test_settings: Settings, testcase3: Path
) -> None:
    """Two sessions asking at once for the reference of two overlapping images build it once."""
    root = Path(test_settings.data_dir)
    factory = make_session_factory(db_engine)
    with factory() as s:
        images = _register(s, root, testcase3, "z")
        s.commit()
        ids = [i.id for i in images]
    params = ReferenceParams(n_ref_images=2)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def ask(image_id: int) -> None:
        try:
            with factory() as s:
                image = s.get(Image, image_id)
                assert image is not None
                barrier.wait()
                find_or_build_reference(s, root, image, params=params)
                s.commit()
        except Exception as exc:  # noqa: BLE001 - any failure of the thread is reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in ids[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with factory() as s:
        refs = s.scalars(select(CoaddImage).where(CoaddImage.reference_key == f"DECam/z/image{ids[0]}")).all()
        assert len(refs) == 1
        assert sorted(m.id for m in refs[0].images) == sorted(ids[:2])
        s.delete(refs[0])
        s.flush()
        for image_id in ids:  # leave the shared test database as it was (the exposures cascade to images)
            image = s.get(Image, image_id)
            assert image is not None
            s.delete(image.exposure)
        s.commit()
