"""PNG images of the web pages, made server-side with matplotlib: cutout stamps, lightcurve, latency.

Cutouts are shown at full resolution: every stamp pixel becomes a ``scale`` x ``scale`` block (nearest
neighbour, no resampling), so a PNG is exactly ``(size * scale)`` pixels on a side; row 0 of the stamp
is at the bottom (FITS orientation). The lightcurve is :func:`seechange.lightcurve.plot_lightcurve`, the
same figure as ``seechange lightcurve --plot``.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from seechange.lightcurve import lightcurve_table, plot_lightcurve
from seechange.pipeline.alert import _CutoutsCache
from seechange.storage import resolve

__all__ = ["STRETCHES", "CutoutImages", "latency_png", "lightcurve_png", "stamp_png"]

Stretch = Literal["zscale", "asinh"]
STRETCHES: tuple[str, ...] = ("zscale", "asinh")
#: stamp name -> the Cutouts column naming its HDU
WHICH = {"new": "hdu_new", "ref": "hdu_ref", "diff": "hdu_diff"}


def _normalised(data: np.ndarray, stretch: Stretch) -> np.ndarray:
    """Pixels mapped to [0, 1]: zscale limits with a linear stretch, or the 0.5-99.5 percentile range
    with an asinh stretch (faint wings and bright cores both visible); NaN pixels become 0."""
    from astropy.visualization import (
        AsinhStretch,
        ImageNormalize,
        LinearStretch,
        PercentileInterval,
        ZScaleInterval,
    )

    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=float)
    clean = np.where(finite, data, np.nanmedian(data[finite]))
    if stretch == "asinh":
        norm = ImageNormalize(clean, interval=PercentileInterval(99.0), stretch=AsinhStretch(a=0.1))
    else:
        norm = ImageNormalize(clean, interval=ZScaleInterval(), stretch=LinearStretch())
    out = np.asarray(norm(clean, clip=True).filled(0.0), dtype=float)
    out[~finite] = 0.0
    return out


def stamp_png(data: np.ndarray, *, stretch: Stretch = "zscale", scale: int = 1) -> bytes:
    """A stamp as a grey PNG of ``data.shape * scale`` pixels (each pixel a ``scale`` x ``scale`` block).

    Parameters
    ----------
    data : numpy.ndarray
        2-D stamp (not modified).
    stretch : {"zscale", "asinh"}
        Intensity mapping.
    scale : int
        Output pixels per stamp pixel (1 to 16).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if data.ndim != 2:
        raise ValueError(f"a stamp is 2-D, got shape {data.shape}")
    k = int(min(max(scale, 1), 16))
    img = np.repeat(np.repeat(_normalised(np.asarray(data, dtype=float), stretch), k, axis=0), k, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, img, cmap="gray", vmin=0.0, vmax=1.0, origin="lower", format="png")
    return buf.getvalue()


class CutoutImages:
    """Cutout stamps of sightings as PNG, read from their cutouts files.

    The last ``max_files`` cutouts files are kept in memory (their stamps), and the last ``max_pngs``
    PNGs made (a few kB each), keyed by file, size, modification time, HDU, stretch and scale, so a
    page shown again costs no drawing.
    """

    def __init__(self, data_root: Path, *, max_files: int = 8, max_pngs: int = 4096) -> None:
        self.data_root = Path(data_root)
        self._cache = _CutoutsCache(max_files=max_files)
        self.max_pngs = max_pngs
        self._pngs: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, filepath: str, hdu: str, *, stretch: Stretch, scale: int) -> bytes:
        """The stamp in HDU ``hdu`` of cutouts file ``filepath`` drawn by :func:`stamp_png`.

        Raises
        ------
        KeyError
            The file has no such HDU.
        FileNotFoundError
            The cutouts file is missing.
        """
        st = resolve(self.data_root, filepath).stat()
        key = (filepath, st.st_size, st.st_mtime_ns, hdu, stretch, scale)
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return self._pngs[key]
            png = stamp_png(self.stamp(filepath, hdu), stretch=stretch, scale=scale)
            if self.max_pngs > 0:
                self._pngs[key] = png
            while len(self._pngs) > self.max_pngs:
                self._pngs.popitem(last=False)
            return png

    def stamp(self, filepath: str, hdu: str) -> np.ndarray:
        """The stamp in HDU ``hdu`` of the cutouts file ``filepath`` (relative to the data root).

        Raises
        ------
        KeyError
            The file has no such HDU.
        FileNotFoundError
            The cutouts file is missing.
        """
        stamps = self._cache.get(resolve(self.data_root, filepath))
        if hdu not in stamps:
            raise KeyError(f"cutouts file {filepath} has no HDU {hdu}")
        return stamps[hdu].array()


def lightcurve_png(session: Any, name: str) -> bytes:
    """The Object's lightcurve figure (``seechange lightcurve --plot``) as PNG bytes (800 x 450 pixels).

    Raises
    ------
    seechange.lightcurve.UnknownObject
        If no Object has that name.
    """
    buf = io.BytesIO()
    plot_lightcurve(lightcurve_table(session, name), buf)
    return buf.getvalue()


def latency_png(points: Sequence[dict[str, Any]], *, width_px: int = 800, height_px: int = 350) -> bytes:
    """Exposure-to-alert latency (s) per exposure, first and last alert, as a PNG of the given size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    dpi = 100
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        x = np.arange(len(points))
        first = np.array([p["first_s"] if p["first_s"] is not None else np.nan for p in points], dtype=float)
        last = np.array([p["last_s"] if p["last_s"] is not None else np.nan for p in points], dtype=float)
        if len(points):
            ax.plot(x, first, "o-", color="tab:blue", label="first alert")
            ax.plot(x, last, "s--", color="tab:orange", mfc="none", label="last alert")
            ax.legend(fontsize="small")
            top = np.nanmax(np.concatenate([first, last]))
            ax.set_ylim(0, 1.15 * top if np.isfinite(top) and top > 0 else 1.0)
            ax.set_xlim(-0.5, len(points) - 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        else:
            ax.text(0.5, 0.5, "no alerts yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"exposure (last {len(points)}, oldest first)")
        ax.set_ylabel("exposure-to-alert latency (s)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()
