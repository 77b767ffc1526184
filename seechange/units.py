"""Units and conventional constants said once: PSF width conventions and the AB flux scale.

Dependency-free (numpy only), so the pure ``improc`` functions, the simulator, the pipeline and the
evaluation use the same numbers.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

__all__ = ["AB_MAG_OF_1_NJY", "FWHM_PER_SIGMA", "electrons_to_njy"]

#: FWHM of a Gaussian in units of its sigma: ``2 sqrt(2 ln 2)`` (about 2.3548).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: AB magnitude of a flux density of 1 nJy, as used for every nJy flux here (``-2.5 log10(1e-9 / 3631)``
#: is 31.40007).
AB_MAG_OF_1_NJY = 31.4


@overload
def electrons_to_njy(flux_e: float, zp: float) -> float: ...
@overload
def electrons_to_njy(flux_e: np.ndarray, zp: float) -> np.ndarray: ...
def electrons_to_njy(flux_e: float | np.ndarray, zp: float) -> float | np.ndarray:
    """Convert a flux in electrons to nJy for an AB zero point (``mag = -2.5 log10(flux_e) + zp``).

    Parameters
    ----------
    flux_e : float or ndarray
        Flux, electrons (signed).
    zp : float
        AB zero point of the image the flux was measured on, mag.

    Returns
    -------
    float or ndarray
        Flux density, nJy (a float for a scalar input).
    """
    factor = 10 ** (-0.4 * (float(zp) - AB_MAG_OF_1_NJY))
    if np.ndim(flux_e) == 0:
        return float(flux_e) * factor
    return np.asarray(flux_e, dtype=np.float64) * factor
