"""Community Pipeline data-quality codes become our flags, code by code, on real CP triplets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from seechange.improc.prereduced import load_prereduced, mask_flags
from seechange.improc.reduction import ReduceParams
from seechange.improc.types import FLAG_BAD, FLAG_BLEED, FLAG_COSMIC_RAY, FLAG_SATURATED
from seechange.instruments.decam import CP_MASK_CODES


def test_every_cp_code_maps_to_its_flag() -> None:
    codes = np.arange(10, dtype=np.int32).reshape(2, 5)
    flags = mask_flags(codes, CP_MASK_CODES)
    assert flags.ravel().tolist() == [
        0,  # good
        FLAG_BAD,  # 1 bad pixel
        FLAG_BAD,  # 2 no data
        FLAG_SATURATED,  # 3
        FLAG_BLEED,  # 4
        FLAG_COSMIC_RAY,  # 5
        FLAG_BAD,  # 6 low weight
        0,  # 7 the CP's own difference detection: never masks a transient
        FLAG_BAD,  # 8 streak
        FLAG_BAD,  # 9 unknown: bad, with a log line
    ]
    assert mask_flags(codes).ravel().tolist() == [0] + [FLAG_BAD] * 9  # no codes: non-zero = bad


@pytest.mark.filterwarnings("ignore:load_prereduced. no zero point:RuntimeWarning")
def test_real_cp_triplet_around_a_saturated_star(shared_data: Path) -> None:
    folder = shared_data / "legacypipe-decam" / "testcase6"
    image = folder / "c4d_181104_072440_ooi_g_ls9.S4.fits"
    mask = folder / "c4d_181104_072440_ood_g_ls9.S4.fits"
    weight = folder / "c4d_181104_072440_oow_g_ls9.S4.fits"
    ood = fits.getdata(mask, 1)
    assert set(np.unique(ood)) == {0, 1, 3, 4}
    data = load_prereduced(
        image, weight_path=weight, mask_path=mask, params=ReduceParams(), mask_codes=CP_MASK_CODES
    )
    assert np.all(data.flags[ood == 3] & FLAG_SATURATED)
    assert np.all(data.flags[ood == 4] & FLAG_BLEED)
    assert np.all(data.flags[ood == 1] & FLAG_BAD)
    assert np.count_nonzero(ood == 3) > 0 and np.count_nonzero(ood == 4) > 0
    assert np.all(data.weight[ood != 0] == 0)
    oow = fits.getdata(weight, 1).astype(np.float64)
    h = fits.getheader(image, 1)
    gain = (h["GAINA"] + h["GAINB"]) / 2  # electrons per ADU of the CCD
    assert data.meta["gain"] == pytest.approx(gain)
    good = (ood == 0) & (data.flags == 0)
    assert np.allclose(data.weight[good], oow[good] / gain**2, rtol=1e-5)  # the CP weight, in electrons
