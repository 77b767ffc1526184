"""Partition keys of the pipeline's events: every epoch of one sky tile goes to one partition.

Association is order dependent (an Object's position is the running mean of its sightings so far; an
Object is made at its first detection), so the epochs of one region of sky must reach detect in the order
they were ingested. Kafka keeps order only within a partition, and one partition is consumed by one member
of a group at a time; so exposure-ready, image-reduced and subtraction-done are keyed by the sky tile of the
CCD's centre, :func:`sky_tile_key`: the coarse HEALPix pixel (nside 64, about 55 arcmin, the pixel of the
association locks) of the Exposure's ``healpix`` column. The key is taken from the Exposure row at every
stage (never from a fitted WCS), so one CCD keeps one key through the pipeline, across bands and
instruments (association ignores both). A redelivery repeats a message after later ones, but its products
already exist (find before make), so only first handlings count, and they stay in ingestion order.

sighting-found and alerts are keyed by Object id (an Object's alerts in order); their content does not
depend on order (packets are built as of the sighting and stored before delivery, see
:mod:`seechange.pipeline.outbox`).
"""

from __future__ import annotations

from seechange.spatial import NSIDE_COARSE, NSIDE_FINE

__all__ = ["TILE_SHIFT", "sky_tile", "sky_tile_key"]

#: nested HEALPix: a fine pixel's coarse parent is the index shifted right by 2 bits per level
TILE_SHIFT = 2 * ((NSIDE_FINE // NSIDE_COARSE).bit_length() - 1)


def sky_tile(healpix_fine: int) -> int:
    """Coarse nested HEALPix pixel (nside 64) containing fine pixel ``healpix_fine`` (nside 2**16)."""
    return int(healpix_fine) >> TILE_SHIFT


def sky_tile_key(healpix_fine: int) -> str:
    """Partition key of the events of a CCD whose centre is in fine pixel ``healpix_fine``: ``"tile<n>"``."""
    return f"tile{sky_tile(healpix_fine)}"
