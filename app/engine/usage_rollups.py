"""Daily usage rollups (`usage_daily`, app/db/models/usage.py), kept equal to the sums over the
prompt log: every write that records a provider call (an attempt row) or ends a prompt (a
final status) adds its amounts to them in its own transaction, so `GET /ai/usage` reads the
rollups and never the log.

- An **attempt** counts on the UTC day its call ended, under the prompt's model, the provider
  that was called (a fallback's own), and the prompt's user, team and key; with its tokens and
  cost (a missing count or cost adds 0).
- A **prompt** counts once, when it reaches its final status (completed, failed, cancelled),
  on the UTC day of its `finished_at`, under its model and provider, user, team and key; a
  completed one in the row of its answering call's duration bucket (the response's
  `duration_ms`), the others in the `NO_DURATION` row, with the attempts.

One statement adds a batch: the rows are grouped by rollup key, sorted (concurrent writers
then lock rollup rows in the same order and never deadlock on them) and upserted. The hot
path's outcome batches on PostgreSQL fold it into their one statement (`pg_batches.py`, with
`upsert_sql` over the statement's own inputs); every other writer (the SQLite batches, the
cancellations, the sweeper's recovery) calls `roll_up` with the ids it has just written, in
the same transaction, which reads those rows back.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence

from sqlalchemy import TextClause, Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models.usage import (
    COST_SCALE,
    COUNTERS,
    DURATION_BOUNDS_MS,
    KEY_COLUMNS,
    NO_DURATION,
    NO_ID,
    usage_daily,
)

_TABLE = usage_daily.name
# This process's rollup rows (the key column `shard`): with one hot key (one user, key and
# model), every process's outcome statements would otherwise wait in turn for that key's one
# row (four writers of one outcome at a time on one row lost about 40 % of their throughput
# when this was built). Within a process, outcome batches are written one at a time. (A
# process forked after this import shares its parent's number: no error, only the waits.)
WRITER_SHARD = random.SystemRandom().randrange(1 << 15)
_FINAL = "'completed', 'failed', 'cancelled'"


def utc_day(dialect: str, timestamp: str) -> str:
    """The UTC date of a timestamp column or parameter, in SQL. (SQLite stores timestamps as
    naive UTC text: app/db/base.py.)"""
    if dialect == "postgresql":
        return f"({timestamp} AT TIME ZONE 'UTC')::date"
    return f"date({timestamp})"


def _or_none(dialect: str, column: str) -> str:
    """A team or key id, `NO_ID` for none (as `Uuid` stores it: hex text on SQLite)."""
    nil = f"'{NO_ID}'::uuid" if dialect == "postgresql" else f"'{NO_ID.hex}'"
    return f"coalesce({column}, {nil})"


def _cost(dialect: str, column: str) -> str:
    """A cost in integer units of 1e-10 USD (Money's scale; SQLite's decimal text is read as a
    float, which is exact to far more than ten decimals at any one call's cost)."""
    if dialect == "postgresql":
        return f"coalesce(round({column} * {COST_SCALE}), 0)::bigint"
    return f"coalesce(CAST(round({column} * {COST_SCALE}) AS INTEGER), 0)"


def _bucket(dialect: str, duration: str) -> str:
    """The histogram bucket of a duration in ms (`DURATION_BOUNDS_MS`)."""
    if dialect == "postgresql":
        bounds = ",".join(map(str, DURATION_BOUNDS_MS))
        return f"width_bucket({duration}, '{{{bounds}}}'::integer[])"
    whens = " ".join(f"WHEN {duration} < {b} THEN {k}" for k, b in enumerate(DURATION_BOUNDS_MS))
    return f"CASE {whens} ELSE {len(DURATION_BOUNDS_MS)} END"


def _status(status: str, name: str) -> str:
    return f"CASE WHEN {status} = '{name}' THEN 1 ELSE 0 END"


def upsert_sql(
    dialect: str, *, attempts: str, prompts: str, finished_day: str, status: str, duration: str
) -> str:
    """`INSERT INTO usage_daily … ON CONFLICT DO UPDATE` adding up:

    - `attempts`: a FROM (and WHERE) over attempt rows `a` (provider, ended_at, token counts,
      cost_usd), each joined to its prompt `p`;
    - `prompts`: a FROM (and WHERE) over prompts `p` that have just reached their final status
      (model, provider, user_id, team_id, api_key_id), where `finished_day` is the UTC day it
      happened, `status` the status and `duration` the response's `duration_ms`.

    Every column of the statement costs at each execution, the hot path's included: keep it
    to the table's, and no expression more than needed.
    """
    keys = ", ".join(KEY_COLUMNS)
    tokens = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
    from_attempts = ", ".join(
        [
            f"{utc_day(dialect, 'a.ended_at')} AS day",
            "p.model AS model",
            "a.provider AS provider",
            "p.user_id AS user_id",
            f"{_or_none(dialect, 'p.team_id')} AS team_id",
            f"{_or_none(dialect, 'p.api_key_id')} AS api_key_id",
            f"{NO_DURATION} AS duration_bucket",
            f"{WRITER_SHARD} AS shard",
            "1 AS attempts",
            "0 AS completed",
            "0 AS failed",
            "0 AS cancelled",
            *(f"coalesce(a.{name}, 0) AS {name}" for name in tokens),
            f"{_cost(dialect, 'a.cost_usd')} AS cost_usd_e10",
        ]
    )
    from_prompts = ", ".join(
        [
            finished_day,
            "p.model",
            "p.provider",
            "p.user_id",
            _or_none(dialect, "p.team_id"),
            _or_none(dialect, "p.api_key_id"),
            f"CASE WHEN {status} = 'completed' AND {duration} IS NOT NULL "
            f"THEN {_bucket(dialect, duration)} ELSE {NO_DURATION} END",
            str(WRITER_SHARD),
            "0",
            *(_status(status, name) for name in ("completed", "failed", "cancelled")),
            "0, 0, 0, 0, 0",
        ]
    )
    sums = ", ".join(f"sum(u.{name})" for name in COUNTERS)
    added = ", ".join(f"{name} = {_TABLE}.{name} + excluded.{name}" for name in COUNTERS)
    return (
        f"INSERT INTO {_TABLE} ({keys}, {', '.join(COUNTERS)}) "  # noqa: S608
        f"SELECT {keys}, {sums} FROM ("
        f"SELECT {from_attempts} FROM {attempts} "
        f"UNION ALL SELECT {from_prompts} FROM {prompts}"
        f") AS u WHERE true GROUP BY {keys} ORDER BY {keys} "
        f"ON CONFLICT ({keys}) DO UPDATE SET {added}"
    )


def _roll_up_statement(dialect: str) -> TextClause:
    sql = upsert_sql(
        dialect,
        attempts="prompt_attempts AS a JOIN prompt_requests AS p ON p.id = a.prompt_id "
        "WHERE a.id IN :attempt_ids",
        prompts="prompt_requests AS p LEFT JOIN prompt_responses AS r ON r.prompt_id = p.id "
        f"WHERE p.id IN :prompt_ids AND p.status IN ({_FINAL})",
        finished_day=utc_day(dialect, "p.finished_at"),
        status="p.status",
        duration="r.duration_ms",
    )
    return text(sql).bindparams(
        bindparam("attempt_ids", expanding=True, type_=Uuid()),
        bindparam("prompt_ids", expanding=True, type_=Uuid()),
    )


_ROLL_UP = {dialect: _roll_up_statement(dialect) for dialect in ("postgresql", "sqlite")}


async def roll_up(
    connection: AsyncConnection | AsyncSession,
    *,
    attempt_ids: Sequence[uuid.UUID] = (),
    prompt_ids: Sequence[uuid.UUID] = (),
) -> None:
    """Add to the rollups the attempt rows and the prompts' final statuses just written in this
    transaction (by their ids): call it once per transaction, with everything it wrote."""
    if not attempt_ids and not prompt_ids:
        return
    bind = connection.get_bind() if isinstance(connection, AsyncSession) else connection
    await connection.execute(
        _ROLL_UP[bind.dialect.name],
        {"attempt_ids": list(attempt_ids), "prompt_ids": list(prompt_ids)},
    )
