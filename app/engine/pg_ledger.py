"""PostgreSQL: the limits ledger's statements (app/engine/ledger.py), straight to asyncpg.

Through SQLAlchemy (as SQLite still runs it), an admission batch is a transaction of an
upsert per account, a write-back and an insert, and a settlement one of four or five
statements; the execution around each statement cost more than the statement (the same
finding as `pg_batches.py`). Here, on connections of the ledger's own (`db/dedicated.py`):

- an admission batch in which every admission fits (the common case) is one statement,
  `ADMIT_ALL`, committed on its own; any other (one would be refused, an account is new) is
  a transaction of two: `LOCK` (the accounts' usage rows, created if missing, locked in key
  order and returned), then, once the batch is decided in Python, `WRITE` (the rows written
  back and the reservations inserted, in one statement);
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
from datetime import datetime
from typing import Any

from app.db.dedicated import Fetch

_USAGE_COLUMNS = (
    "scope, subject_id, window_start, window_requests, window_tokens, in_flight, "
    "period_start, reserved_usd, spent_usd, warned_period"
)

# The common case in one statement: every admission of the batch fits. The accounts' rows
# (which must all exist) are locked in key order; each admission's charges are added up in
# the batch's order, per account (a window); if every running total is within its limits,
# all are written and the reservations inserted, else nothing is, and the batch goes the
# exact way (`LOCK`, a decision in Python, `WRITE`). Either way, what comes back is each
# (admission, account)'s standing after it, and whether it was all written (`ok`).
# $1: the current minute; accounts: scope, subject, rpm, tpm, most in flight, budget, the
# current period of its budget (null: none); charges: the admission's number in the batch,
# its account, tokens, cost (0 unless a budget), place in flight (0 or 1); then the
# reservations as `WRITE` takes them.
ADMIT_ALL = """
    WITH acc AS (
        SELECT * FROM unnest($2::text[], $3::uuid[], $4::integer[], $5::bigint[],
                             $6::integer[], $7::numeric[], $8::date[])
            AS a(scope, subject_id, rpm, tpm, most, budget, period)
    ),
    chg AS (
        SELECT * FROM unnest($9::integer[], $10::text[], $11::uuid[], $12::bigint[],
                             $13::numeric[], $14::integer[])
            AS c(i, scope, subject_id, tokens, cost, slot)
    ),
    locked AS (
        SELECT u.scope, u.subject_id, u.window_start, u.window_requests, u.window_tokens,
            u.in_flight, u.period_start, u.reserved_usd, u.spent_usd
        FROM limit_usage AS u
        WHERE (u.scope, u.subject_id) IN (SELECT scope, subject_id FROM acc)
        ORDER BY u.scope, u.subject_id
        FOR UPDATE
    ),
    base AS (
        SELECT l.scope, l.subject_id, a.rpm, a.tpm, a.most, a.budget,
            CASE WHEN l.window_start = $1 THEN l.window_requests ELSE 0 END AS requests,
            CASE WHEN l.window_start = $1 THEN l.window_tokens ELSE 0 END AS tokens,
            l.in_flight, l.reserved_usd,
            CASE WHEN a.period IS NULL OR l.period_start = a.period THEN l.spent_usd
                ELSE 0 END AS spent,
            coalesce(a.period, l.period_start) AS period_start
        FROM locked AS l JOIN acc AS a ON a.scope = l.scope AND a.subject_id = l.subject_id
    ),
    run AS (
        SELECT c.i, b.scope, b.subject_id, b.rpm, b.tpm, b.most, b.budget, b.spent,
            b.period_start,
            b.requests + count(*) OVER w AS requests,
            b.tokens + sum(c.tokens) OVER w AS tokens,
            b.in_flight + sum(c.slot) OVER w AS in_flight,
            b.reserved_usd + sum(c.cost) OVER w AS reserved
        FROM chg AS c JOIN base AS b ON b.scope = c.scope AND b.subject_id = c.subject_id
        WINDOW w AS (PARTITION BY c.scope, c.subject_id ORDER BY c.i)
    ),
    verdict AS (
        SELECT (SELECT count(*) FROM base) = (SELECT count(*) FROM acc)
            AND coalesce(bool_and(
                (rpm IS NULL OR requests <= rpm) AND (tpm IS NULL OR tokens <= tpm)
                AND (most IS NULL OR in_flight <= most)
                AND (budget IS NULL OR spent + reserved <= budget)), true) AS ok
        FROM run
    ),
    totals AS (
        SELECT scope, subject_id, max(requests) AS requests, max(tokens) AS tokens,
            max(in_flight) AS in_flight, max(reserved) AS reserved,
            max(spent) AS spent, max(period_start) AS period_start
        FROM run GROUP BY scope, subject_id
    ),
    written AS (
        UPDATE limit_usage AS u
        SET window_start = $1, window_requests = t.requests, window_tokens = t.tokens,
            in_flight = t.in_flight, reserved_usd = t.reserved, spent_usd = t.spent,
            period_start = t.period_start
        FROM totals AS t
        WHERE (SELECT ok FROM verdict) AND u.scope = t.scope AND u.subject_id = t.subject_id
    ),
    held AS (
        INSERT INTO reservations (prompt_id, scope, subject_id, amount_usd, period_start,
            created_at)
        SELECT * FROM unnest($15::uuid[], $16::text[], $17::uuid[], $18::numeric[],
                             $19::date[], $20::timestamptz[])
        WHERE (SELECT ok FROM verdict)
    )
    SELECT r.i, r.scope, r.subject_id, r.requests, r.tokens, r.in_flight, r.reserved,
        r.spent, (SELECT ok FROM verdict) AS ok
    FROM run AS r
"""

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


async def admit_all(
    fetch: Fetch,
    minute: datetime,
    accounts: Sequence[tuple[object, ...]],
    charges: Sequence[tuple[object, ...]],
    reservations: Sequence[dict[str, Any]],
) -> list[Any]:
    """`ADMIT_ALL`: `accounts` as (scope, subject, rpm, tpm, most, budget, period), `charges`
    as (number, scope, subject, tokens, cost, slot)."""
    held = ("prompt_id", "scope", "subject_id", "amount_usd", "period_start", "created_at")
    return await fetch(
        ADMIT_ALL,
        minute,
        *([row[k] for row in accounts] for k in range(7)),
        *([row[k] for row in charges] for k in range(6)),
        *([row[name] for row in reservations] for name in held),
    )


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
