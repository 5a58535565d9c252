"""Daily usage rollups (`usage_daily`): what `GET /ai/usage` reports, kept up to date by every
write that produces its figures, in that write's own transaction (app/engine/usage_rollups.py),
so a report never scans the prompt log.

One row per UTC day, model, provider, user, team, key, duration bucket and writing process
(`shard`). The team and the
key are never NULL: a prompt made without one is counted under `NO_ID` (the nil UUID), so the
primary key is an ordinary one, and an upsert conflicts on it alike on PostgreSQL and SQLite.
Counters only ever grow, by the amounts of the rows just written.

The duration histogram (for p50 and p95) is a key column, not 32 counter columns: a completed
prompt counts in the row of its answering call's duration bucket, everything else (the
provider calls with their tokens and cost, the failed and cancelled prompts) in the row of
`NO_DURATION`. A rollup written with every outcome costs by the column (PostgreSQL sets up
each column's expressions at every execution): this way the hot statement's cost does not
depend on how many buckets there are, at the price of a few rows per day and key.
"""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped

from app.db.base import Base

# A prompt made without a team or a key is counted under this id (the API shows null).
NO_ID = uuid.UUID(int=0)

# The duration buckets: bucket k holds durations d (ms) with BOUNDS[k - 1] <= d < BOUNDS[k]
# (0 below BOUNDS[0]; the last one, everything from BOUNDS[-1] up). Roughly log-scale (each
# bound 1.33 to 1.67 times the one before), in round numbers, from 10 ms to 1,000 s.
DURATION_BOUNDS_MS = (
    10, 15, 20, 30, 50, 70,
    100, 150, 200, 300, 500, 700,
    1_000, 1_500, 2_000, 3_000, 5_000, 7_000,
    10_000, 15_000, 20_000, 30_000, 50_000, 70_000,
    100_000, 150_000, 200_000, 300_000, 500_000, 700_000,
    1_000_000,
)  # fmt: skip
DURATION_BUCKETS = len(DURATION_BOUNDS_MS) + 1
NO_DURATION = -1  # the bucket of the rows that count no completed prompt
# Money's scale: a cost is summed as an integer number of 1e-10 USD, exact on both databases
# (SQLite has no exact decimal type: a sum of its decimal text would be a float).
COST_SCALE = 10**10

KEY_COLUMNS = (
    "day", "model", "provider", "user_id", "team_id", "api_key_id", "duration_bucket", "shard"
)  # fmt: skip
COUNTERS = (
    "attempts",
    "completed",
    "failed",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "cost_usd_e10",
)
_BIG = {"input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens", "cost_usd_e10"}


def _counter(name: str) -> Column[int]:
    kind = BigInteger if name in _BIG else Integer
    return Column(name, kind, nullable=False, server_default=text("0"))


usage_daily = Table(
    "usage_daily",
    Base.metadata,
    # Day first in the primary key: an admin's report reads a range of days.
    Column("day", Date, primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("provider", String(64), primary_key=True),
    # No foreign keys: the rollups are history, and each new row would pay the lookups.
    Column("user_id", Uuid, primary_key=True),
    Column("team_id", Uuid, primary_key=True),
    Column("api_key_id", Uuid, primary_key=True),
    Column("duration_bucket", SmallInteger, primary_key=True),
    # The writing process's own number (app/engine/usage_rollups.py, WRITER_SHARD): two
    # processes recording the same key's outcomes at once each add to a row of their own
    # instead of queueing on one row's lock. A report adds up the shards.
    Column("shard", SmallInteger, primary_key=True),
    # `attempts` (provider calls: attempt rows) and their tokens and cost, on the UTC day each
    # call ended; `completed`, `failed`, `cancelled`: prompts that reached that final status,
    # on the day they did.
    *(_counter(name) for name in COUNTERS),
    # A member's own usage; a team's for its owners and viewers.
    Index("ix_usage_daily_user_day", "user_id", "day"),
    Index("ix_usage_daily_team_day", "team_id", "day"),
)


class UsageDaily(Base):
    """A row of `usage_daily` (written with Core by the engine, read with Core by the usage
    report; the class is for tools and tests)."""

    __table__ = usage_daily

    day: Mapped[date]
    model: Mapped[str]
    provider: Mapped[str]
    user_id: Mapped[uuid.UUID]
    team_id: Mapped[uuid.UUID]
    api_key_id: Mapped[uuid.UUID]
    duration_bucket: Mapped[int]
    shard: Mapped[int]
    attempts: Mapped[int]
    completed: Mapped[int]
    failed: Mapped[int]
    cancelled: Mapped[int]
    input_tokens: Mapped[int]
    output_tokens: Mapped[int]
    cached_input_tokens: Mapped[int]
    reasoning_tokens: Mapped[int]
    cost_usd_e10: Mapped[int]
