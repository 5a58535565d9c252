"""`prompt_requests.attempts` is renamed `executions`: it counts the executions claimed (each
one making one or more provider calls), while the API's `attempts` lists the provider calls
themselves (`prompt_attempts`). The API already called it `executions`.

A plain rename (PostgreSQL, and SQLite 3.25 or later), so no table is copied.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 06:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE prompt_requests RENAME COLUMN attempts TO executions")


def downgrade() -> None:
    op.execute("ALTER TABLE prompt_requests RENAME COLUMN executions TO attempts")
