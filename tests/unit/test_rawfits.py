"""The raw FITS block walker against astropy's own reading of the same bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits

from seechange import rawfits
from seechange.compression import compressed_hdu


def _file_bytes() -> bytes:
    rng = np.random.default_rng(3)
    hdr = fits.Header()
    hdr["OBJECT"] = ("field 7 / x", "a string with a slash")
    hdr["NIGHT"] = (20230225, "an integer with a comment")
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(header=hdr),
            fits.ImageHDU(rng.normal(size=(37, 53)).astype(np.float32), name="IMG"),
            compressed_hdu(rng.normal(size=(70, 90)).astype(np.float32), quantise="noise", name="CMP"),
            fits.ImageHDU(rng.integers(0, 9, size=(5, 7)).astype(np.int16), name="INT"),
        ]
    )
    buf = io.BytesIO()
    hdus.writeto(buf)
    return buf.getvalue()


def test_walk_finds_every_hdu_where_astropy_does() -> None:
    blob = _file_bytes()
    with fits.open(io.BytesIO(blob)) as hdul:
        want = [(h.fileinfo()["hdrLoc"], h.fileinfo()["datLoc"], h.fileinfo()["datSpan"]) for h in hdul]
    got, pos = [], 0
    while pos < len(blob):
        cards, data_pos = rawfits.read_header(lambda p: blob[p : p + rawfits.BLOCK], pos)
        size = rawfits.padded(rawfits.data_size(cards))
        got.append((pos, data_pos, size))
        pos = data_pos + size
    assert got == want
    assert pos == len(blob)


def test_card_values_as_text_and_integers() -> None:
    blob = _file_bytes()
    cards, _ = rawfits.read_header(lambda p: blob[p : p + rawfits.BLOCK], 0)
    assert rawfits.card_text(cards, "OBJECT") == "field 7 / x"  # a slash inside a string is no comment
    assert rawfits.card_int(cards, "NIGHT", 0) == 20230225
    assert rawfits.card_text(cards, "MISSING") is None
    assert rawfits.card_int(cards, "MISSING", -1) == -1


def test_a_header_cut_short_is_an_error() -> None:
    blob = _file_bytes()
    with pytest.raises(ValueError, match="truncated FITS header at byte 2880"):
        rawfits.read_header(lambda p: blob[: rawfits.BLOCK + 100][p : p + rawfits.BLOCK], rawfits.BLOCK)
