"""Empirical PSF: a sub-pixel-registered stack of isolated bright stars, with an analytic (Moffat) wing.

Why the wing is analytic: each pixel of a stack of N stars has noise ``~ sigma_sky / flux`` per star, so
beyond about two FWHM the empirical stamp is noise (measured on simulated nights: rms 1e-4 of the total
flux per pixel, against a true wing of 1e-5 at 4 FWHM). A star of 3e6 electrons (mag 16.5 at zp 32.8)
multiplies that noise into a coherent 5-10 sigma pattern in the difference image: rings of false positives
5 to 25 px around every bright star. The model is therefore an elliptical Moffat fitted to the stack, plus
the stack's residual from it only where that residual is significant, on a stamp large enough for the wings
of the brightest unsaturated stars.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import ndimage, optimize  # optimize at import: 55 ms lazily in the first reduction
from scipy.spatial import cKDTree

from seechange.units import FWHM_PER_SIGMA

__all__ = [
    "MoffatFit",
    "PSFModel",
    "aperture_fraction",
    "build_psf",
    "fit_moffat",
    "gaussian_psf",
    "header_fwhm_px",
    "measure_fwhm",
    "noise_equivalent_area",
    "psfex_psf",
    "stamp_size_for",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSFModel:
    """Result of `build_psf`.

    Attributes
    ----------
    stamp : ndarray, float32
        Odd-sized, centred PSF stamp normalised to sum 1.
    fwhm_px : float
        FWHM of the model, pixels.
    n_stars : int
        Number of stars stacked (0 when the Gaussian fallback was used).
    moffat : MoffatFit or None
        The analytic profile fitted to the stack (None for the Gaussian fallback).
    source : str
        Where the model came from: ``"stars"`` (stacked stars), ``"header"`` (Gaussian of the header FWHM),
        ``"sources"`` (Gaussian of the median FWHM of the detected sources), ``"default"`` (4 px Gaussian) or
        ``"psfex"`` (a PSFEx model file given with the image, `psfex_psf`).
    """

    stamp: np.ndarray
    fwhm_px: float
    n_stars: int
    moffat: MoffatFit | None = None
    source: str = "stars"


#: Header cards holding the image's seeing: (card, unit when the comment does not say).
_FWHM_CARDS = (("FWHM", "px"), ("SEEING", "arcsec"))


def header_fwhm_px(header: Mapping[str, Any], pixel_scale_arcsec: float) -> float:
    """The image's FWHM from its header, pixels (NaN when the header has none that is usable).

    ``FWHM`` is taken as pixels (the DECam Community Pipeline's "Median FWHM in pixels") unless its comment
    says arcsec; ``SEEING`` as arcsec unless its comment says pixels. Arcsec are converted with
    ``pixel_scale_arcsec``. A value outside 0.5 to 50 pixels is not used.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        Image header.
    pixel_scale_arcsec : float
        Pixel scale of the image, arcsec / pixel.
    """
    comments = getattr(header, "comments", None)
    for card, unit in _FWHM_CARDS:
        if card not in header:
            continue
        try:
            value = float(header[card])
        except (TypeError, ValueError):
            continue
        note = str(comments[card]).lower() if comments is not None else ""
        if "arcsec" in note or '"' in note:
            unit = "arcsec"
        elif "pix" in note:
            unit = "px"
        px = value / pixel_scale_arcsec if unit == "arcsec" else value
        if np.isfinite(px) and 0.5 <= px <= 50.0:
            return float(px)
    return float("nan")


@dataclass(frozen=True)
class MoffatFit:
    """Elliptical Moffat ``amplitude * (1 + [dx dy] M [dx dy]^T)^-beta`` about the stamp centre.

    Attributes
    ----------
    amplitude : float
        Central value (fraction of the total flux per pixel).
    mxx, mxy, myy : float
        Inverse-square-radius matrix ``M``, pixels^-2.
    beta : float
        Power index (the wing falls as r^(-2 beta)).
    """

    amplitude: float
    mxx: float
    mxy: float
    myy: float
    beta: float

    @property
    def fwhm_px(self) -> float:
        """Geometric-mean FWHM, pixels."""
        det = self.mxx * self.myy - self.mxy**2
        return float(2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0) / det**0.25)

    def evaluate(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Profile at offsets (dx, dy) from the centre, pixels."""
        q = self.mxx * dx * dx + 2.0 * self.mxy * dx * dy + self.myy * dy * dy
        return self.amplitude * (1.0 + q) ** (-self.beta)

    def stamp(self, size: int, *, sub: int = 3) -> np.ndarray:
        """Pixel-averaged profile (``sub`` x ``sub`` samples per pixel) on a centred ``(size, size)`` grid."""
        o = (np.arange(size * sub) + 0.5) / sub - 0.5 - size // 2
        v = self.evaluate(o[None, :], o[:, None])
        return v.reshape(size, sub, size, sub).mean(axis=(1, 3))


def stamp_size_for(fwhm_px: float, *, factor: float = 4.0, min_size: int = 15, max_size: int = 41) -> int:
    """Odd stamp size ``ceil(factor * fwhm)`` made odd, clipped to ``[min_size, max_size]`` (pixels)."""
    n = int(np.ceil(factor * fwhm_px))
    n = min(max(n, min_size), max_size)
    return n if n % 2 else n + 1 if n + 1 <= max_size else n - 1


def gaussian_psf(fwhm_px: float, size: int) -> np.ndarray:
    """Circular Gaussian PSF sampled at pixel centres.

    Parameters
    ----------
    fwhm_px : float
        FWHM, pixels.
    size : int
        Odd stamp size, pixels.

    Returns
    -------
    ndarray, float32
        ``(size, size)`` stamp, peak at the centre, sum 1.
    """
    if size % 2 == 0 or size < 3:
        raise ValueError(f"size must be odd and >= 3, got {size}")
    if not fwhm_px > 0:
        raise ValueError(f"fwhm_px must be > 0, got {fwhm_px}")
    s = fwhm_px / FWHM_PER_SIGMA
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s * s))
    return (g / g.sum()).astype(np.float32)


def measure_fwhm(psf: np.ndarray) -> float:
    """FWHM (pixels) of a PSF stamp: mean radius where the spline-interpolated profile falls to half its peak.

    The profile is sampled along 8 directions from the centroid of the core, at 0.02-pixel steps; the result
    is the FWHM of the sampled profile (as SExtractor and the DECam FWHM card report it).
    """
    p = np.asarray(psf, dtype=np.float64)
    c = p.shape[0] // 2
    core = p[c - 2 : c + 3, c - 2 : c + 3]
    tot = core.sum()
    yy, xx = np.mgrid[-2:3, -2:3]
    cy, cx = c + (core * yy).sum() / tot, c + (core * xx).sum() / tot
    coeffs = ndimage.spline_filter(p, order=3)
    peak = float(ndimage.map_coordinates(coeffs, [[cy], [cx]], order=3, prefilter=False)[0])
    radii = np.arange(0, c, 0.02)
    out = []
    for ang in np.arange(8) * np.pi / 4:
        ys, xs = cy + radii * np.sin(ang), cx + radii * np.cos(ang)
        prof = ndimage.map_coordinates(coeffs, [ys, xs], order=3, prefilter=False)
        below = np.nonzero(prof < peak / 2)[0]
        if below.size == 0 or below[0] == 0:
            continue
        i = below[0]
        r = radii[i - 1] + (prof[i - 1] - peak / 2) / (prof[i - 1] - prof[i]) * (radii[i] - radii[i - 1])
        out.append(r)
    if not out:
        return float("nan")
    return float(2.0 * np.mean(out))


def noise_equivalent_area(psf: np.ndarray) -> float:
    """Noise-equivalent area ``1 / sum(psf**2)`` of a normalised PSF, pixels."""
    p = np.asarray(psf, dtype=np.float64)
    p = p / p.sum()
    return float(1.0 / np.sum(p * p))


def aperture_fraction(psf: np.ndarray, radius: float) -> float:
    """Fraction of the PSF stamp's flux within a circular aperture of ``radius`` pixels about its centre.

    Pixels are split 5x5 so partial pixels at the aperture edge count by area, as ``sep.sum_circle`` does.
    """
    p = np.asarray(psf, dtype=np.float64)
    n = p.shape[0]
    sub = 5
    o = (np.arange(n * sub) + 0.5) / sub - 0.5 - n // 2
    inside = (o[:, None] ** 2 + o[None, :] ** 2) <= radius * radius
    frac = inside.reshape(n, sub, n, sub).mean(axis=(1, 3))
    return float((p * frac).sum() / p.sum())


def _select_stars(
    sources: Table, shape: tuple[int, int], half: int, *, min_snr: float, max_stars: int, isolation: float
) -> Table:
    ok = (np.asarray(sources["flag"]) == 0) & (np.asarray(sources["snr"]) >= min_snr)
    if "pixflags" in sources.colnames:
        ok &= np.asarray(sources["pixflags"]) == 0
    x, y = np.asarray(sources["x"]), np.asarray(sources["y"])
    ok &= (x > half + 3) & (x < shape[1] - half - 4) & (y > half + 3) & (y < shape[0] - half - 4)
    if len(sources) > 1:
        tree = cKDTree(np.column_stack([x, y]))
        d, _ = tree.query(np.column_stack([x, y]), k=2)
        ok &= d[:, 1] > isolation
    cand = sources[ok]
    if len(cand) == 0:
        return cand
    # point-like: FWHM and elongation near the bright-star locus
    fw = np.asarray(cand["fwhm"])
    med = np.median(fw)
    ell = np.asarray(cand["b"]) / np.maximum(np.asarray(cand["a"]), 1e-6)
    cand = cand[(np.abs(fw - med) < 0.2 * med) & (ell > 0.6)]
    order = np.argsort(-np.asarray(cand["snr"]))
    return cand[order[:max_stars]]


def fit_moffat(stamp: np.ndarray, variance: np.ndarray, *, fwhm_guess: float) -> MoffatFit | None:
    """Least-squares elliptical Moffat fit to a centred PSF stack (centre fixed at the stamp centre).

    Parameters
    ----------
    stamp : ndarray
        Centred stack, normalised (fraction of the flux per pixel).
    variance : ndarray
        Variance of each stack pixel; a floor of (2% of the stack value)^2 is added so that the brightest
        core pixels do not decide the wing.
    fwhm_guess : float
        Starting FWHM, pixels.

    Returns
    -------
    MoffatFit or None
        None when the fit fails.
    """
    n = stamp.shape[0]
    sig = np.sqrt(np.asarray(variance, float) + (0.02 * np.clip(stamp, 0, None)) ** 2)
    ok = np.isfinite(stamp) & (sig > 0)
    sub = 3
    fo = (np.arange(n * sub) + 0.5) / sub - 0.5 - n // 2
    fx, fy = np.meshgrid(fo, fo)

    def model(p: np.ndarray) -> np.ndarray:
        la, l1, l2, l3, lb = p
        a, c = np.exp(l1), np.exp(l3)
        mxx, mxy, myy = a * a, a * l2, l2 * l2 + c * c
        q = mxx * fx * fx + 2 * mxy * fx * fy + myy * fy * fy
        v = np.exp(la) * (1.0 + q) ** (-(1.0 + np.exp(lb)))
        return v.reshape(n, sub, n, sub).mean(axis=(1, 3))

    beta0 = 3.0
    alpha0 = fwhm_guess / (2.0 * np.sqrt(2.0 ** (1.0 / beta0) - 1.0))
    amp0 = float(stamp[n // 2, n // 2])
    p0 = np.array([np.log(max(amp0, 1e-6)), -np.log(alpha0), 0.0, -np.log(alpha0), np.log(beta0 - 1.0)])
    try:
        res = optimize.least_squares(lambda p: ((model(p) - stamp) / sig)[ok], p0, method="lm", max_nfev=400)
    except (ValueError, np.linalg.LinAlgError):
        return None
    la, l1, l2, l3, lb = res.x
    a, c = np.exp(l1), np.exp(l3)
    beta = 1.0 + float(np.exp(lb))
    if not (np.all(np.isfinite(res.x)) and np.isfinite(beta) and beta > 1.2 and c > 0 and a > 0):
        return None
    return MoffatFit(
        amplitude=float(np.exp(la)),
        mxx=float(a * a),
        mxy=float(a * l2),
        myy=float(l2 * l2 + c * c),
        beta=beta,
    )


def _stack(data: np.ndarray, stars: Table, size: int, sky_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Clipped inverse-variance weighted mean of the registered, flux-normalised star stamps, and its variance.

    A star's normalised stamp has per-pixel variance ``(sky_sigma^2 + flux * psf) / flux^2``: bright stars
    weigh most. Pixels more than 4 sigma from the median of the stamps (neighbours, cosmic rays) are left
    out.
    """
    half = size // 2
    pad = half + 3
    cuts = np.empty((len(stars), size, size), np.float64)
    fluxes = np.empty(len(stars))
    for k, (x, y) in enumerate(zip(np.asarray(stars["x"]), np.asarray(stars["y"]))):
        xi, yi = int(np.rint(x)), int(np.rint(y))
        cut = data[yi - pad : yi + pad + 1, xi - pad : xi + pad + 1].astype(np.float64)
        shifted = ndimage.shift(cut, (yi - y, xi - x), order=3, mode="nearest")
        st = shifted[3:-3, 3:-3]
        fluxes[k] = st.sum()
        cuts[k] = st / fluxes[k]
    med = np.median(cuts, axis=0)
    f = np.clip(fluxes, 1e-6, None)[:, None, None]
    var = (sky_sigma**2 + f * np.clip(med, 0, None)[None]) / (f * f)
    # per-star var omits interpolation and centring errors, so clip generously
    keep = np.abs(cuts - med[None]) <= 4.0 * np.sqrt(var) + 0.05 * np.abs(med)[None]
    w = np.where(keep, 1.0 / var, 0.0)
    wsum = w.sum(axis=0)
    mean = np.where(wsum > 0, (w * cuts).sum(axis=0) / np.where(wsum > 0, wsum, 1.0), med)
    var_mean = np.where(wsum > 0, 1.0 / np.where(wsum > 0, wsum, 1.0), np.inf)
    return mean, var_mean


def _join(stack: np.ndarray, var: np.ndarray, moffat: MoffatFit, out_size: int) -> np.ndarray:
    """Moffat on the output stamp plus the stack's significant residual from it, tapered to 0 at the stack edge.

    Each residual pixel is scaled by ``r^2 / (r^2 + 4 var)`` (a per-pixel Wiener factor): where the stack
    is noise its residual is dropped and the analytic profile is used; where the stack differs
    significantly from a Moffat (real cores) it is kept.
    """
    n = stack.shape[0]
    model = moffat.stamp(out_size)
    resid = stack - moffat.stamp(n)
    shrink = resid * resid / (resid * resid + 4.0 * var)
    o = np.arange(n) - n // 2
    r = np.hypot(o[None, :], o[:, None])
    h = n // 2
    taper = np.clip((h - r) / max(0.25 * h, 1.0), 0.0, 1.0)
    c, k = out_size // 2, n // 2
    model[c - k : c + k + 1, c - k : c + k + 1] += resid * shrink * taper
    return model


def _sky_sigma(data: np.ndarray) -> float:
    from astropy.stats import mad_std

    step = max(1, int(np.sqrt(data.size / 250_000)))
    return float(mad_std(data[::step, ::step], ignore_nan=True))


def build_psf(
    image: np.ndarray,
    sources: Table,
    *,
    size: int | None = None,
    size_factor: float = 4.0,
    wing_size_factor: float = 16.0,
    max_wing_size: int = 151,
    min_snr: float = 50.0,
    max_stars: int = 200,
    min_stars: int = 5,
    sky_sigma: float | None = None,
    fallback_fwhm: float | None = None,
) -> PSFModel:
    """Build a PSF model from isolated, unflagged, high-SNR point-like stars.

    Each star is cut out (``size`` pixels), shifted by spline interpolation so its windowed centroid lands
    on the stamp centre and normalised to unit flux; the stamps are combined by a clipped inverse-variance
    weighted mean. An elliptical Moffat is fitted to that stack; the model is the Moffat on a stamp of
    ``wing_size_factor`` x FWHM (its wing is where the stack is noise) plus the stack's significant
    residual from it, normalised to sum 1 and re-centred.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image, electrons (not modified).
    sources : astropy.table.Table
        Output of `seechange.improc.extract.extract_sources` (x, y 0-based, snr, fwhm, a, b, flag, pixflags).
    size : int, optional
        Odd size of the star cut-outs that are stacked, pixels; default `stamp_size_for` the median star
        FWHM (``size_factor`` x FWHM, 15 to 41).
    size_factor : float, optional
        Multiplier of the FWHM for the default cut-out size.
    wing_size_factor : float, optional
        Size of the returned stamp in units of the FWHM (at least ``size``, at most ``max_wing_size``): the
        Moffat wing of a star whose peak is at the saturation level falls below 0.05 sigma of the sky per
        pixel at about 6 FWHM for beta = 3. Set it to 0 for a stamp of ``size``.
    max_wing_size : int, optional
        Largest returned stamp, pixels.
    min_snr : float, optional
        Minimum aperture SNR of a PSF star.
    max_stars : int, optional
        Use at most this many of the highest-SNR candidates.
    min_stars : int, optional
        With fewer candidates a Gaussian is returned, with a warning: of ``fallback_fwhm`` when given and
        finite, else of the median source FWHM, else of 4 px (``PSFModel.source`` says which).
    sky_sigma : float, optional
        Sky noise per pixel, electrons; default a robust estimate from ``image``.
    fallback_fwhm : float, optional
        FWHM to use when there are too few stars (e.g. `header_fwhm_px`), pixels.

    Returns
    -------
    PSFModel
    """
    data = np.asarray(image, dtype=np.float32)
    good = sources[(np.asarray(sources["flag"]) == 0)] if len(sources) else sources
    fwhm_guess = float(np.median(good["fwhm"])) if len(good) else 4.0
    have_fallback = fallback_fwhm is not None and bool(np.isfinite(fallback_fwhm)) and fallback_fwhm > 0
    if have_fallback:
        # the size of the cut-outs follows the header when given (sources may be blends or cosmic rays)
        fwhm_guess = float(fallback_fwhm)  # type: ignore[arg-type]
    if size is None:
        size = stamp_size_for(fwhm_guess, factor=size_factor)
    if size % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    half = size // 2
    stars = sources
    # relax isolation, then SNR, until enough stars qualify (small or crowded images)
    for iso, snr in ((1.5 * size, min_snr), (1.0 * size, min_snr), (0.75 * size, min_snr / 2)):
        stars = (
            _select_stars(sources, data.shape, half, min_snr=snr, max_stars=max_stars, isolation=iso)
            if len(sources)
            else sources
        )
        if len(stars) >= min_stars:
            break
    if len(stars) < min_stars:
        source = "header" if have_fallback else ("sources" if len(good) else "default")
        warnings.warn(
            f"build_psf: only {len(stars)} PSF stars; using a Gaussian of FWHM {fwhm_guess:.2f} px "
            f"(from the {source})",
            RuntimeWarning,
            stacklevel=2,
        )
        g = gaussian_psf(fwhm_guess, size)
        return PSFModel(stamp=g, fwhm_px=measure_fwhm(g), n_stars=0, source=source)
    sig = _sky_sigma(data) if sky_sigma is None else float(sky_sigma)
    stack, var = _stack(data, stars, size, sig)
    fwhm_stack = measure_fwhm(stack)
    fit = fit_moffat(stack, var, fwhm_guess=fwhm_stack if np.isfinite(fwhm_stack) else fwhm_guess)
    if fit is None:
        log.warning("build_psf: Moffat fit failed; using the stack alone (%d stars)", len(stars))
        model = stack
    else:
        out = stamp_size_for(
            fit.fwhm_px, factor=wing_size_factor, min_size=size, max_size=max(size, max_wing_size)
        )
        model = _join(stack, var, fit, out)
    # re-centre on the core's centroid (noisy stamps can leave a tiny offset)
    c = model.shape[0] // 2
    core = model[c - 2 : c + 3, c - 2 : c + 3]
    yy, xx = np.mgrid[-2:3, -2:3]
    dy, dx = (core * yy).sum() / core.sum(), (core * xx).sum() / core.sum()
    if abs(dx) > 0.01 or abs(dy) > 0.01:
        model = ndimage.shift(model, (-dy, -dx), order=3, mode="constant")
    model = model / model.sum()
    stamp = model.astype(np.float32)
    fwhm = measure_fwhm(stamp)
    if have_fallback and not (0.5 * fwhm_guess <= fwhm <= 2.0 * fwhm_guess):
        # the "stars" were something else (cosmic rays, hot pixels, blends): measured 0.88 px on a real CP
        # cut-out whose header said 4.50 px
        warnings.warn(
            f"build_psf: the {len(stars)}-star model has FWHM {fwhm:.2f} px, the header says "
            f"{fwhm_guess:.2f} px; using a Gaussian of the header FWHM",
            RuntimeWarning,
            stacklevel=2,
        )
        g = gaussian_psf(fwhm_guess, size)
        return PSFModel(stamp=g, fwhm_px=measure_fwhm(g), n_stars=0, source="header")
    return PSFModel(stamp=stamp, fwhm_px=fwhm, n_stars=len(stars), moffat=fit)


def _psfex_value(row: Any, header: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A PSFEx parameter from the table row (Legacy Surveys merged files: lower-case columns) or header."""
    names = {n.lower(): n for n in (row.array.names if row is not None else ())}
    if key.lower() in names:
        return row[names[key.lower()]]
    return header.get(key.upper(), default)


def psfex_psf(
    path: str | Path, *, x: float, y: float, ccd: str | None = None, max_size: int | None = None
) -> PSFModel:
    """The PSF of a PSFEx model file at image pixel ``(x, y)`` (0-based), as a stamp on the image's pixels.

    Reads the PSFEx output (``PSF_DATA`` table, parameters in its header) and the Legacy Surveys' merged
    files (one row per CCD, the same parameters as columns, ``ccdname`` selecting the row; their
    ``POLZERO`` is already shifted to the cut-out's own pixels). The model is the polynomial sum of the
    ``PSF_MASK`` components (PSFEx's term order: powers of x inner, of y outer, total degree <= POLDEG1) at
    ``(x, y)``, resampled to image pixels when ``PSF_SAMP`` is not 1, cropped to ``max_size`` (odd) when
    given, and normalised to sum 1. Why this matters: a Gaussian of the header FWHM has no wings, and on a
    galaxy's nucleus the wing light that ZOGY then fails to match left PSF-shaped residuals that passed as
    good sightings (legacypipe-decam testcase3: SNR 16 in the 2018 z epoch, 8 in the 2018 g epoch; gone
    with the survey's PSFEx models, README "Real pixels").

    Parameters
    ----------
    path : str or Path
        The PSFEx file.
    x, y : float
        Position on the image, 0-based pixels (PSFEx's X_IMAGE, Y_IMAGE minus 1).
    ccd : str, optional
        CCD name selecting the row of a merged file with several rows.
    max_size : int, optional
        Largest stamp, pixels (e.g. the image's smaller side for a cut-out).

    Raises
    ------
    CorruptFile
        Not a PSFEx file, an unsupported polynomial, or no row for ``ccd``.
    """
    from astropy.io import fits

    from seechange.errors import CorruptFile

    name = Path(path).name
    try:
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise CorruptFile(f"{name}: no PSFEx table (PSF_DATA)")
            header, table = hdu.header, hdu.data
            cols = {n.lower(): n for n in table.names}
            if "psf_mask" not in cols or len(table) == 0:
                raise CorruptFile(f"{name}: no PSF_MASK column")
            row = table[0]
            if len(table) > 1 or (ccd is not None and "ccdname" in cols):
                hit = [r for r in table if ccd is not None and str(r[cols["ccdname"]]).strip() == ccd]
                if not hit:
                    raise CorruptFile(f"{name}: no PSF for CCD {ccd} among its {len(table)} rows")
                row = hit[0]
            mask = np.asarray(row[cols["psf_mask"]], dtype=np.float64)
            naxis = int(_psfex_value(row, header, "POLNAXIS", 0))
            ngrp = int(_psfex_value(row, header, "POLNGRP", 1 if naxis else 0))
            deg = int(_psfex_value(row, header, "POLDEG1", 0)) if naxis else 0
            samp = float(_psfex_value(row, header, "PSF_SAMP", 1.0))
            zero = [float(_psfex_value(row, header, f"POLZERO{i}", 0.0)) for i in (1, 2)]
            scale = [float(_psfex_value(row, header, f"POLSCAL{i}", 1.0)) for i in (1, 2)]
    except OSError as exc:
        raise CorruptFile(f"{name}: unreadable PSFEx file: {exc}") from exc
    mask = mask.reshape((-1,) + mask.shape[-2:])
    if naxis not in (0, 2) or ngrp > 1:
        raise CorruptFile(f"{name}: PSFEx polynomial with {naxis} axes in {ngrp} groups is not supported")
    u, v = (x + 1.0 - zero[0]) / scale[0], (y + 1.0 - zero[1]) / scale[1]
    terms = [u**i * v**j for j in range(deg + 1) for i in range(deg + 1 - j)]
    if len(terms) != mask.shape[0]:
        raise CorruptFile(f"{name}: {mask.shape[0]} PSF components for a degree-{deg} polynomial")
    model = np.tensordot(np.asarray(terms), mask, axes=1)
    c = model.shape[0] // 2
    if samp > 0 and abs(samp - 1.0) > 1e-6:
        # PSF_SAMP image pixels per model pixel: sample the model at the image pixels' centres
        n = int(2 * np.floor(c * samp) + 1)
        o = (np.arange(n) - n // 2) / samp + c
        model = ndimage.map_coordinates(model, np.meshgrid(o, o, indexing="ij"), order=3, mode="constant")
        c = n // 2
    if max_size is not None:
        half = min(c, (int(max_size) - 1) // 2)
        model = model[c - half : c + half + 1, c - half : c + half + 1]
    total = model.sum()
    if not (np.isfinite(total) and total > 0):
        raise CorruptFile(f"{name}: the PSF at ({x:.0f}, {y:.0f}) sums to {total}")
    stamp = (model / total).astype(np.float32)
    return PSFModel(stamp=stamp, fwhm_px=measure_fwhm(stamp), n_stars=0, source="psfex")
