"""Rate limits and budgets on keys, users and teams, and the ledger that enforces them
(#17: governance): `limits` (what is set), `limit_usage` (what each account uses now),
`reservations` (what each admitted prompt holds until it is settled).

`prompt_requests` gains `limited` (whether the prompt holds reservations), added with a
constant default: no row is rewritten. Webhooks gain the event `budget.threshold`: an
endpoint's flag for it, and deliveries that announce something other than a prompt (no
`prompt_id`, their message in `payload`).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 20:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.db.base

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = app.db.base.UTCDateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
MONEY = app.db.base.Money(precision=20, scale=10)


def upgrade() -> None:
    op.create_table(
        "limits",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("budget_usd", MONEY, nullable=True),
        sa.Column("budget_period", sa.String(length=8), nullable=False),
        sa.Column("warn_at", sa.Float(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "scope IN ('default', 'user', 'team', 'key')", name=op.f("ck_limits_scope")
        ),
        sa.CheckConstraint(
            "budget_period IN ('day', 'week', 'month')", name=op.f("ck_limits_budget_period")
        ),
        sa.PrimaryKeyConstraint("scope", "subject_id", name=op.f("pk_limits")),
    )
    op.create_table(
        "limit_usage",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("window_start", UTC_DATETIME, nullable=True),
        sa.Column("window_requests", sa.Integer(), nullable=False),
        sa.Column("window_tokens", sa.BigInteger(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("reserved_usd", MONEY, nullable=False),
        sa.Column("spent_usd", MONEY, nullable=False),
        sa.Column("warned_period", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("scope", "subject_id", name=op.f("pk_limit_usage")),
    )
    op.create_table(
        "reservations",
        sa.Column("prompt_id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("amount_usd", MONEY, nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("prompt_id", "scope", "subject_id", name=op.f("pk_reservations")),
    )
    op.create_index(op.f("ix_reservations_created_at"), "reservations", ["created_at"])
    with op.batch_alter_table("prompt_requests") as table:
        table.add_column(
            sa.Column("limited", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("webhook_endpoints") as table:
        table.add_column(
            sa.Column(
                "on_budget_threshold", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
    with op.batch_alter_table("webhook_deliveries") as table:
        table.alter_column("prompt_id", existing_type=sa.Uuid(), nullable=True)
        table.add_column(sa.Column("payload", JSON, nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE prompt_id IS NULL")
    with op.batch_alter_table("webhook_deliveries") as table:
        table.drop_column("payload")
        table.alter_column("prompt_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("webhook_endpoints") as table:
        table.drop_column("on_budget_threshold")
    with op.batch_alter_table("prompt_requests") as table:
        table.drop_column("limited")
    op.drop_index(op.f("ix_reservations_created_at"), table_name="reservations")
    op.drop_table("reservations")
    op.drop_table("limit_usage")
    op.drop_table("limits")
