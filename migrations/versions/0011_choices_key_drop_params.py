"""Answers keep the other choices of a request with `n` > 1; API keys may ask to drop, rather
than refuse, what a provider cannot honour (#16: `n`, and `drop_params` per key).

Nullable columns added in place (no table is copied, no row rewritten).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_responses") as table:
        table.add_column(
            sa.Column(
                "choices",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("drop_params", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("drop_params")
    with op.batch_alter_table("prompt_responses") as table:
        table.drop_column("choices")
