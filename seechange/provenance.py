"""Provenance ids and the find-or-create of Provenance rows.

A provenance id is the first 20 hex characters of the SHA-256 of the canonical JSON of
``{"code_version", "parameters", "process", "upstreams"}`` (keys sorted, no whitespace, floats as Python's
shortest round-trip ``repr``, upstream ids sorted and de-duplicated). Same inputs give the same id, so a
re-run finds its products; any change of a critical parameter, the code version or an upstream gives a new
one, and old and new products live side by side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

import seechange
from seechange.models.provenance import PROVENANCE_ID_LENGTH, Provenance, provenance_upstreams
from seechange.models.upsert import insert_or_get
from seechange.parameters import StepParameters, canonical_json, normalize_parameters

__all__ = ["get_or_create_provenance", "provenance_id"]


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
