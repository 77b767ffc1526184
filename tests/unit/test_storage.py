"""Paths under the data root, atomic FITS writes, checksums."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from seechange.imageio import write_bytes_atomic, write_fits_atomic
from seechange.storage import (
    PathOutsideDataRoot,
    md5sum,
    relative,
    resolve,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "data"
    (r / "raw" / "f1").mkdir(parents=True)
    return r


def test_resolve_inside(root: Path) -> None:
    assert resolve(root, "raw/f1/x.fits") == root.resolve() / "raw" / "f1" / "x.fits"
    assert resolve(root, Path("raw") / "f1" / ".." / "y.fits") == root.resolve() / "raw" / "y.fits"
    # absolute path inside the root is fine
    assert resolve(root, root / "raw" / "z.fits") == root.resolve() / "raw" / "z.fits"


@pytest.mark.parametrize("rel", ["../x.fits", "raw/../../x.fits", "raw/f1/../../../etc/passwd", ".."])
def test_resolve_rejects_dotdot_escapes(root: Path, rel: str) -> None:
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, rel)


def test_resolve_rejects_absolute_outside(root: Path, tmp_path: Path) -> None:
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, "/etc/passwd")
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, tmp_path / "elsewhere.fits")
    # a sibling whose name merely starts with the root's name
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, str(root) + "2/x.fits")


def test_resolve_rejects_symlink_escapes(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.fits").write_bytes(b"x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "raw" / "filelink.fits").symlink_to(outside / "secret.fits")
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, "link/secret.fits")
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, "link/not-yet-there.fits")
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, "raw/filelink.fits")


def test_resolve_allows_symlink_inside(root: Path) -> None:
    (root / "alias").symlink_to(root / "raw", target_is_directory=True)
    assert resolve(root, "alias/f1/a.fits") == root.resolve() / "raw" / "f1" / "a.fits"
    assert relative(root, root / "alias" / "f1" / "a.fits") == "alias/f1/a.fits"


def test_resolve_rejects_garbage(root: Path) -> None:
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, "")
    with pytest.raises(PathOutsideDataRoot):
        resolve(root, "raw/\x00.fits")
    assert issubclass(PathOutsideDataRoot, ValueError)


def test_relative(root: Path, tmp_path: Path) -> None:
    assert relative(root, root / "raw" / "f1" / "x.fits") == "raw/f1/x.fits"
    assert relative(root, "raw/f1/x.fits") == "raw/f1/x.fits"
    assert relative(root.resolve(), root / "reduced" / "a.image.fits") == "reduced/a.image.fits"
    with pytest.raises(PathOutsideDataRoot):
        relative(root, tmp_path / "x.fits")
    with pytest.raises(PathOutsideDataRoot):
        relative(root, root)


def test_write_fits_atomic_array_readable(root: Path) -> None:
    rng = np.random.default_rng(42)
    data = rng.normal(100.0, 5.0, size=(32, 48)).astype(np.float32)
    header = fits.Header({"EXPTIME": 30.0, "FILTER": "r"})
    path = root / "reduced" / "p" / "a.image.fits"  # parent does not exist yet
    write_fits_atomic(path, data, header=header)
    with fits.open(path) as hdul:
        assert len(hdul) == 1
        np.testing.assert_array_equal(hdul[0].data, data)
        assert hdul[0].header["EXPTIME"] == 30.0
        assert hdul[0].header["FILTER"] == "r"
    assert [p.name for p in path.parent.iterdir()] == ["a.image.fits"]  # no temp file left behind
    assert (path.stat().st_mode & 0o777) == 0o644


def test_write_fits_atomic_replaces_and_accepts_hdus(root: Path) -> None:
    path = root / "c.fits"
    write_fits_atomic(path, np.zeros((4, 4), dtype=np.int16))
    ext = fits.ImageHDU(np.full((3, 5), 7.0, dtype=np.float32), name="SIG1_DIFF")
    write_fits_atomic(path, ext)
    with fits.open(path) as hdul:
        assert len(hdul) == 2
        assert hdul["SIG1_DIFF"].data.shape == (3, 5)
        assert float(hdul["SIG1_DIFF"].data.sum()) == 105.0
    hdul_in = fits.HDUList([fits.PrimaryHDU(np.ones((2, 2), dtype=np.float32))])
    write_fits_atomic(path, hdul_in)
    with fits.open(path) as hdul:
        assert len(hdul) == 1 and float(hdul[0].data.sum()) == 4.0
    with pytest.raises(ValueError):
        write_fits_atomic(path, hdul_in, header=fits.Header())


def test_write_fits_atomic_failure_keeps_old_file(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = root / "keep.fits"
    write_fits_atomic(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    before = path.read_bytes()

    def broken_writeto(self: fits.HDUList, fileobj: str, **kwargs: object) -> None:
        Path(fileobj).write_bytes(b"SIMPLE  =                    T")  # a partial file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", broken_writeto)
    with pytest.raises(OSError, match="disk full"):
        write_fits_atomic(path, np.zeros((2, 2), dtype=np.float32))
    assert path.read_bytes() == before
    assert sorted(os.listdir(root)) == ["keep.fits", "raw"]


def test_write_bytes_atomic_and_md5(root: Path) -> None:
    path = root / "truth" / "night.json"
    payload = b'{"fields": ["f1"]}' * 100000
    write_bytes_atomic(path, payload)
    assert path.read_bytes() == payload
    assert md5sum(path) == hashlib.md5(payload).hexdigest()
    empty = root / "empty"
    write_bytes_atomic(empty, b"")
    assert md5sum(empty) == "d41d8cd98f00b204e9800998ecf8427e"
