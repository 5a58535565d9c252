"""Pricing provenance: the catalogue version behind each cost, and cached input tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 13:48:31.459027
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cached_input_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("catalogue_version", sa.String(length=32), nullable=True))

    with op.batch_alter_table("prompt_responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("catalogue_version", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prompt_responses", schema=None) as batch_op:
        batch_op.drop_column("catalogue_version")

    with op.batch_alter_table("prompt_attempts", schema=None) as batch_op:
        batch_op.drop_column("catalogue_version")
        batch_op.drop_column("cached_input_tokens")
