"""Cutouts: shapes, WCS, multi-HDU file and gzipped FITS."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from seechange.improc.cutouts import cutout_to_gzipped_fits, make_cutouts, read_cutout, write_cutouts_file
from tests.unit.test_zogy import make_image


def test_cutouts_shape_wcs_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    new, ref = make_image(rng), make_image(rng)
    diff = new.image - ref.image
    st = make_cutouts(new, ref, diff, [(100.0, 120.0), (3.0, 250.0)], size=51)
    assert len(st) == 2
    data, hdr = st[0]["new"]
    assert data.shape == (51, 51)
    assert np.array_equal(data, new.image[95:146, 75:126])
    sw = WCS(hdr)
    assert np.allclose(sw.pixel_to_world_values(25, 25), new.wcs.pixel_to_world_values(100, 120))
    edge, _ = st[1]["diff"]
    assert edge.shape == (51, 51) and np.isnan(edge[:, 0]).all() and np.isnan(edge[-1]).all()
    path = tmp_path / "x.cutouts.fits"
    write_cutouts_file(path, {7: st[0], 9: st[1]})
    with fits.open(path) as h:
        assert [x.name for x in h[1:]] == ["SIG7_NEW", "SIG7_REF", "SIG7_DIFF", "SIG9_NEW", "SIG9_REF", "SIG9_DIFF"]
    d, h2 = read_cutout(path, "SIG7_REF")
    assert d.dtype == np.float32 and np.array_equal(d, st[0]["ref"][0])
    assert np.allclose(WCS(h2).wcs.crpix, sw.wcs.crpix)
    blob = cutout_to_gzipped_fits(*st[0]["diff"])
    assert blob[:2] == b"\x1f\x8b"
    with fits.open(io.BytesIO(gzip.decompress(blob))) as h:
        assert np.array_equal(h[0].data.astype(np.float32), st[0]["diff"][0])
        assert np.allclose(WCS(h[0].header).wcs.crval, sw.wcs.crval)
