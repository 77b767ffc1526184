"""Deterministic random generators derived from the night's seed and a purpose key."""

from __future__ import annotations

import numpy as np

# Purpose keys: the first element of every spawn key, so that streams never collide.
FIELD_CATALOG = 1
TRANSIENTS = 2
CALIBRATION = 3
EXPOSURE = 4
NIGHT = 5
REFCAT = 6


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """A PCG64 generator for one purpose, independent of every other purpose and of call order.

    Parameters
    ----------
    seed : int
        The night's (or the instrument's) seed.
    *key : int
        Purpose key (one of this module's constants) followed by indices (field, epoch, ccd, ...).

    Returns
    -------
    numpy.random.Generator
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=tuple(key))))
