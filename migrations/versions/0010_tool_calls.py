"""Answers keep their tool calls, refusal and parsed structured output, and both answers and
attempts their cached and reasoning tokens (#16: tools and the whole chat-completions
request).

Nullable columns added in place (no table is copied, no row rewritten): the rows written
before have none of these.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_responses") as table:
        table.add_column(sa.Column("cached_input_tokens", sa.Integer(), nullable=True))
        table.add_column(sa.Column("reasoning_tokens", sa.Integer(), nullable=True))
        table.add_column(
            sa.Column(
                "tool_calls",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        table.add_column(sa.Column("refusal", sa.Text(), nullable=True))
        table.add_column(
            sa.Column(
                "output_json",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
    with op.batch_alter_table("prompt_attempts") as table:
        table.add_column(sa.Column("reasoning_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prompt_attempts") as table:
        table.drop_column("reasoning_tokens")
    with op.batch_alter_table("prompt_responses") as table:
        table.drop_column("output_json")
        table.drop_column("refusal")
        table.drop_column("tool_calls")
        table.drop_column("reasoning_tokens")
        table.drop_column("cached_input_tokens")
