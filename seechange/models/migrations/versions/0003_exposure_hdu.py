"""Add ``exposures.hdu``: which HDU of a multi-extension raw file holds the Exposure's CCD.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("exposures", sa.Column("hdu", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("exposures", "hdu")
