"""Insert-or-get: the one way a row with a natural unique key is written (idempotent under concurrency)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from seechange.models.base import Base

__all__ = ["insert_or_get"]

M = TypeVar("M", bound=Base)


def insert_or_get(
    session: Session, model: type[M], values: Mapping[str, Any], *, conflict: Sequence[str]
) -> tuple[M, bool]:
    """Insert a row unless one with the same unique key exists; return the row and whether it is new.

    ``INSERT ... ON CONFLICT (conflict) DO NOTHING RETURNING *``, then, when nothing was returned (another
    transaction or an earlier run wrote the row), ``SELECT`` on the unique key. Safe when several processes
    insert the same key at once: exactly one creates it, the others get that row.

    Parameters
    ----------
    session : Session
        The caller's session; the caller commits.
    model : type
        The mapped class, e.g. ``Exposure``.
    values : mapping
        Column name -> value of the new row; must include every column of ``conflict``.
    conflict : sequence of str
        The columns of the unique constraint (or primary key) that identifies the row.

    Returns
    -------
    (row, bool)
        The row (attached to ``session``) and True if this call inserted it.
    """
    stmt = (
        insert(model).values(**values).on_conflict_do_nothing(index_elements=list(conflict)).returning(model)
    )
    row = session.scalars(stmt).one_or_none()
    if row is not None:
        return row, True
    key = [getattr(model, column) == values[column] for column in conflict]
    return session.scalars(select(model).where(*key)).one(), False
