"""Cutouts: shapes, WCS, multi-HDU file and gzipped FITS."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from seechange.imageio import read_cutout, write_cutouts_file
from seechange.improc.cutouts import cutout_to_gzipped_fits, make_cutouts
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
        assert [x.name for x in h[1:]] == [
            "SIG7_NEW",
            "SIG7_REF",
            "SIG7_DIFF",
            "SIG9_NEW",
            "SIG9_REF",
            "SIG9_DIFF",
        ]
    d, h2 = read_cutout(path, "SIG7_REF")
    assert d.dtype == np.float32 and np.array_equal(d, st[0]["ref"][0])
    assert np.allclose(WCS(h2).wcs.crpix, sw.wcs.crpix)
    blob = cutout_to_gzipped_fits(*st[0]["diff"])
    assert blob[:2] == b"\x1f\x8b"
    with fits.open(io.BytesIO(gzip.decompress(blob))) as h:
        assert np.array_equal(h[0].data.astype(np.float32), st[0]["diff"][0])
        assert np.allclose(WCS(h[0].header).wcs.crval, sw.wcs.crval)


def test_stamps_match_cutout2d_including_sip_and_edges() -> None:
    import warnings

    from astropy.nddata import Cutout2D
    from astropy.utils.exceptions import AstropyWarning

    rng = np.random.default_rng(3)
    new, ref = make_image(rng), make_image(rng)
    hdr = new.wcs.to_header(relax=True)
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    hdr.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": 1e-6, "A_1_1": -2e-6, "B_0_2": 3e-6})
    wcs = WCS(hdr)
    new = new.__class__(**{**new.__dict__, "wcs": wcs})
    ny, nx = new.image.shape
    pos = [(100.3, 120.7), (0.2, 0.4), (nx - 1.4, ny - 0.6), (25.5, 24.5), (-3.0, 60.0), (nx - 0.5, 10.49)]
    st = make_cutouts(new, ref, new.image, pos, size=51)
    for (x, y), s in zip(pos, st, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            c = Cutout2D(
                new.image.astype(np.float32),
                (x, y),
                (51, 51),
                wcs=wcs,
                mode="partial",
                fill_value=np.nan,
                copy=True,
            )
            want = c.wcs.to_header()
        data, h = s["new"]
        assert np.array_equal(data, c.data.astype(np.float32), equal_nan=True)
        for key in want:
            assert h[key] == want[key], key
        assert h["XCEN"] == x and h["YCEN"] == y


def test_read_cutouts_file_reads_every_stamp(tmp_path: Path) -> None:
    from seechange.imageio import read_cutouts_file

    rng = np.random.default_rng(1)
    new, ref = make_image(rng), make_image(rng)
    st = make_cutouts(new, ref, new.image - ref.image, [(50.0, 60.0), (70.0, 80.0)], size=21)
    path = tmp_path / "c.fits"
    write_cutouts_file(path, {3: st[0], 4: st[1]})
    allst = read_cutouts_file(path)
    assert sorted(allst) == ["SIG3_DIFF", "SIG3_NEW", "SIG3_REF", "SIG4_DIFF", "SIG4_NEW", "SIG4_REF"]
    for name, (d, h) in allst.items():
        d1, h1 = read_cutout(path, name)
        assert np.array_equal(d, d1) and h["CRPIX1"] == h1["CRPIX1"]


def test_write_cutouts_equals_make_cutouts_plus_astropy_writer(tmp_path: Path) -> None:
    from seechange.imageio import read_cutouts_file, write_cutouts

    rng = np.random.default_rng(5)
    new, ref = make_image(rng), make_image(rng)
    diff = new.image - ref.image
    ny, nx = new.image.shape
    pos = [(100.3, 120.7), (0.2, 0.4), (nx - 1.4, ny - 0.6), (-3.0, 60.0)]
    ids = [11, 12, 13, 14]
    st = make_cutouts(new, ref, diff, pos, size=21)
    hdus: list = [fits.PrimaryHDU()]
    for i, s in zip(ids, st, strict=True):
        for k in ("new", "ref", "diff"):
            hdus.append(fits.ImageHDU(data=s[k][0], header=s[k][1], name=f"SIG{i}_{k.upper()}"))
    fits.HDUList(hdus).writeto(tmp_path / "astropy.fits")
    write_cutouts_file(tmp_path / "file.fits", dict(zip(ids, st, strict=True)))
    write_cutouts(tmp_path / "direct.fits", new, ref, diff, list(zip(ids, pos, strict=True)), size=21)
    want = (tmp_path / "astropy.fits").read_bytes()
    assert (tmp_path / "file.fits").read_bytes() == want
    assert (tmp_path / "direct.fits").read_bytes() == want
    got = read_cutouts_file(tmp_path / "direct.fits")
    assert np.array_equal(got["SIG14_DIFF"][0], st[3]["diff"][0], equal_nan=True)
    assert got["SIG11_NEW"][1]["CRPIX1"] == st[0]["new"][1]["CRPIX1"]


def test_raw_stamps_give_the_astropy_alert_bytes(tmp_path: Path) -> None:
    """The alert path reads stamps as bytes: the same data and the same gzipped FITS as through astropy."""
    import pytest

    from seechange.imageio import ImageReadError, read_cutouts_file, read_cutouts_raw
    from seechange.improc.cutouts import extension_to_gzipped_fits

    rng = np.random.default_rng(8)
    new, ref = make_image(rng), make_image(rng)
    ny, nx = new.image.shape
    pos = [(100.3, 120.7), (0.2, 0.4), (nx - 1.4, ny - 0.6)]
    path = tmp_path / "c.fits"
    from seechange.imageio import write_cutouts

    write_cutouts(path, new, ref, new.image - ref.image, list(zip([5, 6, 7], pos, strict=True)), size=21)
    slow = read_cutouts_file(path)
    raw = read_cutouts_raw(path)
    assert list(raw) == list(slow)
    for name, (data, header) in slow.items():
        assert np.array_equal(raw[name].array(), data, equal_nan=True)
        assert extension_to_gzipped_fits(raw[name]) == cutout_to_gzipped_fits(data, header.copy())
    assert raw["SIG6_REF"].keyword("EXTNAME") == "SIG6_REF"
    (tmp_path / "cut.fits").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ImageReadError, match="truncated"):
        read_cutouts_raw(tmp_path / "cut.fits")


def test_card_images_equal_astropy_cards() -> None:
    """The stamp cards formatted without Card objects are astropy's card images, byte for byte."""
    from seechange.improc.cutouts import _card

    rng = np.random.default_rng(0)
    values = [*rng.normal(0, 1e4, 3000), *rng.uniform(-3, 3, 500), 0.0, -0.0, 1e-30, 1e30, 38.5, 1 / 3]
    for v in values:
        for key, comment in (("CRPIX1", "Pixel coordinate of reference point"), ("XCEN", "0-based x")):
            assert _card(key, float(v), comment) == fits.Card(key, float(v), comment).image
    for name in ("SIG1_NEW", "SIG123456_DIFF", "A"):
        assert _card("EXTNAME", name, "extension name") == fits.Card("EXTNAME", name, "extension name").image
