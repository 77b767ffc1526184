"""An LS4 night end to end in-process (ingest of multi-extension .fits.fz, reduce, reference, subtract,
detect): three CCDs of three quadrants (bands i, g, z), small CCDs, against real PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select

from seechange.config import Settings
from seechange.instruments import LS4
from seechange.models import Exposure, Image
from seechange.models.session import make_session_factory
from seechange.pipeline.association import angular_sep_arcsec
from seechange.pipeline.chain import InProcessChain
from seechange.pipeline.parameters import PipelineParameters
from seechange.sim.night import simulate_night
from tests.integration._chain_night import bright_transients

CCDS = [1, 17, 25]  # quadrants 1 (i), 3 (g), 4 (z)
SIZE = (512, 1024)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_ls4_night_through_reduce_subtract_detect(test_settings: Settings, db_engine: Engine) -> None:
    root = Path(test_settings.data_dir) / "ls4"
    night = simulate_night(
        root,
        seed=5,
        n_fields=1,
        n_epochs=4,
        size=SIZE,
        exptime=45.0,
        instrument="LS4",
        ccdnums=CCDS,
        fmt="mef-fz",
    )
    assert len(night.raw_files) == 4 and all(p.endswith("_ori.fits.fz") for p in night.raw_files)
    sessions = make_session_factory(db_engine)
    chain = InProcessChain(sessions, root, PipelineParameters(), radius_arcsec=1.5)
    ids = [i for path in night.raw_files for i in chain.ingest_file(path)]
    assert len(ids) == 12
    with sessions() as s:
        rows = list(s.scalars(select(Exposure).where(Exposure.id.in_(ids)).order_by(Exposure.id)))
        assert {r.instrument for r in rows} == {"LS4"} and {r.exp_time for r in rows} == {45.0}
        assert {(r.section_id, r.band) for r in rows} == {("1", "i"), ("17", "g"), ("25", "z")}
        assert {r.hdu for r in rows} == {1, 2, 3}
    images = [chain.reduce(i) for i in ids]
    for image in images:
        assert image.zero_point is not None and 20.0 < image.zero_point < 30.0, image.zero_point
        # the simulator's 1.5-2.5" seeing, measured on LS4's 1.0"/px
        assert image.fwhm_arcsec is not None and 1.2 < image.fwhm_arcsec < 3.2, image.fwhm_arcsec
    with sessions() as s:
        first = s.get(Image, images[0].id)
        assert first is not None
        scale = np.sqrt(abs(np.linalg.det(_cd(first.wcs_header)))) * 3600.0
    assert scale == pytest.approx(LS4.pixel_scale, rel=0.01)
    sightings = []
    n_subs = 0
    for image in images:
        sub = chain.subtract(image.id)
        if sub is not None:
            n_subs += 1
            sightings += chain.detect(sub.id)
    # every transient above S/N 10 in a subtracted epoch (truth flux against the new image's sky noise in a
    # PSF-sized aperture, 10 px inside) is found by a good sighting of that epoch
    good = [x for x in sightings if x.is_good]
    bright = bright_transients(root, night, min_snr=10.0)
    assert len(bright) >= 3
    missed = [
        t
        for t in bright
        if not any(
            abs(x.mjd - t["mjd"]) < 0.01 and angular_sep_arcsec(t["ra"], t["dec"], x.ra, x.dec) < 2.0
            for x in good
        )
    ]
    assert not missed, missed
    truth = night.transients
    unmatched = [
        x for x in good if not any(angular_sep_arcsec(t["ra"], t["dec"], x.ra, x.dec) < 2.0 for t in truth)
    ]
    print(
        f"LS4: {len(sightings)} sightings, {len(good)} good, {len(bright)} transients above S/N 10 all found, "
        f"{len(unmatched)} good sightings on no injected source in {n_subs} subtractions"
    )


def _cd(header_text: str) -> np.ndarray:
    from astropy.io import fits

    from seechange.imageio import header_wcs

    wcs = header_wcs(fits.Header.fromstring(header_text))
    return wcs.pixel_scale_matrix
