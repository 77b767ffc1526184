"""Drop ``coadd_members.weight``: the coadd never wrote it (its per-pixel weights are in the weight file).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_column("coadd_members", "weight")


def downgrade() -> None:
    op.add_column("coadd_members", sa.Column("weight", sa.Double(), nullable=True))
