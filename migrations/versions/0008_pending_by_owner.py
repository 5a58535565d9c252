"""A user's pending prompts, oldest first: a partial index on (user_id, created_at) of the
rows whose status is `pending`.

The per-user cap counts them (app/services/caps.py) and a full runner claims them back by
owner (app/engine/runners.py); both then read only the pending rows, however long the user's
history.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 03:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_index(
        "ix_prompt_requests_pending_user",
        "prompt_requests",
        ["user_id", "created_at"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_prompt_requests_pending_user", table_name="prompt_requests")
