"""Resampling onto another WCS grid."""

from __future__ import annotations

import time

import numpy as np
import sep

from seechange.improc.inject import inject_point_sources
from seechange.improc.resample import resample_image
from seechange.improc.types import FLAG_COSMIC_RAY, FLAG_EDGE
from tests.unit.test_zogy import make_image, simple_wcs


def test_shifted_rotated_wcs_keeps_position_and_flux() -> None:
    rng = np.random.default_rng(0)
    src_wcs = simple_wcs((256, 256), rot_deg=7.0, shift=(3.3, -2.6))
    img = make_image(rng, sky_e=1.0, wcs=src_wcs)
    img.image[:] = 0.0
    img = inject_point_sources(img, [(120.3, 131.7)], [1e5], rng=rng, poisson=False)
    tgt_wcs = simple_wcs((256, 256))
    out = resample_image(img, tgt_wcs, (256, 256))
    ra, dec = src_wcs.pixel_to_world_values(120.3, 131.7)
    tx, ty = tgt_wcs.world_to_pixel_values(ra, dec)
    data = np.ascontiguousarray(out.image, dtype=np.float64)
    x, y, _ = sep.winpos(data, [float(tx)], [float(ty)], 4.0 / 2.3548)
    assert np.hypot(x[0] - tx, y[0] - ty) < 0.05
    f, _, _ = sep.sum_circle(data, x, y, 15.0)
    assert abs(f[0] / 1e5 - 1) < 0.01
    assert np.all(out.flags[out.weight == 0] != 0)
    assert np.any(out.flags & FLAG_EDGE)  # rotated: corners fall outside the source


def test_pixel_scale_change_conserves_flux_and_flags_propagate() -> None:
    rng = np.random.default_rng(1)
    img = make_image(rng, sky_e=1.0)
    img.image[:] = 0.0
    img = inject_point_sources(img, [(128.0, 128.0)], [5e4], rng=rng, poisson=False)
    img.flags[60, 60] = FLAG_COSMIC_RAY
    before = img.image.copy()
    tgt = simple_wcs((256, 256), scale_arcsec=0.3)
    out = resample_image(img, tgt, (256, 256), order=3)
    assert np.array_equal(img.image, before)
    f, _, _ = sep.sum_circle(np.ascontiguousarray(out.image, dtype=np.float64), [127.5], [127.5], 15.0)
    assert abs(f[0] / 5e4 - 1) < 0.01
    ra, dec = img.wcs.pixel_to_world_values(60, 60)
    cx, cy = tgt.world_to_pixel_values(ra, dec)
    assert out.flags[round(float(cy)), round(float(cx))] & FLAG_COSMIC_RAY
    assert out.weight[round(float(cy)), round(float(cx))] == 0


def test_same_grid_is_identity() -> None:
    rng = np.random.default_rng(2)
    img = make_image(rng)
    out = resample_image(img, img.wcs, img.shape)
    assert np.array_equal(out.image, img.image) and out.image is not img.image


def test_full_size_resample_keeps_flux() -> None:
    """A full-size frame through a 0.4/0.3 px shift and 0.01 deg rotation: interior flux kept to 1 % (stars
    crossing the window edge move about 0.5 %), every interior pixel finite
    (the time is printed; `seechange bench` measures it)."""
    rng = np.random.default_rng(3)
    shape = (4096, 2048)
    img = make_image(rng, shape=shape, wcs=simple_wcs(shape, rot_deg=0.01, shift=(0.4, 0.3)))
    t0 = time.perf_counter()
    out = resample_image(img, simple_wcs(shape), shape)
    dt = time.perf_counter() - t0
    print(f"resample 2048x4096 order 3: {dt:.2f} s")
    assert out.shape == shape and out.image.dtype == np.float32
    inner = (slice(64, -64), slice(64, -64))
    ratio = float(
        np.nansum(out.image[inner], dtype=np.float64) / np.nansum(img.image[inner], dtype=np.float64)
    )
    assert abs(ratio - 1.0) < 1e-2 and bool(np.isfinite(out.image[inner]).all())
