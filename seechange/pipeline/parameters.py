"""Step parameters from a TOML file, so a pipeline scientist can re-run stages with new parameters.

The file has one table per step, each key a field of that step's frozen parameters class; nested parameters
are nested tables::

    [detect]
    threshold = 5.5
    [detect.measure]
    aper_radii_fwhm = [1.0, 2.5]
    [subtract]
    resample_order = 3
    [subtract.zogy]
    flux_error_fraction = 0.01

Changed critical parameters give new provenance ids, so the new products live beside the old ones.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seechange.improc.detection import DetectParams
from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import SubtractParams
from seechange.parameters import StepParameters
from seechange.pipeline.subtract import ReferenceParams

__all__ = ["PipelineParameters", "load_parameters"]


@dataclass(frozen=True)
class PipelineParameters:
    """Parameters of every step."""

    reduce: ReduceParams = field(default_factory=ReduceParams)
    reference: ReferenceParams = field(default_factory=ReferenceParams)
    subtract: SubtractParams = field(default_factory=SubtractParams)
    detect: DetectParams = field(default_factory=DetectParams)


def _override(base: StepParameters, table: dict[str, Any], where: str) -> StepParameters:
    """``base`` with the values of ``table``; a sub-table overrides a nested parameters field."""
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(
            f"unknown {where} parameter(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        current = getattr(base, key)
        if isinstance(current, StepParameters):
            if not isinstance(value, dict):
                raise ValueError(  # noqa: TRY004 - a mistake in the file: one ValueError like the others
                    f"{where}.{key} is a table of parameters ([{where}.{key}]), not a value"
                )
            values[key] = _override(current, value, f"{where}.{key}")
        elif isinstance(value, dict):
            raise ValueError(f"{where}.{key} is a value, not a table")  # noqa: TRY004 - as above
        else:
            values[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **values)


def load_parameters(path: Path | None, *, threads: int | None = None) -> PipelineParameters:
    """Defaults, overridden by the tables of ``path`` (TOML) when given.

    Parameters
    ----------
    path : Path or None
        The TOML file (``SEECHANGE_PARAMS_FILE``); None: the defaults.
    threads : int, optional
        The thread count of the process (``SEECHANGE_THREADS``): set on every step that has a ``threads``
        field (it is not critical), after the file.

    Returns
    -------
    PipelineParameters
        The parameters of every step.

    Raises
    ------
    ValueError
        For an unknown step table or parameter name (one line).
    """
    defaults = PipelineParameters()
    steps: dict[str, Any] = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        unknown = sorted(set(data) - set(steps))
        if unknown:
            raise ValueError(f"{path}: unknown step table(s): {', '.join(unknown)}")
        steps = {name: _override(step, data.get(name, {}), name) for name, step in steps.items()}
    if threads is not None:
        steps = {
            name: dataclasses.replace(step, threads=threads)
            if any(f.name == "threads" for f in dataclasses.fields(step))
            else step
            for name, step in steps.items()
        }
    return PipelineParameters(**steps)
