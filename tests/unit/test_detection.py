"""Detection on S_corr: ordering, signs, columns."""

from __future__ import annotations

import numpy as np

from seechange.improc.detection import DETECTION_COLUMNS, detect_transients
from seechange.improc.zogy import ZogyParams, zogy
from tests.unit.test_zogy import make_image


def test_positive_and_negative_sorted() -> None:
    rng = np.random.default_rng(5)
    ref = make_image(rng, fwhm=3.0, sky_e=400.0, stars=[(60.0, 200.0, 6000.0)])
    new = make_image(rng, fwhm=4.0, sky_e=800.0, stars=[(190.0, 50.0, 6000.0), (90.0, 200.0, 6000.0)])
    res = zogy(new, ref, params=ZogyParams())
    t = detect_transients(res, threshold=5.0)
    assert tuple(t.colnames) == DETECTION_COLUMNS
    assert len(t) == 3
    assert list(t["index"]) == [0, 1, 2]
    assert list(zip(t["y_peak"], t["x_peak"])) == sorted(zip(t["y_peak"], t["x_peak"]))
    assert list(t["is_positive"]) == [True, False, True]
    assert np.all(np.sign(t["score"]) == np.where(t["is_positive"], 1, -1))
    only_pos = detect_transients(res, threshold=5.0, negative=False)
    assert len(only_pos) == 2


def test_nothing_found_is_empty_table() -> None:
    rng = np.random.default_rng(6)
    res = zogy(make_image(rng), make_image(rng), params=ZogyParams())
    t = detect_transients(res, threshold=50.0)
    assert len(t) == 0 and tuple(t.colnames) == DETECTION_COLUMNS
