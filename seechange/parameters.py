"""Step parameters from a TOML file, so a pipeline scientist can re-run stages with new parameters.

The file has one table per step, each key a field of that step's frozen parameters class::

    [detect]
    threshold = 5.5
    [subtract]
    resample_order = 3

Changed critical parameters give new provenance ids, so the new products live beside the old ones.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seechange.improc.reduction import ReduceParams
from seechange.improc.subtraction import DetectParams, SubtractParams
from seechange.pipeline.subtract import ReferenceParams


@dataclass(frozen=True)
class PipelineParameters:
    """Parameters of every step."""

    reduce: ReduceParams = field(default_factory=ReduceParams)
    reference: ReferenceParams = field(default_factory=ReferenceParams)
    subtract: SubtractParams = field(default_factory=SubtractParams)
    detect: DetectParams = field(default_factory=DetectParams)


def _override(base: Any, table: dict[str, Any], step: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(base)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ValueError(f"unknown {step} parameter(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return dataclasses.replace(base, **values)


def load_parameters(path: Path | None) -> PipelineParameters:
    """Defaults, overridden by the tables of ``path`` (TOML) when given."""
    params = PipelineParameters()
    if path is None:
        return params
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(params)})
    if unknown:
        raise ValueError(f"{path}: unknown step table(s): {', '.join(unknown)}")
    return PipelineParameters(**{name: _override(getattr(params, name), data.get(name, {}), name)
                                 for name in ("reduce", "reference", "subtract", "detect")})
