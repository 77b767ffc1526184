"""Full-well saturation: charge above a pixel's full well spills along its column (bleed trails)."""

from __future__ import annotations

import numpy as np


def bleed_columns(electrons: np.ndarray, full_well: np.ndarray) -> int:
    """Move charge above the full well up and down the column, in place.

    For each run of over-full pixels in a column, the excess is removed, the run is set to the full
    well, and half the excess fills the pixels above the run (each up to the full well) and half the
    pixels below; charge pushed past the end of the column is lost.

    Parameters
    ----------
    electrons : ndarray, float32, shape (ny, nx)
        Pixel charge, electrons; modified in place.
    full_well : ndarray, shape (nx,)
        Full well of each column, electrons.

    Returns
    -------
    int
        Number of pixels that received bleed charge (not counting the originally over-full pixels).
    """
    n_bled = 0
    cols = np.flatnonzero((electrons > full_well[None, :]).any(axis=0))
    for c in cols:
        fw = np.float32(full_well[c])
        col = electrons[:, c]  # a view: edits go into the image
        while True:
            over = np.flatnonzero(col > fw)
            if over.size == 0:
                break
            a = int(over[0])
            gaps = np.flatnonzero(np.diff(over) > 1)
            b = int(over[gaps[0]] + 1) if gaps.size else int(over[-1] + 1)
            excess = float((col[a:b] - fw).sum())
            col[a:b] = fw
            n_bled += _fill(col[b:], fw, excess / 2.0)
            n_bled += _fill(col[:a][::-1], fw, excess / 2.0)
    return n_bled


def _fill(seq: np.ndarray, fw: np.float32, charge: float) -> int:
    """Fill ``seq`` (a view, in order of distance from the run) up to ``fw`` with ``charge``."""
    if seq.size == 0 or charge <= 0:
        return 0
    room = np.maximum(fw - seq, 0.0).astype(np.float64)
    cum = np.cumsum(room)
    k = int(np.searchsorted(cum, charge, side="right"))
    seq[:k] = np.maximum(seq[:k], fw)
    if k < seq.size:
        seq[k] += np.float32(charge - (cum[k - 1] if k else 0.0))
        return k + 1
    return k
