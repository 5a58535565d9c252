"""Prompt cancellation: when its owner asked to cancel a prompt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:17:20.538316
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.base

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cancel_requested_at", app.db.base.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("prompt_requests", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
