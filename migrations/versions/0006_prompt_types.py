"""Prompt types: versioned policies per `prompt_type`, and the version each prompt ran under.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 16:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.db.base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prompt_types",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("system_instruction", sa.Text(), nullable=True),
        sa.Column("template", sa.Text(), nullable=True),
        sa.Column("default_model", sa.String(length=200), nullable=True),
        sa.Column(
            "fallbacks",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("max_prompt_chars", sa.Integer(), nullable=True),
        sa.Column("max_output_tokens", sa.Integer(), nullable=True),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.Column("created_at", app.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_prompt_types_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_types")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_prompt_types_name_version")),
    )
    with op.batch_alter_table("prompt_types", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_prompt_types_created_by"), ["created_by"], unique=False
        )

    # Nullable, no default: on both databases this only changes the catalogue, whatever the
    # size of the table (SQLite's batch mode uses ALTER TABLE ADD COLUMN for it).
    with op.batch_alter_table("prompt_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prompt_type_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prompt_requests", schema=None) as batch_op:
        batch_op.drop_column("prompt_type_version")

    with op.batch_alter_table("prompt_types", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prompt_types_created_by"))

    op.drop_table("prompt_types")
