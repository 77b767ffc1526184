"""The subtract stage's per-process reference cache: hits, re-reads, and never two references at once."""

from __future__ import annotations

import os

import numpy as np
import pytest

import seechange.pipeline.subtract as subtract_mod
from seechange.imageio import write_image_data
from seechange.pipeline.subtract import ReferenceCache
from tests.unit.test_zogy import make_image


def test_cache_hits_rereads_and_frees_before_reading(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    stems = [tmp_path / "a", tmp_path / "b"]
    for s in stems:
        write_image_data(s, make_image(rng, shape=(64, 64)), {})
    cache = ReferenceCache(max_items=1)
    held_at_read: list[int] = []
    real_read = subtract_mod.read_image_data

    def counting_read(stem):  # type: ignore[no-untyped-def]
        held_at_read.append(len(cache._items))
        return real_read(stem)

    monkeypatch.setattr(subtract_mod, "read_image_data", counting_read)
    a1 = cache.get(stems[0], 5.0)
    assert cache.get(stems[0], 5.0) is a1  # a hit: not read again
    b = cache.get(stems[1], 5.0)  # a miss: a is dropped before b is read
    assert held_at_read == [0, 0]
    assert cache.get(stems[1], 5.0) is b
    a2 = cache.get(stems[0], 5.0)
    assert a2 is not a1 and np.array_equal(a2.image, a1.image)
    assert cache.get(stems[0], 6.0) is not a2  # another spike threshold is another entry
    st = os.stat(f"{stems[0]}.image.fits")
    os.utime(f"{stems[0]}.image.fits", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    a3 = cache.get(stems[0], 6.0)  # the file was rewritten: read again
    assert len(held_at_read) == 5 and held_at_read == [0] * 5
    cache.make_room()  # before a reference is built
    assert len(cache._items) == 0
    assert cache.get(stems[0], 6.0) is not a3
