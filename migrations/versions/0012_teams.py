"""Teams with members and roles; keys scoped to a team and to a list of models, with a
description; every prompt records the key and the team it was made with; the audit log of
administrative changes (#17: governance).

`prompt_requests` gains two nullable columns in place (no row rewritten) and a partial index
for a team's prompts, newest first, over the rows that have a team only.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.db.base

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_TEAM = sa.text("team_id IS NOT NULL")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC_DATETIME = app.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_teams_name")),
    )
    op.create_table(
        "team_members",
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "role IN ('owner', 'member', 'viewer')", name=op.f("ck_team_members_role")
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_team_members_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_team_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_team_members")),
    )
    op.create_index(op.f("ix_team_members_user_id"), "team_members", ["user_id"])
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("description", sa.Text(), nullable=True))
        table.add_column(sa.Column("team_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("allowed_models", JSON, nullable=True))
        table.create_foreign_key(
            op.f("fk_api_keys_team_id_teams"), "teams", ["team_id"], ["id"], ondelete="RESTRICT"
        )
        table.create_index(op.f("ix_api_keys_team_id"), ["team_id"])
    with op.batch_alter_table("prompt_requests") as table:
        table.add_column(sa.Column("api_key_id", sa.Uuid(), nullable=True))
        table.add_column(sa.Column("team_id", sa.Uuid(), nullable=True))
    op.create_index(
        "ix_prompt_requests_team_created",
        "prompt_requests",
        ["team_id", "created_at", "id"],
        postgresql_where=HAS_TEAM,
        sqlite_where=HAS_TEAM,
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=200), nullable=False),
        sa.Column("before", JSON, nullable=True),
        sa.Column("after", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at", "id"])
    op.create_index("ix_audit_log_target", "audit_log", ["target_type", "target_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_target", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_prompt_requests_team_created", table_name="prompt_requests")
    with op.batch_alter_table("prompt_requests") as table:
        table.drop_column("team_id")
        table.drop_column("api_key_id")
    with op.batch_alter_table("api_keys") as table:
        table.drop_index(op.f("ix_api_keys_team_id"))
        table.drop_constraint(op.f("fk_api_keys_team_id_teams"), type_="foreignkey")
        table.drop_column("allowed_models")
        table.drop_column("team_id")
        table.drop_column("description")
    op.drop_index(op.f("ix_team_members_user_id"), table_name="team_members")
    op.drop_table("team_members")
    op.drop_table("teams")
