"""Add ``forced_photometry``: forced PSF fluxes and non-detection limits of Objects on difference images.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "forced_photometry"
INDEXED = ("mjd", "object_id", "provenance_id", "subtraction_id")


def upgrade() -> None:
    dbl = sa.Double
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=False),
        sa.Column("subtraction_id", sa.BigInteger(), nullable=False),
        sa.Column("provenance_id", sa.String(length=20), nullable=False),
        sa.Column("sighting_id", sa.BigInteger(), nullable=True),
        sa.Column("detected", sa.Boolean(), nullable=False),
        sa.Column("mjd", dbl(), nullable=False),
        sa.Column("band", sa.String(length=8), nullable=False),
        sa.Column("ra", dbl(), nullable=False),
        sa.Column("dec", dbl(), nullable=False),
        sa.Column("x", dbl(), nullable=False),
        sa.Column("y", dbl(), nullable=False),
        sa.Column("flux", dbl(), nullable=False),
        sa.Column("flux_err", dbl(), nullable=False),
        sa.Column("flux_njy", dbl(), nullable=False),
        sa.Column("flux_njy_err", dbl(), nullable=False),
        sa.Column("zero_point", dbl(), nullable=False),
        sa.Column("lim_mag", dbl(), nullable=True),
        sa.Column("image_lim_mag", dbl(), nullable=True),
        sa.Column("n_bad_pixels", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["object_id"], ["objects.id"], name=op.f(f"fk_{TABLE}_object_id_objects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["subtraction_id"],
            ["subtraction_images.id"],
            name=op.f(f"fk_{TABLE}_subtraction_id_subtraction_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["provenance_id"],
            ["provenances.id"],
            name=op.f(f"fk_{TABLE}_provenance_id_provenances"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["sighting_id"],
            ["sightings.id"],
            name=op.f(f"fk_{TABLE}_sighting_id_sightings"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
        sa.UniqueConstraint(
            "object_id",
            "subtraction_id",
            "provenance_id",
            name=op.f(f"uq_{TABLE}_object_id_subtraction_id_provenance_id"),
        ),
    )
    for col in INDEXED:
        op.create_index(op.f(f"ix_{TABLE}_{col}"), TABLE, [col], unique=False)


def downgrade() -> None:
    for col in INDEXED:
        op.drop_index(op.f(f"ix_{TABLE}_{col}"), table_name=TABLE)
    op.drop_table(TABLE)
