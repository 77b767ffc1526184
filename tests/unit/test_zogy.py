"""ZOGY on seeded synthetic white-noise pairs."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import mad_std
from astropy.wcs import WCS

from seechange.improc.detection import detect_transients
from seechange.improc.inject import inject_point_sources
from seechange.improc.types import FLAG_COSMIC_RAY, FLAG_EDGE, ImageData
from seechange.improc.zogy import ZogyParams, zogy


def gaussian_psf(fwhm: float, half: int | None = None) -> np.ndarray:
    """Normalised circular Gaussian stamp."""
    half = half if half is not None else int(np.ceil(2.5 * fwhm))
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    s = fwhm / 2.3548
    p = np.exp(-(x**2 + y**2) / (2 * s * s))
    return (p / p.sum()).astype(np.float32)


def simple_wcs(
    shape: tuple[int, int],
    *,
    crval=(150.0, 2.0),
    rot_deg: float = 0.0,
    shift=(0.0, 0.0),
    scale_arcsec: float = 0.263,
) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [shape[1] / 2 + 0.5 + shift[0], shape[0] / 2 + 0.5 + shift[1]]
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    d = scale_arcsec / 3600.0
    w.wcs.cd = np.array([[-d * c, d * s], [d * s, d * c]])
    return w


def make_image(
    rng: np.random.Generator,
    *,
    shape=(256, 256),
    fwhm=4.0,
    sky_e=1000.0,
    zp=30.0,
    stars=(),
    wcs: WCS | None = None,
) -> ImageData:
    """Sky-noise-limited image (sky subtracted) with optional (x, y, flux_e) stars, Poisson noise."""
    psf = gaussian_psf(fwhm)
    base = ImageData(
        image=rng.normal(0.0, np.sqrt(sky_e), shape).astype(np.float32),
        weight=np.full(shape, 1.0 / sky_e, np.float32),
        flags=np.zeros(shape, np.uint16),
        psf=psf,
        wcs=wcs if wcs is not None else simple_wcs(shape),
        zp=zp,
        fwhm_px=fwhm,
        bkg_level=sky_e,
        bkg_rms=float(np.sqrt(sky_e)),
    )
    if stars:
        st = np.asarray(stars, dtype=float)
        base = inject_point_sources(base, st[:, :2], st[:, 2], rng=rng)
        base.meta.pop("injected")
    return base


def _pair(seed: int, transient=None, stars=()):
    rng = np.random.default_rng(seed)
    ref = make_image(rng, fwhm=3.2, sky_e=600.0, zp=30.3, stars=stars)
    new = make_image(
        rng, fwhm=4.6, sky_e=1000.0, zp=30.0, stars=[(x, y, f * 10 ** (-0.4 * 0.3)) for x, y, f in stars]
    )
    if transient is not None:
        new = inject_point_sources(new, [transient[:2]], [transient[2]], rng=rng)
    return new, ref


def test_score_is_unit_normal_and_transient_found() -> None:
    stars = [(60.3, 70.7, 3e5), (190.2, 180.5, 1e5), (200.0, 60.0, 5e4)]
    new, ref = _pair(1, transient=(128.4, 127.6, 3000.0), stars=stars)
    res = zogy(new, ref, params=ZogyParams())
    quiet = res.flags == 0
    yy, xx = np.mgrid[0:256, 0:256]
    quiet &= np.hypot(xx - 128.4, yy - 127.6) > 15
    assert abs(mad_std(res.score_corr[quiet]) - 1.0) < 0.05
    assert abs(np.std(res.score_corr[quiet]) - 1.0) < 0.05
    assert res.renorm_factor == 1.0  # white noise: no renormalisation
    det = detect_transients(res, threshold=5.0)
    assert len(det) == 1
    assert det["is_positive"][0]
    assert det["score"][0] > 5
    assert np.hypot(det["x"][0] - 128.4, det["y"][0] - 127.6) < 0.5


def test_no_false_positives_on_noise_only_pairs() -> None:
    n_fp = 0
    for seed in range(6):
        new, ref = _pair(100 + seed, stars=[(80.0, 90.0, 2e5), (170.0, 150.0, 8e4)])
        res = zogy(new, ref, params=ZogyParams())
        n_fp += len(detect_transients(res, threshold=5.0))
    assert n_fp == 0


def test_fading_source_is_negative() -> None:
    rng = np.random.default_rng(7)
    ref = make_image(rng, fwhm=3.0, sky_e=500.0, stars=[(100.2, 140.8, 5000.0)])
    new = make_image(rng, fwhm=4.0, sky_e=900.0)
    res = zogy(new, ref, params=ZogyParams())
    det = detect_transients(res, threshold=5.0)
    assert len(det) == 1
    assert not det["is_positive"][0]
    assert det["score"][0] < -5
    assert abs(det["x"][0] - 100.2) < 0.6 and abs(det["y"][0] - 140.8) < 0.6


def test_flagged_pixels_are_zeroed_and_flagged() -> None:
    new, ref = _pair(3)
    flags = new.flags.copy()
    flags[50:53, 70:90] = FLAG_COSMIC_RAY
    img = new.image.copy()
    img[50:53, 70:90] = 1e6  # a cosmic ray, masked
    new2 = ImageData(**{**new.__dict__, "image": img, "flags": flags})
    res = zogy(new2, ref, params=ZogyParams())
    assert np.all(res.flags[50:53, 70:90] & FLAG_COSMIC_RAY)
    assert np.all(res.flags[0, :] & FLAG_EDGE) and np.all(res.score_corr[0, :] == 0)
    assert len(detect_transients(res, threshold=5.0)) == 0
    assert np.array_equal(new2.image, img)  # input untouched


def test_correlated_noise_is_renormalised() -> None:
    from scipy import ndimage

    new, ref = _pair(5)

    # smooth the reference noise as a stack/resampling would (neighbour correlation ~0.5)
    def smooth(img: ImageData) -> ImageData:
        sm = ndimage.gaussian_filter(img.image, 0.7).astype(np.float32)
        sm *= np.std(img.image) / np.std(sm)
        return ImageData(**{**img.__dict__, "image": sm})

    raw = zogy(smooth(new), smooth(ref), params=ZogyParams(renormalize="never"))
    fix = zogy(smooth(new), smooth(ref), params=ZogyParams())
    assert fix.noise_corr_ref > 0.3 and fix.noise_corr_new > 0.3
    assert raw.score_std > 1.05
    assert abs(mad_std(fix.score_corr[fix.flags == 0]) - 1.0) < 0.05


def test_float32_matches_float64() -> None:
    new, ref = _pair(11, transient=(100.0, 120.0, 4000.0), stars=[(60.0, 60.0, 1e5)])
    a = zogy(new, ref, params=ZogyParams(float32=True))
    b = zogy(new, ref, params=ZogyParams(float32=False))
    assert np.max(np.abs(a.score_corr - b.score_corr)) < 1e-3
    assert a.f_s == pytest.approx(b.f_s, rel=1e-4)


def test_border_does_not_grow_with_the_psf_stamp() -> None:
    # PSF stamps carry a faint wing far beyond the core; the flagged border follows the PSF's 99.5%
    # encircled-energy radius (at least 2 FWHM), not the stamp's half-width
    from seechange.improc.zogy import encircled_radius

    new, ref = _pair(11)
    small = zogy(new, ref, params=ZogyParams())
    pad = 30
    new.psf = np.pad(new.psf, pad)
    ref.psf = np.pad(ref.psf, pad)
    big = zogy(new, ref, params=ZogyParams())
    assert big.border_px == small.border_px <= int(np.ceil(2.5 * 4.6))
    assert encircled_radius(gaussian_psf(4.0)) == pytest.approx(
        4.0 / 2.3548 * np.sqrt(2 * np.log(200)), abs=0.7
    )
    np.testing.assert_allclose(big.score_corr[40:-40, 40:-40], small.score_corr[40:-40, 40:-40], atol=1e-3)


def test_image_with_no_valid_pixels_is_bad_input_not_a_crash() -> None:
    """Data that cannot be subtracted is refused as bad input (dead-lettered), not as a programming error."""
    from dataclasses import replace

    from seechange.errors import UnusableImage, is_bad_input

    new, ref = _pair(3)
    masked = replace(new, flags=np.full(new.shape, FLAG_EDGE, np.uint16))
    with pytest.raises(UnusableImage, match="no valid pixels") as info:
        zogy(masked, ref)
    assert is_bad_input(info.value)


def test_small_grid_kernels_match_the_full_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """P_D and the variance kernels on a grid of 4 stamps (the default) against the same on the frame."""
    import seechange.improc.zogy as zmod

    new, ref = _pair(5, transient=(100.0, 120.0, 4000.0), stars=[(60.0, 60.0, 1e5), (180.0, 90.0, 3e4)])
    small = zogy(new, ref)
    monkeypatch.setattr(zmod, "_kernel_grid", lambda n, stamp: n)
    full = zogy(new, ref)
    assert np.array_equal(small.diff, full.diff) and np.array_equal(small.score, full.score)
    assert np.max(np.abs(small.psf_d - full.psf_d)) < 1e-7
    assert np.max(np.abs(small.diff_variance / full.diff_variance - 1)) < 1e-5
    assert np.max(np.abs(small.score_corr - full.score_corr)) < 1e-4


def test_compact_transform_and_light_mask_helpers() -> None:
    from scipy import fft as sfft
    from scipy import ndimage

    from seechange.improc.zogy import _box_mean, _lit, _rfft2_compact, pad_psf

    rng = np.random.default_rng(3)
    psf = gaussian_psf(3.0, half=7)
    for shape in ((64, 80), (63, 81)):
        full = sfft.rfft2(pad_psf(psf, shape))
        assert np.allclose(_rfft2_compact(pad_psf(psf, psf.shape), shape, 2), full, rtol=0, atol=1e-7)
    img = rng.normal(size=(101, 67)).astype(np.float32) + 30.0 * (rng.random((101, 67)) < 0.02)
    for size in (4, 5, 11):
        ref_mean = ndimage.uniform_filter(img, size, mode="constant")
        assert np.max(np.abs(_box_mean(img, size) - ref_mean)) < 1e-5
    for step in (2, 3, 4):
        assert np.array_equal(_lit(img, 1.0, 3.4, step=step), _lit(img, 1.0, 3.4)[::step, ::step])


def test_threads_do_not_change_the_result() -> None:
    new, ref = _pair(7, transient=(90.0, 140.0, 3000.0), stars=[(60.0, 60.0, 1e5)])
    a, b = zogy(new, ref, threads=1), zogy(new, ref, threads=2)
    for name in ("diff", "diff_variance", "score", "score_var", "score_corr", "flags", "psf_d"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.f_s, a.score_std, a.noise_corr_new, a.noise_corr_ref) == (
        b.f_s,
        b.score_std,
        b.noise_corr_new,
        b.noise_corr_ref,
    )
