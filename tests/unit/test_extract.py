import numpy as np
import pytest

from seechange.improc.extract import extract_sources, noise_from_weight
from seechange.improc.types import FLAG_COSMIC_RAY


def _gauss_image(rng, positions, fluxes, *, shape=(300, 400), fwhm=3.5, sky_sigma=10.0):
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    s = fwhm / 2.3548
    img = rng.normal(0.0, sky_sigma, shape)
    for (x0, y0), f in zip(positions, fluxes):
        img += f / (2 * np.pi * s * s) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    return img


def test_finds_injected_stars_at_known_positions():
    rng = np.random.default_rng(20)
    n = 30
    pos = np.column_stack([rng.uniform(20, 380, n), rng.uniform(20, 280, n)])
    fluxes = np.full(n, 1e5)  # SNR ~ 1e5 / (10 * sqrt(4 pi s^2) ~ 27) ~ 350
    img = _gauss_image(rng, pos, fluxes).astype(">f4")
    flags = np.zeros(img.shape, np.uint16)
    flags[int(pos[0, 1]), int(pos[0, 0])] = FLAG_COSMIC_RAY
    t = extract_sources(img, noise=10.0, flags=flags, thresh=5.0, aper_radius=8.0)
    assert len(t) >= n - 1  # stars can blend
    d = np.hypot(t["x"][:, None] - pos[:, 0], t["y"][:, None] - pos[:, 1])
    j = np.argmin(d, axis=0)
    isolated = np.array([np.sort(np.hypot(*(pos - p).T))[1] > 15 for p in pos])
    isolated[0] = False  # star 0 has a masked pixel at its centre
    err = d[j, np.arange(n)][isolated]
    assert np.max(err) < 0.05
    assert np.median(t["flux"][j[isolated]]) == pytest.approx(1e5, rel=0.02)
    assert np.median(t["fwhm"][j[isolated]]) == pytest.approx(3.5, rel=0.1)
    assert np.all(t["snr"][j[isolated]] > 100)
    assert t["pixflags"][j[0]] & FLAG_COSMIC_RAY
    assert {"x", "y", "flux", "flux_err", "a", "b", "theta", "fwhm", "flag", "snr"} <= set(t.colnames)


def test_nothing_found_is_empty_with_warning():
    rng = np.random.default_rng(21)
    with pytest.warns(RuntimeWarning):
        t = extract_sources(rng.normal(0, 1, (64, 64)), noise=1.0, thresh=50)
    assert len(t) == 0 and "x" in t.colnames


def test_noise_from_weight():
    w = np.array([[4.0, 0.0]], np.float32)
    np.testing.assert_allclose(noise_from_weight(w, fill=99.0), [[0.5, 99.0]])
