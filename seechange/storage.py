"""Files under the data root: confined path resolution, atomic writes, checksums.

Every path in a database row or an event is relative to the data root; :func:`resolve` refuses anything that
would land outside it (``..``, absolute paths elsewhere, symlinks pointing out).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.io import fits

from seechange.errors import BadInput

__all__ = [
    "PathOutsideDataRoot",
    "md5sum",
    "relative",
    "resolve",
    "write_bytes_atomic",
    "write_fits_atomic",
]

_CHUNK = 1 << 20


class PathOutsideDataRoot(BadInput, ValueError):
    """A path that resolves outside the data root (or is not a usable path at all)."""


def resolve(data_root: Path, rel: str | Path) -> Path:
    """Absolute path of ``rel`` under ``data_root``, refusing anything that escapes it.

    Symlinks are followed (for the parts that exist), so a link inside the root that points outside it is
    refused too. The file itself need not exist.

    Parameters
    ----------
    data_root : Path
        The data root.
    rel : str or Path
        Path relative to the root; an absolute path is accepted only if it lies inside the root.

    Returns
    -------
    Path
        Fully resolved absolute path.

    Raises
    ------
    PathOutsideDataRoot
        If the resolved path is not the root or below it, or ``rel`` is empty or contains a NUL byte.
    """
    text = os.fspath(rel)
    if text == "" or "\x00" in text:
        raise PathOutsideDataRoot(f"invalid data path {text!r}")
    root = Path(data_root).resolve()
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise PathOutsideDataRoot(f"{text!r} resolves to {resolved}, outside the data root {root}")
    return resolved


def relative(data_root: Path, path: str | Path) -> str:
    """The POSIX path of ``path`` relative to ``data_root`` (what rows and events store).

    Parameters
    ----------
    data_root : Path
        The data root.
    path : str or Path
        A path inside the root (absolute, or relative to the root).

    Returns
    -------
    str
        Relative POSIX path; symlinks inside the root are kept as spelled when possible.

    Raises
    ------
    PathOutsideDataRoot
        If ``path`` resolves outside the root, or is the root itself.
    """
    resolved = resolve(data_root, path)
    root = Path(data_root).resolve()
    if resolved == root:
        raise PathOutsideDataRoot(f"{os.fspath(path)!r} is the data root itself, not a path inside it")
    # keep the caller's spelling (e.g. a symlinked sub-directory) when it is lexically under the root
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = Path(data_root) / candidate
    lexical = Path(os.path.normpath(os.path.abspath(candidate)))
    for base in (Path(os.path.normpath(os.path.abspath(data_root))), root):
        if lexical.is_relative_to(base) and lexical != base:
            return lexical.relative_to(base).as_posix()
    return resolved.relative_to(root).as_posix()


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not possible on every filesystem
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, then ``os.replace``).

    Parameters
    ----------
    path : Path
        Destination (parent directories are created).
    data : bytes
        Content.
    """
    with _atomic_target(path) as tmp:
        tmp.write_bytes(data)


def write_fits_atomic(
    path: Path,
    hdul_or_array: fits.HDUList | fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU | np.ndarray,
    header: fits.Header | None = None,
) -> None:
    """Write a FITS file atomically: readers see the old file or the complete new one, never a partial one.

    Parameters
    ----------
    path : Path
        Destination (parent directories are created; an existing file is replaced).
    hdul_or_array : HDUList, HDU or ndarray
        What to write. An array becomes the primary HDU (astropy writes it big-endian as FITS requires);
        a lone extension HDU gets an empty primary HDU in front.
    header : astropy.io.fits.Header or None
        Header of the primary HDU; only with an array.

    Raises
    ------
    ValueError
        If ``header`` is given together with an HDU or HDUList.
    """
    if isinstance(hdul_or_array, np.ndarray):
        hdul = fits.HDUList([fits.PrimaryHDU(data=hdul_or_array, header=header)])
    else:
        if header is not None:
            raise ValueError("header is only accepted together with an array; put it in the HDU instead")
        if isinstance(hdul_or_array, fits.HDUList):
            hdul = hdul_or_array
        elif isinstance(hdul_or_array, fits.PrimaryHDU):
            hdul = fits.HDUList([hdul_or_array])
        else:
            hdul = fits.HDUList([fits.PrimaryHDU(), hdul_or_array])
    with _atomic_target(path) as tmp:
        hdul.writeto(tmp, overwrite=True, output_verify="exception")


def md5sum(path: Path) -> str:
    """Hex MD5 digest of a file (for change detection, not security).

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    str
        32 lowercase hex characters.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
