"""PostgreSQL: the limits ledger's statements (app/engine/ledger.py), straight to asyncpg.

Through SQLAlchemy (as SQLite still runs it), an admission batch is a transaction of an
upsert per account, a write-back and an insert, and a settlement one of four or five
statements; the execution around each statement cost more than the statement (the same
finding as `pg_batches.py`). Here, on connections of the ledger's own (`db/dedicated.py`):

- an admission batch is a transaction of two statements: `LOCK` (the accounts' usage rows,
  created if missing, locked in key order and returned), then, once the batch is decided in
  Python, `WRITE` (the rows written back and the reservations inserted, in one statement);
- a settlement batch is one statement, `SETTLE`, committed on its own: it deletes the
  prompts' reservations, sums their attempts' costs, locks the usage rows in key order (so
  it never waits in a cycle with an admission), gives back what they held and charges what
  they cost, and returns the budgets that may have just passed their warning share. Those
  (rare) are warned in a transaction of their own (`Ledger._warn_crossed`), which checks
  again under the row's lock; should that step be lost, the next settlement of the budget
  finds it still unwarned.

PostgreSQL's numeric arithmetic is exact, so here the amounts are added in SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from app.db.dedicated import Fetch

_USAGE_COLUMNS = (
    "scope, subject_id, window_start, window_requests, window_tokens, in_flight, "
    "period_start, reserved_usd, spent_usd, warned_period"
)

LOCK = f"""
    INSERT INTO limit_usage (scope, subject_id, window_requests, window_tokens, in_flight,
        reserved_usd, spent_usd)
    SELECT k.scope, k.subject_id, 0, 0, 0, 0, 0
    FROM unnest($1::text[], $2::uuid[]) AS k(scope, subject_id)
    ORDER BY k.scope, k.subject_id
    ON CONFLICT (scope, subject_id) DO UPDATE SET scope = excluded.scope
    RETURNING {_USAGE_COLUMNS}
"""  # noqa: S608 (no value in the SQL: all are parameters)

WRITE = """
    WITH written AS (
        UPDATE limit_usage AS u
        SET window_start = v.window_start, window_requests = v.window_requests,
            window_tokens = v.window_tokens, in_flight = v.in_flight,
            period_start = v.period_start, reserved_usd = v.reserved_usd,
            spent_usd = v.spent_usd, warned_period = v.warned_period
        FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::integer[], $5::bigint[],
                    $6::integer[], $7::date[], $8::numeric[], $9::numeric[], $10::date[])
            AS v(scope, subject_id, window_start, window_requests, window_tokens, in_flight,
                 period_start, reserved_usd, spent_usd, warned_period)
        WHERE u.scope = v.scope AND u.subject_id = v.subject_id
    )
    INSERT INTO reservations (prompt_id, scope, subject_id, amount_usd, period_start, created_at)
    SELECT * FROM unnest($11::uuid[], $12::text[], $13::uuid[], $14::numeric[], $15::date[],
                         $16::timestamptz[])
"""

# A reservation is charged its prompt's cost only if it was made in the budget period its
# account is in now (as `Ledger._settle_core` does). The final SELECT keeps the budgets
# charged now whose spending has reached their warning share in a period not yet warned:
# the account's own limits row, or for a user without one, the server's default.
SETTLE = """
    WITH taken AS (
        DELETE FROM reservations WHERE prompt_id = ANY($1::uuid[])
        RETURNING prompt_id, scope, subject_id, amount_usd, period_start
    ),
    costs AS (
        SELECT a.prompt_id, sum(a.cost_usd) AS cost FROM prompt_attempts AS a
        WHERE a.prompt_id IN (SELECT prompt_id FROM taken) AND a.cost_usd IS NOT NULL
        GROUP BY a.prompt_id
    ),
    locked AS (
        SELECT u.scope, u.subject_id, u.period_start FROM limit_usage AS u
        WHERE (u.scope, u.subject_id) IN (SELECT scope, subject_id FROM taken)
        ORDER BY u.scope, u.subject_id
        FOR UPDATE
    ),
    back AS (
        SELECT t.scope, t.subject_id, count(*) AS n, sum(t.amount_usd) AS amount,
            coalesce(sum(c.cost) FILTER (WHERE t.period_start = l.period_start), 0) AS cost,
            coalesce(bool_or(t.period_start = l.period_start), false) AS charged
        FROM taken AS t
        JOIN locked AS l ON l.scope = t.scope AND l.subject_id = t.subject_id
        LEFT JOIN costs AS c ON c.prompt_id = t.prompt_id
        GROUP BY t.scope, t.subject_id
    ),
    settled AS (
        UPDATE limit_usage AS u
        SET in_flight = greatest(0, u.in_flight - b.n),
            reserved_usd = greatest(0, u.reserved_usd - b.amount),
            spent_usd = u.spent_usd + b.cost
        FROM back AS b
        WHERE u.scope = b.scope AND u.subject_id = b.subject_id
        RETURNING u.scope, u.subject_id, u.spent_usd, u.period_start, u.warned_period, b.charged
    )
    SELECT s.scope, s.subject_id FROM settled AS s
    LEFT JOIN limits AS own ON own.scope = s.scope AND own.subject_id = s.subject_id
    LEFT JOIN limits AS d ON s.scope = 'user' AND own.scope IS NULL AND d.scope = 'default'
    WHERE s.charged AND s.period_start IS NOT NULL
        AND s.warned_period IS DISTINCT FROM s.period_start
        AND s.spent_usd >= coalesce(own.budget_usd, d.budget_usd)
            * coalesce(own.warn_at, d.warn_at)::numeric
"""


async def lock(fetch: Fetch, keys: Sequence[tuple[str, uuid.UUID]]) -> list[Any]:
    """The usage rows of these accounts (`_USAGE_COLUMNS`), created if missing, locked."""
    return await fetch(LOCK, [k[0] for k in keys], [k[1] for k in keys])


async def write(
    fetch: Fetch, rows: Sequence[dict[str, Any]], reservations: Sequence[dict[str, Any]]
) -> None:
    """Usage rows back (dicts as `ledger._written` makes them) and new reservations."""
    names = (
        "b_scope", "b_subject", "b_window_start", "b_window_requests", "b_window_tokens",
        "b_in_flight", "b_period_start", "b_reserved", "b_spent", "b_warned",
    )  # fmt: skip
    held = ("prompt_id", "scope", "subject_id", "amount_usd", "period_start", "created_at")
    await fetch(
        WRITE,
        *([row[name] for row in rows] for name in names),
        *([row[name] for row in reservations] for name in held),
    )


async def settle(fetch: Fetch, prompt_ids: Sequence[uuid.UUID]) -> list[tuple[str, uuid.UUID]]:
    """Settle these prompts; the budgets that may have just passed their warning share."""
    return [(row[0], row[1]) for row in await fetch(SETTLE, list(prompt_ids))]
