"""PostgreSQL: a group commit's batch written in one statement.

The recorder's two hottest writes (new prompts, and outcomes: attempts + status changes +
responses) take a batch of rows at a time (group_commit.py). Written through SQLAlchemy Core
as executemany plus one statement per status change, they were over 40 % of a /v1 request's
CPU at 16 clients (py-spy under `bench/gateways.py`): per-row parameter processing, and a
round trip per statement. Here each batch is a single statement over arrays (`unnest`), one
parameter per column whatever the batch size, and the outcome's three tables are written by
one statement with data-modifying CTEs, which PostgreSQL runs on one snapshot: the responses
go in only for the prompts whose status change matched its claim, as before.

The statements go straight to asyncpg, on a connection of the writer's own
(`db/dedicated.py`), since SQLAlchemy's execution around each cost more than the statement.

SQLite keeps the Core statements (batch_writes.py); the same tests hold both to the same results.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import count
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from app.db.dedicated import DedicatedConnection

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _unnest(columns: Sequence[tuple[str, str]], numbers: Iterator[int]) -> str:
    """`unnest($n::type[], …)` over `columns` (name, PostgreSQL type), one parameter each."""
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


def _arrays(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], jsonb: set[str]
) -> list[list[Any]]:
    """One array per column, in `columns` order."""
    return [
        [
            json.dumps(row[name]) if name in jsonb and row[name] is not None else row[name]
            for row in rows
        ]
        for name, _ in columns
    ]


class PromptBatches:
    """The statements for the prompt tables, built once from their definitions."""

    def __init__(self, requests: Table, attempts: Table, responses: Table) -> None:
        self._prompt_columns = _columns(requests)
        self._prompt_jsonb = _jsonb_columns(requests)
        self._attempt_columns = _columns(attempts)
        self._response_columns = _columns(responses)
        # The SQL is made of the tables' own names, never of a value (values are parameters).
        names = ", ".join(c for c, _ in self._prompt_columns)
        self._insert_prompts = (
            f"INSERT INTO {requests.name} ({names}) "  # noqa: S608
            f"SELECT {_select(self._prompt_columns, self._prompt_jsonb, 'v')} "
            f"FROM {_unnest(self._prompt_columns, count(1))} AS v({names})"
        )
        # Parameters: $1 the time, then the attempts' arrays, the responses', the changes'.
        numbers = count(2)
        attempt_names = ", ".join(c for c, _ in self._attempt_columns)
        attempt_rows = _unnest(self._attempt_columns, numbers)
        response_names = ", ".join(c for c, _ in self._response_columns)
        response_rows = _unnest(self._response_columns, numbers)
        changes = _unnest(
            [("id", "uuid"), ("fence", "integer"), ("status", "text"), ("code", "text"),
             ("message", "text")],
            numbers,
        )  # fmt: skip
        self._write_outcomes = f"""
            WITH attempt_rows AS (
                INSERT INTO {attempts.name} ({attempt_names})
                SELECT * FROM {attempt_rows}
            ),
            finished AS (
                UPDATE {requests.name} AS p
                SET status = v.status, finished_at = $1, lease_expires_at = NULL,
                    error_code = v.code, error_message = v.message
                FROM {changes} AS v(id, fence, status, code, message)
                WHERE p.id = v.id AND p.status = 'running' AND p.attempts = v.fence
                RETURNING p.id
            ),
            response_rows AS (
                INSERT INTO {responses.name} ({response_names})
                SELECT r.* FROM {response_rows} AS r({response_names})
                WHERE r.prompt_id IN (SELECT id FROM finished)
            )
            SELECT id FROM finished
            """  # noqa: S608

    async def insert_prompts(
        self, connection: DedicatedConnection, rows: Sequence[dict[str, Any]]
    ) -> None:
        """New prompts, each row with a value (or None) for every column."""
        await connection.fetch(
            self._insert_prompts, *_arrays(rows, self._prompt_columns, self._prompt_jsonb)
        )

    async def write_outcomes(
        self,
        connection: DedicatedConnection,
        *,
        now: datetime,
        attempts: Sequence[dict[str, Any]],
        finishing: Sequence[tuple[uuid.UUID, int, str, str | None, str | None]],
        responses: Sequence[dict[str, Any]],
    ) -> set[uuid.UUID]:
        """Attempt rows; `finishing` = (prompt id, fence, status, error code, error message)
        status changes, each fenced on its claim; then the `responses` of the prompts whose
        change matched. Returns those prompts' ids."""
        rows = await connection.fetch(
            self._write_outcomes,
            now,
            *_arrays(attempts, self._attempt_columns, set()),
            *_arrays(responses, self._response_columns, set()),
            *([change[i] for change in finishing] for i in range(5)),
        )
        return {row[0] for row in rows}
