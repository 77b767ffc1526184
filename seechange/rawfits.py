"""FITS as 2880-byte blocks of 80-character cards: the few cards that place and size an HDU, read raw.

The one raw walker of the project's FITS streams, for the places where building astropy objects costs more
than the work: skipping to one CCD of a 62-CCD file (:func:`seechange.imageio.read_ccd`) and splitting a
cutouts file into its stamps (:func:`seechange.improc.cutouts.split_extensions`). Only the structure and
the mandatory cards are read here; anything else is astropy's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["BLOCK", "card_int", "card_text", "data_size", "padded", "read_header"]

#: FITS block size, bytes (36 cards of 80).
BLOCK = 2880
_END = b"END".ljust(8)


def card_text(cards: Sequence[bytes], key: str) -> str | None:
    """The value of a card as text (a string's quotes and padding removed, a comment cut), None when absent."""
    k = key.encode("ascii").ljust(8)
    for c in cards:
        if c[:8] == k and c[8:10] == b"= ":
            body = c[10:].decode("ascii").lstrip()
            if body.startswith("'"):
                return body[1:].split("'", 1)[0].rstrip()
            return body.split("/", 1)[0].strip()
    return None


def card_int(cards: Sequence[bytes], key: str, default: int) -> int:
    """The value of an integer card, ``default`` when absent (``ValueError`` when it is not an integer)."""
    text = card_text(cards, key)
    return default if text is None else int(text)


def read_header(read_block: Callable[[int], bytes], pos: int) -> tuple[list[bytes], int]:
    """The cards of the header starting at byte ``pos`` (``END`` excluded) and the byte after its last block.

    ``read_block(p)`` returns the 2880 bytes at ``p`` (fewer at the end of the stream).

    Raises
    ------
    ValueError
        When the stream ends inside the header.
    """
    cards: list[bytes] = []
    while True:
        block = read_block(pos)
        if len(block) < BLOCK:
            raise ValueError(f"truncated FITS header at byte {pos}")
        pos += BLOCK
        for k in range(0, BLOCK, 80):
            card = block[k : k + 80]
            if card[:8] == _END:
                return cards, pos
            cards.append(card)


def data_size(cards: Sequence[bytes]) -> int:
    """Bytes of the HDU's data and heap, unpadded: |BITPIX| / 8 x GCOUNT x (PCOUNT + NAXIS1 x ... x NAXISn),
    0 without axes (the FITS standard, section 4.4.1)."""
    naxis = card_int(cards, "NAXIS", 0)
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= card_int(cards, f"NAXIS{i}", 0)
    return (
        abs(card_int(cards, "BITPIX", 8))
        // 8
        * card_int(cards, "GCOUNT", 1)
        * (card_int(cards, "PCOUNT", 0) + n)
    )


def padded(nbytes: int) -> int:
    """``nbytes`` rounded up to whole blocks."""
    return nbytes + (-nbytes % BLOCK)
