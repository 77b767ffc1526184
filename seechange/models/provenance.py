"""Provenance: which process, code version, critical parameters and upstream provenances made a product."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ForeignKey, String, Table
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seechange.models.base import Base, CreatedAtMixin

#: Length of a provenance id: the first 20 hex characters of a SHA-256 digest.
PROVENANCE_ID_LENGTH = 20

#: Directed links "``provenance_id`` was made from ``upstream_id``".
provenance_upstreams = Table(
    "provenance_upstreams",
    Base.metadata,
    Column(
        "provenance_id",
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "upstream_id",
        String(PROVENANCE_ID_LENGTH),
        ForeignKey("provenances.id", ondelete="RESTRICT"),
        primary_key=True,
        index=True,
    ),
)


class Provenance(CreatedAtMixin, Base):
    """How a product was made; its id is a hash of everything listed here (see :mod:`seechange.provenance`).

    Attributes
    ----------
    id : str
        First 20 hex characters of the SHA-256 of the canonical JSON of the fields below.
    process : str
        Step name, e.g. ``"reduce"``, ``"coadd"``, ``"subtract"``, ``"detect"``.
    code_version : str
        ``major.minor`` of the code that ran the step.
    parameters : dict
        The step's critical parameters (JSON).
    upstreams : list of Provenance
        The provenances of the inputs.
    """

    __tablename__ = "provenances"

    id: Mapped[str] = mapped_column(String(PROVENANCE_ID_LENGTH), primary_key=True)
    process: Mapped[str] = mapped_column(String, nullable=False, index=True)
    code_version: Mapped[str] = mapped_column(String, nullable=False)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)

    upstreams: Mapped[list[Provenance]] = relationship(
        secondary=provenance_upstreams,
        primaryjoin=lambda: Provenance.id == provenance_upstreams.c.provenance_id,
        secondaryjoin=lambda: Provenance.id == provenance_upstreams.c.upstream_id,
        order_by=lambda: Provenance.id,
        back_populates="downstreams",
    )
    downstreams: Mapped[list[Provenance]] = relationship(
        secondary=provenance_upstreams,
        primaryjoin=lambda: Provenance.id == provenance_upstreams.c.upstream_id,
        secondaryjoin=lambda: Provenance.id == provenance_upstreams.c.provenance_id,
        order_by=lambda: Provenance.id,
        back_populates="upstreams",
    )

    def __repr__(self) -> str:
        return f"Provenance(id={self.id!r}, process={self.process!r}, code_version={self.code_version!r})"
