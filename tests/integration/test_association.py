"""Association against real PostgreSQL: nearest Object within the radius, new Objects otherwise, and two
concurrent transactions at the same place end with one Object (advisory locks on coarse HEALPix pixels)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from seechange.config import Settings
from seechange.localservices.postgres import create_database, drop_database
from seechange.models import Object, Sighting
from seechange.models.migrate import upgrade
from seechange.models.session import make_engine, make_session_factory
from seechange.pipeline.association import angular_sep_arcsec, associate, object_name
from seechange.spatial import healpix_index
from tests.integration.test_models import _exposure, _image_columns

RA, DEC = 150.125, 2.25


@pytest.fixture
def sessions(endpoints: Settings) -> Iterator[sessionmaker[Session]]:
    name = f"assoc_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
    drop_database(endpoints.database_url, name)


def _subtraction(session: Session) -> int:
    from seechange.models import CoaddImage, Image, Provenance, SubtractionImage

    prov = Provenance(id=uuid.uuid4().hex[:20], process="test", code_version="0.1", parameters={})
    exposure = _exposure(prov, uuid.uuid4().hex[:8], 60000.0)
    image = Image(exposure=exposure, **_image_columns("reduced/x", prov, 60000.0))
    coadd = CoaddImage(reference_key=uuid.uuid4().hex, **_image_columns("coadds/x", prov, 59990.0))
    sub = SubtractionImage(new_image=image, reference=coadd, **_image_columns("subs/x", prov, 60000.0))
    session.add_all([prov, exposure, image, coadd, sub])
    session.flush()
    return sub.id


def _sighting(session: Session, sub_id: int, index: int, ra: float, dec: float, mjd: float) -> Sighting:
    prov_id = session.scalar(select(Sighting.provenance_id).limit(1)) or None
    from seechange.models import Provenance

    if prov_id is None:
        prov = Provenance(
            id="detect" + uuid.uuid4().hex[:14], process="detect", code_version="0.1", parameters={}
        )
        session.add(prov)
        session.flush()
        prov_id = prov.id
    s = Sighting(
        subtraction_id=sub_id,
        provenance_id=prov_id,
        index_in_image=index,
        x=1.0,
        y=1.0,
        ra=ra,
        dec=dec,
        score=7.0,
        is_positive=True,
        mjd=mjd,
        band="r",
        healpix=healpix_index(ra, dec),
    )
    session.add(s)
    session.flush()
    return s


def test_nearest_within_radius_else_new(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        sub = _subtraction(s)
        a = _sighting(s, sub, 0, RA, DEC, 60000.0)
        [obj_a] = associate(s, [a], radius_arcsec=1.5, mags=[21.0])
        # 1.0 arcsec away: same object; 3 arcsec away: a new one
        b = _sighting(s, sub, 1, RA, DEC + 1.0 / 3600, 60001.0)
        c = _sighting(s, sub, 2, RA, DEC + 3.0 / 3600, 60001.0)
        obj_b, obj_c = associate(s, [b, c], radius_arcsec=1.5, mags=[20.5, 22.0])
        assert obj_b.id == obj_a.id and obj_c.id != obj_a.id
        assert obj_a.n_sightings == 2 and obj_a.first_mjd == 60000.0 and obj_a.last_mjd == 60001.0
        assert obj_a.mag_latest == 20.5
        assert angular_sep_arcsec(obj_a.ra, obj_a.dec, RA, DEC + 0.5 / 3600) < 0.01  # mean position
        # named from the first sighting (year, HEALPix pixel), not from the row id
        assert obj_a.name == object_name(RA, DEC, 60000.0) and obj_a.name != obj_c.name
        assert obj_c.name == object_name(RA, DEC + 3.0 / 3600, 60001.0)
        assert obj_a.name.startswith("SC23") and len(obj_a.name) == 12
        assert a.object_id == b.object_id == obj_a.id


def test_concurrent_transactions_make_one_object(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        sub = _subtraction(s)
        _sighting(s, sub, 0, RA + 1, DEC, 60000.0)  # creates the detect provenance
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with sessions() as s, s.begin():
                sg = _sighting(s, sub, 10 + index, RA, DEC + index * 0.2 / 3600, 60000.0 + index)
                barrier.wait(10)
                associate(s, [sg], radius_arcsec=1.5)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    with sessions() as s:
        near = [o for o in s.scalars(select(Object)) if angular_sep_arcsec(o.ra, o.dec, RA, DEC) < 1.5]
        assert len(near) == 1
        assert near[0].n_sightings == 2
        assert s.scalar(select(func.count(Sighting.id)).where(Sighting.object_id == near[0].id)) == 2


def test_names_follow_the_first_sighting_and_stay_unique_in_one_pixel(
    sessions: sessionmaker[Session],
) -> None:
    # 0.3 arcsec apart (one ~3.2 arcsec HEALPix pixel) but associated with a 0.1 arcsec radius: two Objects
    # whose base names are the same; the second gets the suffix .2, the first keeps the bare name
    ra2, dec2 = RA, DEC + 0.3 / 3600
    assert healpix_index(RA, DEC) == healpix_index(ra2, dec2)
    with sessions() as s, s.begin():
        s.add(Object(name="SC99zzzzzzzz", ra=10.0, dec=-5.0, healpix=1, first_mjd=1.0, last_mjd=1.0))
        sub = _subtraction(s)
        a = _sighting(s, sub, 0, RA, DEC, 60000.0)
        b = _sighting(s, sub, 1, ra2, dec2, 60000.0)
        obj_a, obj_b = associate(s, [a, b], radius_arcsec=0.1)
        c = _sighting(s, sub, 2, RA, DEC + 0.15 / 3600, 60001.0)  # a third, a night later, same pixel
        [obj_c] = associate(s, [c], radius_arcsec=0.1)
    base = object_name(RA, DEC, 60000.0)
    assert object_name(ra2, dec2, 60000.0) == base
    assert (obj_a.name, obj_b.name) == (base, f"{base}.2")
    assert healpix_index(RA, DEC + 0.15 / 3600) == healpix_index(RA, DEC)
    assert obj_c.name == f"{base}.3"


def test_an_earlier_epoch_arriving_late_renames_the_object_after_it(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        sub = _subtraction(s)
        late = _sighting(s, sub, 0, RA, DEC, 60001.0)
        [obj] = associate(s, [late], radius_arcsec=1.5)
        assert obj.name == object_name(RA, DEC, 60001.0)
        early = _sighting(s, sub, 1, RA, DEC + 0.5 / 3600, 59940.0)  # a year earlier: SC22...
        [again] = associate(s, [early], radius_arcsec=1.5)
        later = _sighting(s, sub, 2, RA, DEC, 60002.0)
        [third] = associate(s, [later], radius_arcsec=1.5)
    assert again.id == obj.id == third.id
    assert obj.name == object_name(RA, DEC + 0.5 / 3600, 59940.0) and obj.name.startswith("SC22")
    assert obj.first_mjd == 59940.0 and obj.n_sightings == 3


def test_one_name_lookup_per_batch_gives_the_names_of_one_per_object(sessions: sessionmaker[Session]) -> None:
    # issue 11: the names new Objects could collide with are looked up once per batch, not per Object; the
    # names are those the per-Object look-up gave: a name already in the database and one taken earlier in
    # the same batch both push the suffix on
    from sqlalchemy import event

    ra2, dec2 = RA, DEC + 0.3 / 3600  # same ~3.2 arcsec pixel as (RA, DEC)
    ra3, dec3 = RA + 20.0 / 3600, DEC  # another pixel
    base, base3 = object_name(RA, DEC, 60000.0), object_name(ra3, dec3, 60000.0)
    assert object_name(ra2, dec2, 60000.0) == base != base3
    with sessions() as s, s.begin():
        s.add(Object(name=base, ra=RA + 1.0, dec=DEC, healpix=1, first_mjd=1.0, last_mjd=1.0))
        sub = _subtraction(s)
        batch = [
            _sighting(s, sub, 0, RA, DEC, 60000.0),
            _sighting(s, sub, 1, ra3, dec3, 60000.0),
            _sighting(s, sub, 2, ra2, dec2, 60000.0),
        ]
        statements: list[str] = []

        def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
            statements.append(statement)

        engine = s.get_bind()
        event.listen(engine, "before_cursor_execute", count)
        try:
            objs = associate(s, batch, radius_arcsec=0.1)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert [o.name for o in objs] == [f"{base}.2", base3, f"{base}.3"]
    assert sum("SELECT objects.name" in st for st in statements) == 1
