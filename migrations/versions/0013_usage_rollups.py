"""Daily usage rollups (#17: usage reports): `usage_daily`, one row per UTC day, model,
provider, user, team, key and duration bucket, with the counters `GET /ai/usage` reports
(attempts, prompts by final status, tokens, cost; the completed prompts by duration bucket for
p50 and p95). The writes that produce the figures keep them up to date in their own
transaction, so a report never scans the prompt log.

The team and the key are never NULL (the nil UUID stands for "none"), so the primary key is an
ordinary one that an upsert conflicts on alike on PostgreSQL and SQLite. The duration bucket is
a key column rather than a column per bucket, so that the rollup written with every outcome
stays narrow (-1: the row of the attempts and of the failed and cancelled prompts). The cost is
an integer number of 1e-10 USD (the scale of the Money columns): SQLite has no exact decimal
type, and a sum of its decimal text would be a float.

The prompts finished before this revision are rolled up here, from the prompt log, once: a
report covers them too.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-14 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG = ["input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_usd_e10"]
COUNTERS = ["attempts", "completed", "failed", "cancelled", *BIG]
# The duration histogram's bounds in ms (app/db/models/usage.py), as of this revision.
BOUNDS = [10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1_000, 1_500, 2_000, 3_000]
BOUNDS += [5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000, 70_000, 100_000, 150_000]
BOUNDS += [200_000, 300_000, 500_000, 700_000, 1_000_000]
KEYS = "day, model, provider, user_id, team_id, api_key_id, duration_bucket, shard"


def _counter(name: str) -> sa.Column[int]:
    kind = sa.BigInteger() if name in BIG else sa.Integer()
    return sa.Column(name, kind, nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("duration_bucket", sa.SmallInteger(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        *(_counter(name) for name in COUNTERS),
        sa.PrimaryKeyConstraint(
            "day",
            "model",
            "provider",
            "user_id",
            "team_id",
            "api_key_id",
            "duration_bucket",
            "shard",
            name=op.f("pk_usage_daily"),
        ),
    )
    op.create_index("ix_usage_daily_user_day", "usage_daily", ["user_id", "day"])
    op.create_index("ix_usage_daily_team_day", "usage_daily", ["team_id", "day"])
    op.execute(_backfill(op.get_bind().dialect.name))


def _backfill(dialect: str) -> str:
    """The rollups of the prompt log as it stands (the same figures as
    app/engine/usage_rollups.py adds as outcomes are written)."""
    if dialect == "postgresql":
        day = "({} AT TIME ZONE 'UTC')::date".format
        nil = "'00000000-0000-0000-0000-000000000000'::uuid"
        cost = "coalesce(round(a.cost_usd * 10000000000), 0)::bigint"
    else:
        day = "date({})".format
        nil = "'" + "0" * 32 + "'"
        cost = "coalesce(CAST(round(a.cost_usd * 10000000000) AS INTEGER), 0)"
    bucket = " ".join(f"WHEN r.duration_ms < {b} THEN {k}" for k, b in enumerate(BOUNDS))
    status = "CASE WHEN p.status = '{}' THEN 1 ELSE 0 END".format
    return f"""
        INSERT INTO usage_daily ({KEYS}, {", ".join(COUNTERS)})
        SELECT {KEYS}, {", ".join(f"sum(u.{c})" for c in COUNTERS)}
        FROM (
            SELECT {day("a.ended_at")} AS day, p.model AS model, a.provider AS provider,
                p.user_id AS user_id, coalesce(p.team_id, {nil}) AS team_id,
                coalesce(p.api_key_id, {nil}) AS api_key_id, -1 AS duration_bucket, 0 AS shard,
                1 AS attempts, 0 AS completed, 0 AS failed, 0 AS cancelled,
                coalesce(a.input_tokens, 0) AS input_tokens,
                coalesce(a.output_tokens, 0) AS output_tokens,
                coalesce(a.cached_input_tokens, 0) AS cached_input_tokens,
                coalesce(a.reasoning_tokens, 0) AS reasoning_tokens, {cost} AS cost_usd_e10
            FROM prompt_attempts AS a JOIN prompt_requests AS p ON p.id = a.prompt_id
            UNION ALL
            SELECT {day("p.finished_at")}, p.model, p.provider, p.user_id,
                coalesce(p.team_id, {nil}), coalesce(p.api_key_id, {nil}),
                CASE WHEN p.status = 'completed' AND r.duration_ms IS NOT NULL
                    THEN CASE {bucket} ELSE {len(BOUNDS)} END ELSE -1 END, 0,
                0, {status("completed")}, {status("failed")}, {status("cancelled")}, 0, 0, 0, 0, 0
            FROM prompt_requests AS p LEFT JOIN prompt_responses AS r ON r.prompt_id = p.id
            WHERE p.status IN ('completed', 'failed', 'cancelled')
                AND p.finished_at IS NOT NULL
        ) AS u
        WHERE true
        GROUP BY {KEYS}
        """  # noqa: S608


def downgrade() -> None:
    op.drop_index("ix_usage_daily_team_day", table_name="usage_daily")
    op.drop_index("ix_usage_daily_user_day", table_name="usage_daily")
    op.drop_table("usage_daily")
