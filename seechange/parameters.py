"""The one parameters base of every step, and the canonical JSON form that provenance ids hash.

Dependency-free (standard library and numpy), so the pure ``improc`` functions and the database-facing
``pipeline`` use the same base. A step's parameters are a frozen dataclass derived from
:class:`StepParameters`; every field is critical (it changes the products, so it feeds the provenance id)
unless it is declared with :func:`noncritical`::

    @dataclass(frozen=True)
    class SubtractParams(StepParameters):
        resample_order: int = 1
        zogy: ZogyParams = field(default_factory=ZogyParams)   # nested parameters: their critical part
        threads: int = noncritical(default_factory=default_threads)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = [
    "CRITICAL",
    "StepParameters",
    "canonical_json",
    "default_threads",
    "noncritical",
    "normalize_parameters",
]

#: The field-metadata key that marks a field critical (True, the default) or not (False).
CRITICAL = "critical"


def default_threads() -> int:
    """The number of CPU cores of this machine (at least 1): the default thread count of a step."""
    return os.cpu_count() or 1


def noncritical(
    *, default: Any = dataclasses.MISSING, default_factory: Callable[[], Any] | Any = dataclasses.MISSING
) -> Any:
    """A dataclass field that does not change the products (threads, verbosity): left out of the provenance.

    Parameters
    ----------
    default : object, optional
        The field's default value.
    default_factory : callable, optional
        Or a factory of it (give one of the two).

    Returns
    -------
    dataclasses.Field
        ``field(default=..., metadata={"critical": False})``.
    """
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={CRITICAL: False})
    return dataclasses.field(default=default, metadata={CRITICAL: False})


def _is_critical(cls: type, f: dataclasses.Field[Any]) -> bool:
    """Whether field ``f`` of ``cls`` is critical; a metadata key or value other than ``critical: bool``
    is an error (a misspelt marking would silently make a non-critical parameter critical)."""
    unknown = set(f.metadata) - {CRITICAL}
    if unknown:
        raise TypeError(
            f"{cls.__name__}.{f.name}: unknown field metadata {sorted(unknown)} "
            f"(mark non-critical fields with noncritical(...) or metadata={{{CRITICAL!r}: False}})"
        )
    value = f.metadata.get(CRITICAL, True)
    if not isinstance(value, bool):
        raise TypeError(f"{cls.__name__}.{f.name}: metadata {CRITICAL!r} must be a bool, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class StepParameters:
    """Base of every step's parameters: a frozen dataclass whose critical fields feed the provenance hash.

    Subclasses must be frozen dataclasses too; they mark the fields that do not change the product with
    :func:`noncritical` (``metadata={"critical": False}``). Fields that are themselves
    :class:`StepParameters` contribute their own critical part.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "NON_CRITICAL" in cls.__dict__:
            raise TypeError(f"{cls.__name__}: NON_CRITICAL is not used; mark fields with noncritical(...)")

    def critical(self) -> dict[str, Any]:
        """The critical parameters: every field not marked non-critical, normalised for JSON.

        Returns
        -------
        dict
            Field name -> JSON-ready value (nested parameters become their critical dicts, tuples lists).

        Raises
        ------
        TypeError
            If a field's metadata holds anything but ``critical: bool`` (e.g. a misspelt key).
        """
        cls = type(self)
        return {
            f.name: normalize_parameters(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if _is_critical(cls, f)
        }


def normalize_parameters(value: Any) -> Any:
    """Turn parameters into plain JSON values, deterministically.

    Mappings become dicts with ``str`` keys, tuples and lists become lists, sets become sorted lists, numpy
    scalars and arrays become Python numbers and lists, paths become POSIX strings, enums their values,
    a :class:`StepParameters` its :meth:`~StepParameters.critical` part, other dataclasses their fields.
    ``-0.0`` becomes ``0.0``. ``int`` and ``float`` stay distinct (``5`` and ``5.0`` hash differently).

    Parameters
    ----------
    value : object
        Parameters (usually a mapping).

    Returns
    -------
    object
        The normalised value.

    Raises
    ------
    TypeError
        For a value that has no JSON form or a mapping key that is not a string.
    ValueError
        For NaN or infinite floats.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return normalize_parameters(value.value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"parameter value {value!r} is not finite")
        return 0.0 if value == 0.0 else float(value)
    if isinstance(value, np.generic):
        return normalize_parameters(value.item())
    if isinstance(value, np.ndarray):
        return normalize_parameters(value.tolist())
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, StepParameters):
        return value.critical()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: normalize_parameters(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"parameter keys must be strings, got {key!r}")
            out[key] = normalize_parameters(item)
        return out
    if isinstance(value, (set, frozenset)):
        items = [normalize_parameters(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")))
    if isinstance(value, (list, tuple)):
        return [normalize_parameters(v) for v in value]
    raise TypeError(f"parameter value of type {type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> str:
    """Canonical JSON text: normalised (:func:`normalize_parameters`), keys sorted, no whitespace.

    Parameters
    ----------
    value : object
        Anything :func:`normalize_parameters` accepts.

    Returns
    -------
    str
        ASCII JSON; floats are written with Python's shortest round-trip ``repr``.
    """
    return json.dumps(
        normalize_parameters(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
