"""PostgreSQL: a group commit's batch written in one statement.

The recorder's two hottest writes (new prompts, and outcomes: attempts + status changes +
responses) take a batch of rows at a time (app/kit/group_commit.py). Written through SQLAlchemy Core
as executemany plus one statement per status change, they were over 40 % of a /v1 request's
CPU at 16 clients (py-spy under `bench/gateways.py`): per-row parameter processing, and a
round trip per statement. Here each batch is a single statement over arrays (`unnest`), one
parameter per column whatever the batch size, and the outcome's three tables are written by
one statement with data-modifying CTEs, which PostgreSQL runs on one snapshot: the responses
go in only for the prompts whose status change matched its claim, as before. The same
statement adds the batch to the daily usage rollups (`usage_rollups.py`), from its own
inputs and from what its status change returns: the CTEs share a snapshot, so none of them
can read back the rows another one writes.

The statements go straight to asyncpg, on a connection of the writer's own
(`db/dedicated.py`), since SQLAlchemy's execution around each cost more than the statement.

SQLite keeps the Core statements (batch_writes.py); the same tests hold both to the same results.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import count
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from app.db.dedicated import DedicatedConnection
from app.engine.usage_rollups import upsert_sql, utc_day

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _rows(columns: Sequence[tuple[str, str]], numbers: Iterator[int], *, one: bool) -> str:
    """The rows to write, one parameter per column (name, PostgreSQL type): `unnest($n::type[],
    …)` over arrays, or for a single row `(VALUES ($n::type, …))`, which PostgreSQL plans and
    the driver encodes faster (bench/results/design.md; most batches hold one row below a few
    hundred requests per second)."""
    if one:
        return "(VALUES (" + ", ".join(f"${next(numbers)}::{t}" for _, t in columns) + "))"
    return "unnest(" + ", ".join(f"${next(numbers)}::{t}[]" for _, t in columns) + ")"


def _columns(table: Table) -> list[tuple[str, str]]:
    """(name, array element type) of each column, in the table's order. jsonb travels as text
    (the driver's codec wants it serialized) and is cast back in the statement."""
    types = []
    for column in table.columns:
        kind = column.type.compile(dialect=_PG).lower()
        if kind.startswith(("varchar", "character varying")):
            kind = "text"
        elif kind.startswith("numeric"):
            kind = "numeric"
        elif kind == "timestamp with time zone":
            kind = "timestamptz"
        types.append((column.name, "text" if kind == "jsonb" else kind))
    return types


def _select(columns: Sequence[tuple[str, str]], jsonb: set[str], alias: str) -> str:
    return ", ".join(f"{alias}.{c}::jsonb" if c in jsonb else f"{alias}.{c}" for c, _ in columns)


def _jsonb_columns(table: Table) -> set[str]:
    return {c.name for c in table.columns if c.type.compile(dialect=_PG).lower() == "jsonb"}


def _parameters(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    jsonb: set[str],
    *,
    one: bool,
) -> list[Any]:
    """The statement's parameters for `rows` (dicts by column name), in `columns` order. JSON
    values go as text, encoded by pydantic-core (several times faster than `json.dumps`)."""
    arrays = [
        [
            to_json(row[name]).decode() if name in jsonb and row[name] is not None else row[name]
            for row in rows
        ]
        for name, _ in columns
    ]
    return _shaped(arrays, one=one)


def _shaped(arrays: list[list[Any]], *, one: bool) -> list[Any]:
    """One array per column; with `one`, the single row's values instead (all None when there
    is no row: the statement then writes none)."""
    if one:
        return [values[0] if values else None for values in arrays]
    return arrays


_CHANGE_COLUMNS = [
    ("id", "uuid"), ("fence", "integer"), ("status", "text"), ("code", "text"), ("message", "text"),
    ("duration_ms", "integer"),  # the response's: its usage rollup row is its duration bucket
]  # fmt: skip


class PromptBatches:
    """The statements for the prompt tables, built once from their definitions."""

    def __init__(self, requests: Table, attempts: Table, responses: Table) -> None:
        self._prompt_columns = _columns(requests)
        self._prompt_jsonb = _jsonb_columns(requests)
        self._attempt_columns = _columns(attempts)
        self._response_columns = _columns(responses)
        self._response_jsonb = _jsonb_columns(responses)
        # The SQL is made of the tables' own names, never of a value (values are parameters).
        # Each statement in two forms: over arrays (a batch), and over one row's values.
        self._insert_prompts = {one: self._insert_sql(requests, one=one) for one in (False, True)}
        self._write_outcomes = {
            one: self._outcomes_sql(requests, attempts, responses, one=one) for one in (False, True)
        }

    def _insert_sql(self, requests: Table, *, one: bool) -> str:
        names = ", ".join(c for c, _ in self._prompt_columns)
        return (
            f"INSERT INTO {requests.name} ({names}) "  # noqa: S608
            f"SELECT {_select(self._prompt_columns, self._prompt_jsonb, 'v')} "
            f"FROM {_rows(self._prompt_columns, count(1), one=one)} AS v({names})"
        )

    def _outcomes_sql(
        self, requests: Table, attempts: Table, responses: Table, *, one: bool
    ) -> str:
        # Parameters: $1 the time, then the attempts' columns, the responses', the changes'.
        # A missing row (all NULL, `one` form) matches nothing and is never inserted.
        numbers = count(2)
        attempt_names = ", ".join(c for c, _ in self._attempt_columns)
        attempt_rows = _rows(self._attempt_columns, numbers, one=one)
        response_names = ", ".join(c for c, _ in self._response_columns)
        response_rows = _rows(self._response_columns, numbers, one=one)
        changes = _rows(_CHANGE_COLUMNS, numbers, one=one)
        # The rollups: the attempts from the statement's own input (joined to their prompt,
        # whose key columns never change), the final statuses from what `finished` returns.
        usage = upsert_sql(
            "postgresql",
            attempts=f"{attempt_rows} AS a({attempt_names}) "
            f"JOIN {requests.name} AS p ON p.id = a.prompt_id WHERE a.id IS NOT NULL",
            prompts="finished AS p",
            finished_day=utc_day("postgresql", "$1::timestamptz"),
            status="p.status",
            duration="p.duration_ms",
        )
        return f"""
            WITH attempt_rows AS (
                INSERT INTO {attempts.name} ({attempt_names})
                SELECT a.* FROM {attempt_rows} AS a({attempt_names})
                WHERE a.id IS NOT NULL
            ),
            finished AS (
                UPDATE {requests.name} AS p
                SET status = v.status, finished_at = $1, lease_expires_at = NULL,
                    error_code = v.code, error_message = v.message
                FROM {changes} AS v(id, fence, status, code, message, duration_ms)
                WHERE p.id = v.id AND p.status = 'running' AND p.executions = v.fence
                RETURNING p.id, p.model, p.provider, p.user_id, p.team_id, p.api_key_id,
                    v.status, v.duration_ms
            ),
            response_rows AS (
                INSERT INTO {responses.name} ({response_names})
                SELECT {_select(self._response_columns, self._response_jsonb, "r")}
                FROM {response_rows} AS r({response_names})
                WHERE r.prompt_id IN (SELECT id FROM finished)
            ),
            usage AS ({usage})
            SELECT id FROM finished
            """  # noqa: S608

    async def insert_prompts(
        self, connection: DedicatedConnection, rows: Sequence[dict[str, Any]]
    ) -> None:
        """New prompts, each row with a value (or None) for every column."""
        one = len(rows) == 1
        await connection.fetch(
            self._insert_prompts[one],
            *_parameters(rows, self._prompt_columns, self._prompt_jsonb, one=one),
        )

    async def write_outcomes(
        self,
        connection: DedicatedConnection,
        *,
        now: datetime,
        attempts: Sequence[dict[str, Any]],
        finishing: Sequence[tuple[uuid.UUID, int, str, str | None, str | None, int | None]],
        responses: Sequence[dict[str, Any]],
    ) -> set[uuid.UUID]:
        """Attempt rows; `finishing` = (prompt id, fence, status, error code, error message,
        the response's duration_ms) status changes, each fenced on its claim; then the
        `responses` of the prompts whose change matched; and all of it in the usage rollups.
        Returns those prompts' ids."""
        one = max(len(attempts), len(finishing), len(responses)) == 1
        changes = [[change[i] for change in finishing] for i in range(len(_CHANGE_COLUMNS))]
        rows = await connection.fetch(
            self._write_outcomes[one],
            now,
            *_parameters(attempts, self._attempt_columns, set(), one=one),
            *_parameters(responses, self._response_columns, self._response_jsonb, one=one),
            *_shaped(changes, one=one),
        )
        return {row[0] for row in rows}
