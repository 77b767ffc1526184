"""The ORM and its alembic migration against a real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from seechange.config import Settings
from seechange.models import (
    AlertLog,
    CoaddImage,
    Cutouts,
    Exposure,
    Image,
    Object,
    Photometry,
    Provenance,
    Sighting,
    SubtractionImage,
    provenance_upstreams,
)
from seechange.models.migrate import head_revision, upgrade
from seechange.models.session import make_engine, make_session_factory
from seechange.provenance import get_or_create_provenance, provenance_id

ALL_TABLES = {
    "forced_photometry",
    "provenances",
    "provenance_upstreams",
    "exposures",
    "images",
    "coadd_images",
    "coadd_members",
    "subtraction_images",
    "sightings",
    "cutouts",
    "photometry",
    "objects",
    "alert_log",
}
WCS_HEADER = "CTYPE1  = 'RA---TAN'           CTYPE2  = 'DEC--TAN'           CRVAL1  =                150.0"


@pytest.fixture
def fresh_database_url(endpoints: Settings) -> Iterator[str]:
    """An empty database (not migrated) for tests that commit or migrate; dropped afterwards."""
    from seechange.localservices.postgres import create_database, drop_database

    name = f"seechange_models_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    try:
        yield url
    finally:
        drop_database(endpoints.database_url, name)


def current(database_url: str) -> str | None:
    """The alembic revision the database is at (None for a database never migrated)."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _exposure(prov: Provenance, origin_id: str, mjd: float, **over: Any) -> Exposure:
    values: dict[str, Any] = {
        "instrument": "DECam",
        "origin_id": origin_id,
        "section_id": "N6",
        "filepath": f"raw/f1/{origin_id}_N6.fits",
        "md5": "0123456789abcdef0123456789abcdef",
        "mjd": mjd,
        "exp_time": 60.0,
        "filter": "r DECam SDSS c0002 6415.0 1480.0",
        "band": "r",
        "ra": 150.125,
        "dec": 2.25,
        "field": "f1",
        "airmass": 1.21,
        "gain": 4.1,
        "read_noise": 6.5,
        "healpix": 123456789,
        "provenance": prov,
    }
    values.update(over)
    return Exposure(**values)


def _image_columns(filepath: str, prov: Provenance, mjd: float) -> dict[str, Any]:
    return {
        "filepath": filepath,
        "provenance": prov,
        "mjd": mjd,
        "band": "r",
        "field": "f1",
        "section_id": "N6",
        "ra": 150.125,
        "dec": 2.25,
        "ra_corner_00": 150.0,
        "ra_corner_01": 150.0,
        "ra_corner_10": 150.25,
        "ra_corner_11": 150.25,
        "dec_corner_00": 2.0,
        "dec_corner_01": 2.5,
        "dec_corner_10": 2.0,
        "dec_corner_11": 2.5,
        "healpix": 123456789,
        "wcs_header": WCS_HEADER,
        "fwhm_arcsec": 1.05,
        "bkg_level": 812.5,
        "bkg_rms": 28.25,
        "zero_point": 31.42,
        "zero_point_err": 0.012,
        "lim_mag": 23.6,
        "astrom_rms_arcsec": 0.045,
        "n_stars": 312,
        "width": 2048,
        "height": 4096,
        "extra": {"n_cosmic_rays": 17, "note": "test"},
    }


def test_upgrade_creates_every_table(database_url: str, db_session: Session) -> None:
    tables = set(inspect(db_session.connection()).get_table_names())
    assert ALL_TABLES <= tables
    assert "alembic_version" in tables
    assert current(database_url) == head_revision() == "0005"


def test_upgrade_is_idempotent(database_url: str) -> None:
    before = current(database_url)
    upgrade(database_url)
    upgrade(database_url)
    assert current(database_url) == before == head_revision()


def test_concurrent_upgrades_on_fresh_database(fresh_database_url: str) -> None:
    assert current(fresh_database_url) is None
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(fresh_database_url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert current(fresh_database_url) == head_revision()
    engine = make_engine(fresh_database_url)
    try:
        with engine.connect() as conn:
            assert ALL_TABLES <= set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_full_chain_round_trip(db_session: Session) -> None:
    s = db_session
    tag = _tag()
    p_ingest = get_or_create_provenance(s, "ingest", {"tag": tag}, [])
    p_reduce = get_or_create_provenance(s, "reduce", {"tag": tag, "cr_sigma": 4.5}, [p_ingest])
    p_coadd = get_or_create_provenance(s, "coadd", {"tag": tag, "method": "weighted"}, [p_reduce])
    p_sub = get_or_create_provenance(s, "subtract", {"tag": tag, "method": "zogy"}, [p_reduce, p_coadd])
    p_det = get_or_create_provenance(s, "detect", {"tag": tag, "threshold": 5.0}, [p_sub])

    exps = [_exposure(p_ingest, f"{tag}-{k}", 60000.1 + k) for k in range(3)]
    imgs = [
        Image(exposure=e, **_image_columns(f"reduced/{p_reduce.id[:8]}/{e.origin_id}_N6", p_reduce, e.mjd))
        for e in exps
    ]
    coadd = CoaddImage(
        reference_key=f"f1/r/N6/{tag}",
        images=[imgs[1], imgs[0]],
        **_image_columns(f"coadds/{p_coadd.id[:8]}/f1_r_N6", p_coadd, 60000.6),
    )
    sub = SubtractionImage(
        new_image=imgs[2],
        reference=coadd,
        score_std=1.013,
        n_sightings=2,
        **_image_columns(f"subtractions/{p_sub.id[:8]}/{tag}-2_N6", p_sub, 60002.1),
    )
    obj = Object(
        name=f"SC{tag}",
        ra=150.1201,
        dec=2.2402,
        healpix=123456790,
        band_latest="r",
        mag_latest=21.3,
        first_mjd=60002.0,
        last_mjd=60002.1,
        n_sightings=2,
    )
    common = {
        "subtraction": sub,
        "provenance": p_det,
        "ra_err": 0.05,
        "dec_err": 0.06,
        "band": "r",
        "healpix": 123456790,
        "object": obj,
    }
    sig_late = Sighting(
        index_in_image=0, x=101.25, y=2000.5, ra=150.1201, dec=2.2402, score=12.5, is_positive=True,
        flags=0, mjd=60002.1, **common,
    )  # fmt: skip
    sig_early = Sighting(
        index_in_image=1, x=1500.0, y=30.75, ra=150.1203, dec=2.2401, score=-6.25, is_positive=False,
        flags=5, is_good=False, mjd=60002.0, **common,
    )  # fmt: skip
    sig_late.cutouts = Cutouts(
        filepath=f"cutouts/{p_det.id[:8]}/{tag}-2_N6.cutouts.fits",
        hdu_new="SIG0_NEW",
        hdu_ref="SIG0_REF",
        hdu_diff="SIG0_DIFF",
        size=51,
    )
    sig_late.photometry.append(
        Photometry(
            provenance=p_det,
            psf_flux=15234.5,
            psf_flux_err=210.25,
            flux_njy=15234.5 * 10 ** (-0.4 * (31.42 - 31.4)),
            flux_njy_err=206.4,
            aper_fluxes=[9000.5, 14000.25, 15500.0],
            aper_flux_errs=[150.0, 200.0, 260.5],
            aper_radii_px=[2.0, 4.0, 6.0],
            mag=21.3,
            mag_err=0.015,
            zero_point=31.42,
            lim_mag=23.6,
            x_centroid=101.3,
            y_centroid=2000.45,
            fwhm_px=4.0,
            elongation=1.08,
            snr=72.5,
            background=0.5,
            negative_fraction=0.02,
            n_bad_pixels=0,
            flags=0,
        )
    )
    s.add_all([obj, sub, sig_late, sig_early])
    s.flush()
    s.add(
        AlertLog(alert_id=sig_late.id * 1000 + 1, sighting_id=sig_late.id, object_id=obj.id, topic="alerts")
    )
    s.flush()
    ids: dict[str, Any] = {
        "exps": [e.id for e in exps],
        "imgs": [i.id for i in imgs],
        "coadd": coadd.id,
        "sub": sub.id,
        "obj": obj.id,
        "late": sig_late.id,
        "early": sig_early.id,
    }
    assert all(isinstance(v, int) for v in ids["imgs"] + ids["exps"])
    s.expunge_all()  # everything below is read back from the database

    obj2 = s.scalars(select(Object).where(Object.name == f"SC{tag}")).one()
    assert obj2.id == ids["obj"] and obj2.is_test is False and obj2.n_sightings == 2
    assert obj2.created_at is not None
    # the lightcurve is ordered by MJD, not by insertion
    assert [x.id for x in obj2.sightings] == [ids["early"], ids["late"]]
    early, late = obj2.sightings
    assert (early.score, early.is_positive, early.flags, early.is_good) == (-6.25, False, 5, False)
    assert (late.x, late.y, late.ra, late.dec, late.ra_err) == (101.25, 2000.5, 150.1201, 2.2402, 0.05)
    assert late.is_good is True and late.object is obj2

    cut = late.cutouts
    assert cut is not None and early.cutouts is None
    assert (cut.hdu_new, cut.hdu_ref, cut.hdu_diff, cut.size) == ("SIG0_NEW", "SIG0_REF", "SIG0_DIFF", 51)
    assert cut.sighting is late

    (phot,) = late.photometry
    assert phot.aper_fluxes == [9000.5, 14000.25, 15500.0]
    assert phot.aper_radii_px == [2.0, 4.0, 6.0]
    assert (phot.psf_flux, phot.psf_flux_err, phot.mag, phot.snr) == (15234.5, 210.25, 21.3, 72.5)
    assert phot.flux_njy == pytest.approx(15234.5 * 10 ** (-0.008))
    assert phot.provenance.id == p_det.id and phot.provenance.process == "detect"

    sub2 = late.subtraction
    assert sub2.id == ids["sub"] and sub2.score_std == 1.013 and sub2.n_sightings == 2
    assert [x.index_in_image for x in sub2.sightings] == [0, 1]
    assert sub2.path_of("diff") == f"subtractions/{p_sub.id[:8]}/{tag}-2_N6.diff.fits"
    assert sub2.new_image.id == ids["imgs"][2]
    assert sub2.new_image.exposure.origin_id == f"{tag}-2"
    assert sub2.new_image.exposure.images == [sub2.new_image]
    assert sub2.new_image.extra == {"n_cosmic_rays": 17, "note": "test"}
    assert sub2.new_image.wcs_header == WCS_HEADER
    assert (sub2.new_image.width, sub2.new_image.height, sub2.new_image.n_stars) == (2048, 4096, 312)
    assert sub2.new_image.is_good is True

    ref = sub2.reference
    assert ref.id == ids["coadd"] and ref.reference_key == f"f1/r/N6/{tag}"
    assert [i.id for i in ref.images] == sorted(ids["imgs"][:2])
    assert [x.id for x in ref.subtractions] == [ids["sub"]]
    assert [c.id for c in ref.images[0].coadds] == [ids["coadd"]]
    assert (ref.ra_corner_10, ref.dec_corner_01, ref.fwhm_arcsec, ref.zero_point) == (
        150.25,
        2.5,
        1.05,
        31.42,
    )

    exp = s.get(Exposure, ids["exps"][0])
    assert exp is not None
    assert (exp.instrument, exp.section_id, exp.filter, exp.band) == (
        "DECam",
        "N6",
        "r DECam SDSS c0002 6415.0 1480.0",
        "r",
    )
    assert (exp.exp_time, exp.airmass, exp.gain, exp.read_noise, exp.mjd) == (60.0, 1.21, 4.1, 6.5, 60000.1)
    assert exp.ingested_at.tzinfo is not None
    assert exp.provenance.id == p_ingest.id

    # provenance graph
    sub_prov = s.get(Provenance, p_sub.id)
    assert sub_prov is not None
    assert sorted(u.id for u in sub_prov.upstreams) == sorted([p_reduce.id, p_coadd.id])
    assert sub_prov.parameters == {"tag": tag, "method": "zogy"}
    assert [d.id for d in sub_prov.downstreams] == [p_det.id]

    alert = s.scalars(select(AlertLog).where(AlertLog.sighting_id == ids["late"])).one()
    assert (alert.alert_id, alert.object_id, alert.topic) == (ids["late"] * 1000 + 1, ids["obj"], "alerts")
    assert alert.staged_at.tzinfo is not None and alert.sent_at is None  # staged, not confirmed sent


def _assert_rejected(session: Session, constraint: str, rows: list[Any]) -> None:
    """Adding ``rows`` one by one (inside a savepoint) violates the unique constraint ``constraint``."""
    with pytest.raises(IntegrityError, match=constraint):  # noqa: SIM117 - the savepoint must roll back first
        with session.begin_nested():
            for row in rows:
                session.add(row)
                session.flush()


def test_unique_constraints_reject_duplicates(db_session: Session) -> None:
    s = db_session
    tag = _tag()
    prov = get_or_create_provenance(s, "ingest", {"tag": tag}, [])
    p_red = get_or_create_provenance(s, "reduce", {"tag": tag}, [prov])
    exp = _exposure(prov, f"{tag}-1", 60100.0)
    img = Image(exposure=exp, **_image_columns(f"reduced/{tag}", p_red, 60100.0))
    s.add(img)
    s.flush()

    _assert_rejected(s, "uq_exposures_instrument_origin_id_section_id", [
        _exposure(prov, f"{tag}-1", 60100.5, filepath="raw/other.fits"),
    ])  # fmt: skip
    # same origin on another CCD is a different exposure row
    with s.begin_nested():
        s.add(_exposure(prov, f"{tag}-1", 60100.0, section_id="N7"))
    _assert_rejected(s, "uq_images_exposure_id_provenance_id", [
        Image(exposure_id=exp.id, **_image_columns(f"reduced/{tag}-b", p_red, 60100.0)),
    ])  # fmt: skip

    coadd = CoaddImage(reference_key=f"ref/{tag}", images=[img], **_image_columns(f"c/{tag}", p_red, 60100.0))
    sub = SubtractionImage(new_image=img, reference=coadd, **_image_columns(f"s/{tag}", p_red, 60100.0))
    sig = Sighting(
        subtraction=sub, provenance=p_red, index_in_image=0, x=1.0, y=2.0, ra=150.0, dec=2.0,
        score=7.0, is_positive=True, mjd=60100.0, band="r", healpix=1,
    )  # fmt: skip
    sig.photometry.append(Photometry(provenance=p_red, psf_flux=10.0, psf_flux_err=1.0))
    s.add(sig)
    s.flush()
    assert sig.flags == 0 and sig.is_good is True  # column defaults

    _assert_rejected(s, "uq_photometry_sighting_id_provenance_id", [
        Photometry(sighting_id=sig.id, provenance_id=p_red.id, psf_flux=11.0, psf_flux_err=1.0),
    ])  # fmt: skip
    _assert_rejected(s, "uq_sightings_subtraction_id_provenance_id_index_in_image", [
        Sighting(
            subtraction_id=sub.id, provenance_id=p_red.id, index_in_image=0, x=5.0, y=5.0, ra=150.0,
            dec=2.0, score=6.0, is_positive=True, mjd=60100.0, band="r", healpix=1,
        ),
    ])  # fmt: skip
    _assert_rejected(s, "uq_cutouts_sighting_id", [
        Cutouts(sighting_id=sig.id, filepath="a", hdu_new="N", hdu_ref="R", hdu_diff="D", size=5),
        Cutouts(sighting_id=sig.id, filepath="b", hdu_new="N", hdu_ref="R", hdu_diff="D", size=5),
    ])  # fmt: skip
    _assert_rejected(s, "uq_subtraction_images_new_image_id_reference_id_provenance_id", [
        SubtractionImage(new_image_id=img.id, reference_id=coadd.id, **_image_columns(f"s2/{tag}", p_red, 1.0)),
    ])  # fmt: skip
    _assert_rejected(s, "uq_coadd_images_reference_key_provenance_id", [
        CoaddImage(reference_key=f"ref/{tag}", **_image_columns(f"c2/{tag}", p_red, 60100.0)),
    ])  # fmt: skip
    _assert_rejected(s, "uq_objects_name", [
        Object(name=f"dup{tag}", ra=1.0, dec=2.0, healpix=3, first_mjd=1.0, last_mjd=1.0) for _ in range(2)
    ])  # fmt: skip

    n_exp = s.scalar(select(func.count()).select_from(Exposure).where(Exposure.origin_id == f"{tag}-1"))
    assert n_exp == 2
    n_phot = s.scalar(select(func.count()).select_from(Photometry).where(Photometry.sighting_id == sig.id))
    assert n_phot == 1


def test_get_or_create_provenance_twice_is_one_row(db_session: Session) -> None:
    s = db_session
    tag = _tag()
    up1 = get_or_create_provenance(s, "ingest", {"tag": tag}, [])
    up2 = get_or_create_provenance(s, "ingest", {"tag": tag, "other": True}, [])
    a = get_or_create_provenance(s, "reduce", {"tag": tag, "sigma": 4.5}, [up1, up2])
    b = get_or_create_provenance(s, "reduce", {"sigma": 4.5, "tag": tag}, [up2, up1])
    assert a is b
    assert a.id == provenance_id("reduce", a.code_version, {"tag": tag, "sigma": 4.5}, [up1.id, up2.id])
    assert s.scalar(select(func.count()).select_from(Provenance).where(Provenance.id == a.id)) == 1
    n_links = s.scalar(
        select(func.count())
        .select_from(provenance_upstreams)
        .where(provenance_upstreams.c.provenance_id == a.id)
    )
    assert n_links == 2
    s.expire_all()
    assert sorted(u.id for u in a.upstreams) == sorted([up1.id, up2.id])
    c = get_or_create_provenance(s, "reduce", {"tag": tag, "sigma": 5.0}, [up1, up2])
    assert c.id != a.id


def test_get_or_create_provenance_concurrent_transactions(fresh_database_url: str) -> None:
    upgrade(fresh_database_url)
    engine = make_engine(fresh_database_url)
    factory = make_session_factory(engine)
    results: list[str] = []
    errors: list[BaseException] = []

    def second_caller() -> None:
        try:
            with factory() as s2, s2.begin():
                results.append(get_or_create_provenance(s2, "detect", {"threshold": 5.0}, []).id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        with factory() as s1:
            with s1.begin():
                first = get_or_create_provenance(s1, "detect", {"threshold": 5.0}, [])
                worker = threading.Thread(target=second_caller)
                worker.start()
                time.sleep(0.5)
                assert worker.is_alive()  # waits on the uncommitted row of the first transaction
            worker.join(timeout=30)
            assert not worker.is_alive()
        assert errors == []
        assert results == [first.id]
        with factory() as s3:
            assert s3.scalar(select(func.count()).select_from(Provenance)) == 1
    finally:
        engine.dispose()
