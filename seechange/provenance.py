"""Provenance ids and the find-or-create of Provenance rows.

A provenance id is the first 20 hex characters of the SHA-256 of the canonical JSON of
``{"code_version", "parameters", "process", "upstreams"}`` (keys sorted, no whitespace, floats as Python's
shortest round-trip ``repr``, upstream ids sorted and de-duplicated). Same inputs give the same id, so a
re-run finds its products; any change of a critical parameter, the code version or an upstream gives a new
one, and old and new products live side by side.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, ClassVar

import numpy as np
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

import seechange
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance, provenance_upstreams
from seechange.models.upsert import insert_or_get

__all__ = [
    "StepParameters",
    "canonical_json",
    "get_or_create_provenance",
    "normalize_parameters",
    "provenance_id",
]


@dataclasses.dataclass(frozen=True)
class StepParameters:
    """Base of every step's parameters: a frozen dataclass whose critical fields feed the provenance hash.

    Subclasses must be frozen dataclasses too and list the fields that do not change the product (e.g.
    number of threads, verbosity) in ``NON_CRITICAL``::

        @dataclass(frozen=True)
        class DetectParameters(StepParameters):
            NON_CRITICAL: ClassVar[frozenset[str]] = frozenset({"n_threads"})
            threshold_sigma: float = 5.0
            n_threads: int = 1
    """

    NON_CRITICAL: ClassVar[frozenset[str]] = frozenset()

    def critical(self) -> dict[str, Any]:
        """The critical parameters: every field not named in ``NON_CRITICAL``, normalised for JSON.

        Returns
        -------
        dict
            Field name -> JSON-ready value (nested dataclasses and tuples become dicts and lists).

        Raises
        ------
        TypeError
            If ``NON_CRITICAL`` names a field the class does not have (a typo would silently make a
            non-critical parameter critical, or the reverse).
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = self.NON_CRITICAL.difference(names)
        if unknown:
            raise TypeError(f"{type(self).__name__}.NON_CRITICAL names unknown fields: {sorted(unknown)}")
        return {
            name: normalize_parameters(getattr(self, name)) for name in names if name not in self.NON_CRITICAL
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


def provenance_id(
    process: str,
    code_version: str,
    parameters: Mapping[str, Any] | StepParameters,
    upstream_ids: Iterable[str],
) -> str:
    """The provenance id of a step.

    Parameters
    ----------
    process : str
        Step name, e.g. ``"reduce"``.
    code_version : str
        ``major.minor`` of the code.
    parameters : Mapping or StepParameters
        The critical parameters (a :class:`StepParameters` contributes its :meth:`~StepParameters.critical`).
    upstream_ids : iterable of str
        Ids of the upstream provenances; order and repetitions do not matter.

    Returns
    -------
    str
        First 20 hex characters of the SHA-256 of the canonical JSON.
    """
    if not process:
        raise ValueError("process must be a non-empty string")
    payload = {
        "code_version": str(code_version),
        "parameters": parameters.critical() if isinstance(parameters, StepParameters) else parameters,
        "process": str(process),
        "upstreams": sorted(set(upstream_ids)),
    }
    digest = hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()
    return digest[:PROVENANCE_ID_LENGTH]


def get_or_create_provenance(
    session: Session,
    process: str,
    parameters: Mapping[str, Any] | StepParameters,
    upstreams: Sequence[Provenance],
    code_version: str = seechange.CODE_VERSION,
) -> Provenance:
    """Find the Provenance of a step, inserting it (and its upstream links) when it is new.

    Uses ``INSERT ... ON CONFLICT DO NOTHING`` and then selects, so concurrent callers in different
    transactions end with the same single row. The caller owns the session and commits.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
        The caller's session (its transaction is used).
    process : str
        Step name.
    parameters : Mapping or StepParameters
        The step's parameters; only the critical ones are stored and hashed.
    upstreams : sequence of Provenance
        Provenances of the inputs; they must already be in the database (or pending in ``session``).
    code_version : str
        ``major.minor`` of the code; defaults to :data:`seechange.CODE_VERSION`.

    Returns
    -------
    Provenance
        The (existing or new) row, attached to ``session``.

    Raises
    ------
    RuntimeError
        If a row with the computed id exists with a different process or code version (a hash collision or
        a tampered row).
    """
    params = (
        parameters.critical() if isinstance(parameters, StepParameters) else normalize_parameters(parameters)
    )
    upstream_ids = sorted({u.id for u in upstreams})
    pid = provenance_id(process, code_version, params, upstream_ids)
    if upstreams:
        session.flush()  # upstream rows pending in this session must exist before the links
    values = {"id": pid, "process": process, "code_version": code_version, "parameters": params}
    prov, _ = insert_or_get(session, Provenance, values, conflict=("id",))
    if upstream_ids:
        session.execute(
            insert(provenance_upstreams)
            .values([{"provenance_id": pid, "upstream_id": uid} for uid in upstream_ids])
            .on_conflict_do_nothing()
        )
    if prov.process != process or prov.code_version != code_version:
        raise RuntimeError(
            f"provenance {pid} exists with process={prov.process!r}, code_version={prov.code_version!r}; "
            f"expected {process!r}, {code_version!r}"
        )
    return prov
