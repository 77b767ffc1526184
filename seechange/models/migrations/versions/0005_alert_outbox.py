"""``alert_log`` becomes the alert outbox: the packet's bytes, when they were staged, and ``sent_at`` null
until the broker confirmed the delivery.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "alert_log"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("packet", sa.LargeBinary(), nullable=True))
    op.add_column(
        TABLE,
        sa.Column("staged_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.alter_column(
        TABLE, "sent_at", existing_type=sa.DateTime(timezone=True), nullable=True, server_default=None
    )
    op.create_index(op.f("ix_alert_log_sent_at"), TABLE, ["sent_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_log_sent_at"), table_name=TABLE)
    op.execute(sa.text(f"UPDATE {TABLE} SET sent_at = staged_at WHERE sent_at IS NULL"))
    op.alter_column(
        TABLE,
        "sent_at",
        existing_type=sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.now(),
    )
    op.drop_column(TABLE, "staged_at")
    op.drop_column(TABLE, "packet")
