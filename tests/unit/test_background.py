import numpy as np
import pytest

from seechange.improc.background import measure_background


def test_flat_sky_with_noise_and_stars():
    rng = np.random.default_rng(10)
    ny, nx = 512, 384
    img = rng.normal(1000.0, 30.0, (ny, nx))
    yy, xx = np.mgrid[:ny, :nx]
    for _ in range(40):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        img += 5000 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    flags = np.zeros((ny, nx), np.uint16)
    img[100:110, :] = 60000.0  # a flagged bad region must not pull the sky
    flags[100:110, :] = 1
    big_endian = img.astype(">f8")
    before = big_endian.copy()
    b = measure_background(big_endian, flags=flags, mesh=64)
    np.testing.assert_array_equal(big_endian, before)
    assert b.map.shape == (ny, nx) and b.map.dtype == np.float32
    assert b.level == pytest.approx(1000.0, abs=1.0)
    assert b.rms == pytest.approx(30.0, rel=0.03)
    assert np.abs(b.map[flags == 0] - 1000).max() < 8  # mesh noise ~ 30/64 per box, plus star wings
    assert np.median(b.rms_map) == pytest.approx(30.0, rel=0.05)


def test_gradient_is_followed():
    rng = np.random.default_rng(11)
    ny, nx = 512, 512
    yy, xx = np.mgrid[:ny, :nx]
    sky = 500 + 0.2 * xx + 0.1 * yy
    b = measure_background(sky + rng.normal(0, 10, (ny, nx)), mesh=64)
    assert np.abs(b.map - sky)[64:-64, 64:-64].max() < 3


def test_bad_input():
    with pytest.raises(ValueError):
        measure_background(np.zeros(10))
