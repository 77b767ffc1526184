"""Image files: one reader of a CCD, one atomic and durable writer, and the four-file image format.

Reading: :func:`read_ccd` opens a FITS file (plain, multi-extension or tile-compressed ``.fits.fz``) lazily,
reads (and decompresses) only the selected HDU, and returns native-byte-order pixels with the merged header
(primary cards, then the extension's, the extension winning). A file without a usable image raises
:class:`ImageReadError`, a ``ValueError`` with a one-line message naming the file.

Writing: every file is written through :func:`atomic_target` (temporary file in the destination folder, fsync
of the file, ``os.replace``, fsync of the folder): readers see the old file or the complete new one, and a
file that was renamed into place survives a crash of the machine.

No database, no Kafka here; only numpy and astropy.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from numpy.typing import DTypeLike

from seechange import rawfits
from seechange.compression import Quantise, compressed_hdu
from seechange.errors import CorruptFile, UnusableImage
from seechange.improc.cutouts import RawExtension, cutouts_bytes, split_extensions, stamps_bytes
from seechange.improc.types import ImageData
from seechange.parameters import default_threads

__all__ = [
    "Ccd",
    "ImageReadError",
    "atomic_target",
    "header_wcs",
    "merged_header",
    "read_ccd",
    "read_ccd_headers",
    "read_cutout",
    "read_cutouts_file",
    "read_cutouts_raw",
    "read_image_data",
    "read_image_pixels",
    "write_bytes_atomic",
    "write_cutouts",
    "write_cutouts_file",
    "write_fits_atomic",
    "write_image_data",
]

log = logging.getLogger(__name__)

#: Primary-header cards that describe the primary HDU's own data, not inherited by an extension's header.
_PRIMARY_ONLY = frozenset(
    {"SIMPLE", "EXTEND", "BITPIX", "NAXIS", "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM"}
)


class ImageReadError(CorruptFile):
    """A file holds no readable CCD image: not FITS, corrupt or truncated, no such HDU, or no 2-D image.

    Bad input (a :class:`~seechange.errors.CorruptFile`, never a programming error); the message is one line
    and names the file. A missing file
    raises :class:`FileNotFoundError` instead, as ``open`` does.
    """


@dataclass(frozen=True)
class Ccd:
    """One CCD image read from a file.

    Attributes
    ----------
    data : ndarray
        Pixels (ny, nx) in native byte order (float32 unless another dtype was asked for), file units.
    header : astropy.io.fits.Header
        Merged header: the primary HDU's cards, then the CCD extension's (the extension winning).
    index : int
        Index of the HDU read (0 for the primary).
    """

    data: np.ndarray
    header: fits.Header
    index: int


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _is_2d_image(hdu: Any) -> bool:
    """True for a 2-D image HDU (plain or tile-compressed), judged from its header: no data is read."""
    return bool(getattr(hdu, "is_image", False)) and len(getattr(hdu, "shape", ())) == 2


def merged_header(primary: fits.Header, extension: fits.Header | None) -> fits.Header:
    """The primary cards (minus those describing the primary's own data) followed by the extension's.

    Parameters
    ----------
    primary : astropy.io.fits.Header
        Header of the primary HDU.
    extension : astropy.io.fits.Header or None
        Header of the CCD extension; None when the CCD is the primary HDU (its header is copied).

    Returns
    -------
    astropy.io.fits.Header
        A new header; for a keyword in both, the extension's value (and comment) wins.
    """
    if extension is None:
        return primary.copy()
    # copies of the cards: updating a shared Card would change the primary header too (and with it the
    # next CCD read from the same open file)
    out = fits.Header(
        [
            fits.Card(c.keyword, c.value, c.comment)
            for c in primary.cards
            if c.keyword not in _PRIMARY_ONLY and not c.keyword.startswith("NAXIS")
        ]
    )
    out.update(extension)
    return out


def _select(hdul: fits.HDUList, name: str, hdu: int | str | None, ccdnum: int | None, unique: bool) -> int:
    """Index of the wanted 2-D image HDU; headers are read lazily, up to that HDU only when possible."""
    if hdu is not None:
        try:
            index = hdul.index_of(hdu)
            chosen = hdul[index]
        except (KeyError, IndexError) as exc:
            raise ImageReadError(f"{name}: no HDU {hdu!r}") from exc
        if not _is_2d_image(chosen):
            raise ImageReadError(f"{name}: HDU {hdu!r} is not a 2-D image")
        return index
    found: list[int] = []
    other_ndim: int | None = None
    for i, h in enumerate(hdul):
        if not _is_2d_image(h):
            if getattr(h, "is_image", False) and len(h.shape) not in (0, 2) and other_ndim is None:
                other_ndim = len(h.shape)
            continue
        if ccdnum is not None and h.header.get("CCDNUM") != ccdnum:
            continue
        found.append(i)
        if not unique:
            break
    if not found:
        what = "no 2-D image HDU" if ccdnum is None else f"no 2-D image HDU with CCDNUM = {ccdnum}"
        raise ImageReadError(
            f"{name}: {what}" + (f" (data has {other_ndim} dimensions)" if other_ndim is not None else "")
        )
    if len(found) > 1:
        raise ImageReadError(f"{name}: {len(found)} image HDUs; give one CCD per file")
    return found[0]


def read_ccd(
    path: Path | str,
    hdu: int | str | None = None,
    *,
    ccdnum: int | None = None,
    dtype: DTypeLike | None = np.float32,
    unique: bool = False,
) -> Ccd:
    """Read one CCD image and its merged header from a FITS file.

    Parameters
    ----------
    path : Path or str
        The file: single-HDU, multi-extension, tile-compressed (``CompImageHDU``, ``.fits.fz``) or gzipped.
    hdu : int or str, optional
        HDU index or EXTNAME of the CCD; default: the first 2-D image HDU.
    ccdnum : int, optional
        Select the 2-D image HDU whose ``CCDNUM`` card has this value (instead of ``hdu``).
    dtype : numpy dtype or None, optional
        Pixel type of the result (native byte order), float32 by default; None keeps the file's type (after
        BSCALE/BZERO), in native byte order.
    unique : bool, optional
        Without a selector, require the file to hold exactly one 2-D image HDU (all headers are read).

    Returns
    -------
    Ccd
        Pixels, merged header and HDU index. Only the selected HDU's data is read or decompressed.

    Raises
    ------
    ImageReadError
        Not FITS, corrupt or truncated, no such HDU, no 2-D image (or more than one with ``unique``).
    FileNotFoundError
        No file at ``path``.
    """
    if hdu is not None and ccdnum is not None:
        raise TypeError("read_ccd: give hdu or ccdnum, not both")
    path = Path(path)
    name = path.name
    if isinstance(hdu, int) and not isinstance(hdu, bool) and hdu >= 2:
        direct = _read_hdu_direct(path, hdu, dtype)
        if direct is not None:
            return direct
    try:
        # memmap (astropy's default; scaled integer data is read into memory instead) + one converting copy:
        # half the time of memmap=False, which reads and then byte-swaps (8 ms instead of 19 ms for a
        # 2048x4096 float32 HDU here); the copy owns its memory once the file is closed
        with fits.open(path, lazy_load_hdus=True) as hdul:
            index = _select(hdul, name, hdu, ccdnum, unique)
            return _ccd_at(hdul, index, dtype)
    except (ImageReadError, FileNotFoundError):
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error) as exc:
        raise ImageReadError(f"{name}: not a readable FITS file: {_one_line(exc)}") from exc


def _ccd_at(hdul: fits.HDUList, index: int, dtype: DTypeLike | None, *, label: int | None = None) -> Ccd:
    """The CCD of HDU ``index`` of an open file: one converting copy of its pixels, merged header.

    ``label``: the HDU index to record (when ``hdul`` holds a copy of the primary and that one HDU only).
    """
    chosen = hdul[index]
    header = merged_header(hdul[0].header, None if index == 0 else chosen.header)
    raw = chosen.data
    want = raw.dtype.newbyteorder("=") if dtype is None else np.dtype(dtype)
    # a decompressed plane is already a fresh array (no copy when it has the wanted type)
    fresh = isinstance(chosen, fits.CompImageHDU)
    data = np.asarray(raw, dtype=want) if fresh else np.array(raw, dtype=want, copy=True)
    del raw
    return Ccd(data=data, header=header, index=index if label is None else label)


def _read_hdu_direct(path: Path, index: int, dtype: DTypeLike | None) -> Ccd | None:
    """HDU ``index`` of a multi-extension file without astropy parsing the headers before it.

    The headers before it are walked as 2880-byte blocks, reading only the cards that size an HDU
    (``BITPIX``, ``NAXISn``, ``PCOUNT``, ``GCOUNT``); the primary header and that one HDU are then opened
    as a two-HDU file in memory. Astropy's walk builds every header (and turns each compressed HDU's table
    header into an image header), which made HDU 62 of a 62-CCD ``.fits.fz`` cost ~4x HDU 1. None when the
    file is not plain uncompressed-stream FITS of that shape (gzipped, a primary with data, no such HDU,
    anything unexpected): the caller then takes astropy's own path, which gives the right error.
    """
    try:
        if _is_gzip(path):
            return None
        with open(path, "rb") as fh:

            def block_at(p: int) -> bytes:
                fh.seek(p)
                return fh.read(rawfits.BLOCK)

            pos, primary_end, start, end = 0, 0, 0, 0
            for i in range(index + 1):
                cards, data_pos = rawfits.read_header(block_at, pos)
                nbytes = rawfits.data_size(cards)
                if i == 0:
                    if nbytes:
                        return None
                    primary_end = data_pos
                start, end = pos, data_pos + rawfits.padded(nbytes)
                pos = end
            fh.seek(0)
            head = fh.read(primary_end)
            fh.seek(start)
            body = fh.read(end - start)
        if len(body) != end - start:
            return None
        with fits.open(io.BytesIO(head + body)) as hdul:
            if len(hdul) != 2 or not _is_2d_image(hdul[1]):
                return None
            return _ccd_at(hdul, 1, dtype, label=index)
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error):
        return None


def read_ccd_headers(path: Path | str) -> list[tuple[int, fits.Header, tuple[int, int]]]:
    """The merged header and shape of every 2-D image HDU of a file, without reading any pixels.

    The file is checked to be whole, from its headers alone: every HDU's data must lie inside the file,
    nothing but zero padding may follow the last HDU (astropy stops without an error at a header cut
    short, which would silently lose every CCD after it); a primary ``NEXTEND`` above the extensions found
    is logged as a warning (survey cut-outs keep their parent file's ``NEXTEND``).

    Parameters
    ----------
    path : Path or str
        The file (single-HDU, multi-extension, tile-compressed).

    Returns
    -------
    list of (int, astropy.io.fits.Header, (int, int))
        HDU index, merged header (as :func:`read_ccd` gives it) and shape (ny, nx), in file order.

    Raises
    ------
    ImageReadError
        Not readable FITS, a header is unreadable, or the file is truncated.
    FileNotFoundError
        No file at ``path``.
    """
    path = Path(path)
    out: list[tuple[int, fits.Header, tuple[int, int]]] = []
    try:
        size = _fits_length(path)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="File may have been truncated")
            warnings.filterwarnings("ignore", message="Error validating header")
            with fits.open(path, lazy_load_hdus=True) as hdul:
                end, n_hdus = 0, 0
                for i, h in enumerate(hdul):
                    info = h.fileinfo()
                    end, n_hdus = int(info["datLoc"]) + int(info["datSpan"]), i + 1
                    if _is_2d_image(h):
                        ny, nx = (int(v) for v in h.shape)
                        out.append((i, merged_header(hdul[0].header, None if i == 0 else h.header), (ny, nx)))
                nextend = hdul[0].header.get("NEXTEND") if n_hdus else None
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error) as exc:
        raise ImageReadError(f"{path.name}: not a readable FITS file: {_one_line(exc)}") from exc
    if size < end:
        raise ImageReadError(f"{path.name}: truncated: {size} bytes, its HDU {n_hdus - 1} ends at byte {end}")
    if size > end and _not_padding(path, end):
        raise ImageReadError(
            f"{path.name}: HDU {n_hdus} unreadable: a truncated or corrupt header at byte {end}"
        )
    if isinstance(nextend, int) and not isinstance(nextend, bool) and nextend > n_hdus - 1:
        # a warning, not a refusal: derived files (survey cut-outs) keep their parent's NEXTEND; a raw file
        # cut exactly at an HDU boundary is caught by nothing else
        log.warning(
            "%s: NEXTEND = %d but the file holds %d extension(s): truncated, or a derived file",
            path.name,
            nextend,
            n_hdus - 1,
        )
    return out


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _fits_length(path: Path) -> int:
    """Bytes of the FITS stream of a file: its size, or for a gzipped file (``.fits.gz``) the decompressed
    length (read through once; a cut-short gzip stream raises ``EOFError``)."""
    if not _is_gzip(path):
        return path.stat().st_size
    n = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            n += len(chunk)
    return n


def _not_padding(path: Path, offset: int) -> bool:
    """True when the first 2880-byte block at ``offset`` of the FITS stream holds anything but NUL or blank
    bytes."""
    with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as fh:
        fh.seek(offset)
        block = fh.read(2880)
    return bool(block.strip(b"\x00 "))


#: The cards a celestial WCS is made of (named in the error when they are missing or unusable).
WCS_CARDS = "CTYPE1/2, CRVAL1/2, CRPIX1/2, CD1_1.. or PC1_1.. with CDELT1/2"


def header_wcs(header: fits.Header, *, name: str = "header") -> WCS:
    """Celestial WCS of a header with its pixel shape set (FITS fix-up warnings silenced).

    Raises
    ------
    UnusableImage
        No celestial WCS, or cards astropy cannot use: one line naming ``name`` and the cards (not
        astropy's "number of data axes" message).
    """
    present = [k for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2") if k in header]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
    except Exception as exc:  # astropy raises many kinds on broken WCS cards
        raise UnusableImage(
            f"{name}: unusable WCS cards ({', '.join(present) or 'none'} present): {_one_line(exc)}"
        ) from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise UnusableImage(
            f"{name}: no celestial WCS (needs {WCS_CARDS}; present: {', '.join(present) or 'none'})"
        )
    if "NAXIS1" in header and "NAXIS2" in header:
        wcs.pixel_shape = (int(header["NAXIS1"]), int(header["NAXIS2"]))
    return wcs


# --- writing ---------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; not possible on every filesystem (then skipped)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_target(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once written, it replaces ``path`` atomically and durably.

    The caller writes (and closes) the temporary file; then it is fsynced, made mode 0644, renamed onto
    ``path`` with ``os.replace``, and the folder is fsynced. On any error the temporary file is removed and
    ``path`` is left as it was. Parent folders are created.

    Parameters
    ----------
    path : Path or str
        Destination.
    """
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
    _fsync_dir(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, or an iterable of byte chunks) to ``path`` through :func:`atomic_target`.

    Parameters
    ----------
    path : Path or str
        Destination (parent directories are created).
    data : bytes or iterable of bytes
        Content.
    """
    with atomic_target(path) as tmp, open(tmp, "wb") as fh:
        if isinstance(data, bytes | bytearray | memoryview):
            fh.write(data)
        else:
            fh.writelines(data)


def write_fits_atomic(
    path: Path | str,
    hdul_or_array: fits.HDUList | fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU | np.ndarray,
    header: fits.Header | None = None,
    *,
    checksum: bool = False,
) -> None:
    """Write a FITS file through :func:`atomic_target`: readers see the old or the complete new file.

    Parameters
    ----------
    path : Path or str
        Destination (parent directories are created; an existing file is replaced).
    hdul_or_array : HDUList, HDU or ndarray
        What to write. An array becomes the primary HDU (astropy writes it big-endian as FITS requires);
        a lone extension HDU gets an empty primary HDU in front.
    header : astropy.io.fits.Header or None
        Header of the primary HDU; only with an array.
    checksum : bool, optional
        Add CHECKSUM and DATASUM cards.

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
    with atomic_target(path) as tmp:
        hdul.writeto(tmp, overwrite=True, output_verify="exception", checksum=checksum)


# --- the four-file image format: <stem>.image.fits, .weight.fits, .flags.fits, .psf.fits -----------------


def _scalars(data: ImageData) -> dict[str, Any]:
    return {
        "zp": data.zp,
        "fwhm_px": data.fwhm_px,
        "bkg_level": data.bkg_level,
        "bkg_rms": data.bkg_rms,
        "astrom_rms_arcsec": data.astrom_rms_arcsec,
        "mjd": data.mjd,
        "band": data.band,
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in SCMETA")


def write_image_data(
    stem: Path | str, data: ImageData, header_extra: Mapping[str, Any], *, threads: int | None = None
) -> None:
    """Write ``<stem>.image.fits``, ``.weight.fits``, ``.flags.fits`` and ``.psf.fits`` atomically.

    Parameters
    ----------
    stem : Path or str
        Path without the suffixes, e.g. ``reduced/<prov8>/<expname>_<ccd>``; the folder is created.
    data : ImageData
        What to write.
    header_extra : mapping
        Extra cards (FITS keyword -> value) for the image header, e.g. provenance and exposure ids.
    threads : int, optional
        Files written in parallel (default: the machine's cores, see ``Settings.threads``).

    Notes
    -----
    The image header carries the WCS and readable ZP, FWHM, BKGLEV, BKGRMS, ASTRMS, LIMMAG, MJD-OBS and
    BAND cards; the exact values (and ``meta``) are also kept as JSON in a ``SCMETA`` card, from which
    `read_image_data` restores them bit for bit. Each file has CHECKSUM/DATASUM cards and is written through
    :func:`atomic_target` (durable once this returns). Image, weight and flags are tile-compressed in HDU 1
    (`seechange.compression`: image quantised to a quarter of its pixel noise, weight to 1/256 of its
    median, flags lossless); the PSF stamp is plain. Readers read these and the older uncompressed files.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    hdr = data.wcs.to_header(relax=True)
    cards = {
        "ZP": (data.zp, "AB zero point: mag = -2.5 log10(flux_e) + ZP"),
        "FWHM": (data.fwhm_px, "[pixel] PSF FWHM"),
        "BKGLEV": (data.bkg_level, "[e-] background removed"),
        "BKGRMS": (data.bkg_rms, "[e-] background rms"),
        "ASTRMS": (data.astrom_rms_arcsec, "[arcsec] astrometric rms"),
        "LIMMAG": (data.meta.get("lim_mag", float("nan")), "5-sigma point-source limit, AB"),
        "MJD-OBS": (data.mjd, "[d] mid-exposure MJD"),
        "BAND": (data.band, "filter band"),
        "BUNIT": ("electron", "background-subtracted"),
    }
    for key, (value, comment) in cards.items():
        hdr[key] = (value if not (isinstance(value, float) and not np.isfinite(value)) else "NaN", comment)
    for key, value in header_extra.items():
        hdr[key] = value
    hdr["SCMETA"] = json.dumps({"scalars": _scalars(data), "meta": data.meta}, default=_json_default)
    whdr = data.wcs.to_header(relax=True)
    whdr["BUNIT"] = "electron-2"
    fhdr = data.wcs.to_header(relax=True)
    fhdr["FLAGBITS"] = "1 bad, 2 saturated, 4 cosmic ray, 8 bleed, 16 edge"
    phdr = fits.Header()
    phdr["FWHM"] = (data.fwhm_px, "[pixel]")
    planes: list[tuple[str, np.ndarray, fits.Header, Quantise | None]] = [
        (f"{stem}.image.fits", np.asarray(data.image, np.float32), hdr, "noise"),
        (f"{stem}.weight.fits", np.asarray(data.weight, np.float32), whdr, "relative"),
        (f"{stem}.flags.fits", np.asarray(data.flags, np.uint16), fhdr, None),
    ]

    def write_plane(path: str, plane: np.ndarray, header: fits.Header, quantise: Quantise | None) -> None:
        write_fits_atomic(Path(path), compressed_hdu(plane, header, quantise=quantise), checksum=True)

    # quantisation, RICE compression, checksums and file writes release the GIL for the most part
    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        done = [pool.submit(write_plane, *job) for job in planes]
        # the PSF stamp is small: plain FITS
        write_fits_atomic(
            Path(f"{stem}.psf.fits"), fits.PrimaryHDU(np.asarray(data.psf, np.float32), phdr), checksum=True
        )
        for f in done:
            f.result()


def _read_image_file(stem: Path) -> tuple[np.ndarray, WCS, dict[str, Any]]:
    """Pixels (native float32), WCS and the scalar fields of ``<stem>.image.fits``."""
    ccd = read_ccd(f"{stem}.image.fits")  # HDU 1 when tile-compressed, HDU 0 in older files
    hdr, image = ccd.header, ccd.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(hdr, relax=True).celestial
    wcs.pixel_shape = (image.shape[1], image.shape[0])
    stored = json.loads(hdr["SCMETA"]) if "SCMETA" in hdr else {"scalars": {}, "meta": {}}
    sc = stored["scalars"]

    def _card(key: str, card: str, default: Any) -> Any:
        if key in sc:
            return sc[key]
        v = hdr.get(card, default)
        return float("nan") if v == "NaN" else v

    fields: dict[str, Any] = {
        "zp": float(_card("zp", "ZP", np.nan)),
        "fwhm_px": float(_card("fwhm_px", "FWHM", np.nan)),
        "bkg_level": float(_card("bkg_level", "BKGLEV", np.nan)),
        "bkg_rms": float(_card("bkg_rms", "BKGRMS", np.nan)),
        "astrom_rms_arcsec": float(_card("astrom_rms_arcsec", "ASTRMS", np.nan)),
        "mjd": float(_card("mjd", "MJD-OBS", 0.0)),
        "band": str(_card("band", "BAND", "")),
        "meta": stored["meta"],
    }
    return image, wcs, fields


def read_image_data(stem: Path | str) -> ImageData:
    """Read the four files written by `write_image_data` back into an `ImageData` (native byte order).

    Parameters
    ----------
    stem : Path or str
        Path without the ``.image.fits`` etc. suffixes.

    Returns
    -------
    ImageData

    Raises
    ------
    FileNotFoundError
        A file is missing.
    ImageReadError
        A file is not readable FITS.
    """
    stem = Path(stem)
    image, wcs, fields = _read_image_file(stem)
    weight = read_ccd(f"{stem}.weight.fits").data
    flags = read_ccd(f"{stem}.flags.fits", dtype=np.uint16).data
    psf = read_ccd(f"{stem}.psf.fits").data
    return ImageData(image=image, weight=weight, flags=flags, psf=psf, wcs=wcs, **fields)


def read_image_pixels(stem: Path | str, *, flags: np.ndarray | None = None) -> ImageData:
    """Only ``<stem>.image.fits`` of what `write_image_data` wrote: pixels, WCS and scalars.

    For readers that need the pixels but not the weight, flags or PSF (one full-frame file instead of
    three). ``weight`` is a read-only array of ones (a zero-stride view, no memory), ``psf`` a 1x1 stamp,
    and ``flags`` the given array (e.g. a superset computed downstream) or read-only zeros.
    """
    stem = Path(stem)
    image, wcs, fields = _read_image_file(stem)
    ones = np.broadcast_to(np.float32(1.0), image.shape)
    if flags is None:
        flags = np.broadcast_to(np.uint16(0), image.shape)
    return ImageData(
        image=image, weight=ones, flags=flags, psf=np.ones((1, 1), np.float32), wcs=wcs, **fields
    )


# --- cutouts files: one multi-HDU FITS per subtraction (stamps computed in seechange.improc.cutouts) -------


def write_cutouts_file(path: Path | str, stamps_by_sighting: Mapping[int, dict]) -> None:
    """Write one multi-HDU FITS: HDUs ``SIG{idx}_NEW``, ``SIG{idx}_REF``, ``SIG{idx}_DIFF`` per sighting.

    Parameters
    ----------
    path : Path or str
        Output file (replaced atomically).
    stamps_by_sighting : mapping of int to dict
        Sighting id -> a dict as returned by `seechange.improc.cutouts.make_cutouts`.
    """
    write_bytes_atomic(path, stamps_bytes(stamps_by_sighting))


def write_cutouts(
    path: Path | str,
    new: ImageData,
    ref: ImageData,
    diff: np.ndarray,
    positions: Sequence[tuple[int, tuple[float, float]]],
    *,
    size: int = 51,
    diff_wcs: WCS | None = None,
) -> None:
    """The stamps of new, reference and difference around each sighting, written as one cutouts file.

    Parameters
    ----------
    path : Path or str
        Output file (replaced atomically).
    new, ref, diff, positions, size, diff_wcs
        As for `seechange.improc.cutouts.cutouts_bytes`.
    """
    write_bytes_atomic(path, cutouts_bytes(new, ref, diff, positions, size=size, diff_wcs=diff_wcs))


def read_cutout(path: Path | str, hdu_name: str) -> tuple[np.ndarray, fits.Header]:
    """Read one stamp (native float32) and its header by HDU name."""
    with fits.open(path) as hdul:
        h = hdul[hdu_name]
        return np.asarray(h.data, dtype=np.float32), h.header.copy()


def read_cutouts_file(path: Path | str) -> dict[str, tuple[np.ndarray, fits.Header]]:
    """Every stamp of a cutouts file in one pass: HDU name -> (native float32 data, header).

    Opening the file once per stamp (``read_cutout``) walks the headers up to the named HDU each time, so
    building the alerts of n sightings cost O(n^2); this reads the file once.
    """
    out: dict[str, tuple[np.ndarray, fits.Header]] = {}
    with fits.open(path, memmap=False) as hdul:
        for h in hdul[1:]:
            out[h.name] = (np.asarray(h.data, dtype=np.float32), h.header)
    return out


def read_cutouts_raw(path: Path | str) -> dict[str, RawExtension]:
    """Every stamp of a cutouts file as raw bytes (cards, data), by HDU name, in one read.

    What the alert stage uses (`seechange.improc.cutouts.extension_to_gzipped_fits` turns a stamp into
    the packet's gzipped FITS without astropy objects).

    Raises
    ------
    ImageReadError
        The file is not a sequence of FITS HDUs (truncated, not FITS).
    """
    try:
        return split_extensions(Path(path).read_bytes())
    except ValueError as exc:
        raise ImageReadError(f"cutouts file {path}: {exc}") from exc
