"""How the recorder's batches are written: the rows, the statements, and the transaction.

`Recorder` queues its hottest writes (new prompts, claims, outcomes) on group commit
(`app/kit/group_commit.py`), which hands a batch at a time to `BatchWrites`. Every database
gets the Core statements below (no ORM unit of work: docs/architecture.md, "The hot path");
on PostgreSQL, a batch of new prompts and a batch of outcomes are each one statement over
arrays (`pg_batches.py`), run without BEGIN and COMMIT since a single statement is atomic
and durable on its own, straight on asyncpg (`db/dedicated.py`).

The records a runner hands over (`Claim`, `AttemptRecord`, `ResponseRecord`) are defined in
`records.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.base import utcnow
from app.db.dedicated import DedicatedConnection
from app.db.models import NewPrompt, PromptAttempt, PromptRequest, PromptResponse, PromptStatus
from app.engine.pg_batches import PromptBatches
from app.engine.records import AttemptRecord, Claim, ResponseRecord
from app.engine.usage_rollups import roll_up

_REQUESTS: Table = PromptRequest.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = PromptAttempt.__table__  # type: ignore[assignment]
_RESPONSES: Table = PromptResponse.__table__  # type: ignore[assignment]


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (AttemptRecord, ResponseRecord)}


def _values(record: AttemptRecord | ResponseRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _FIELDS[type(record)]}


def attempt_row(claim: Claim, attempt: AttemptRecord) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "prompt_id": claim.prompt_id, **_values(attempt)}


def response_row(outcome: OutcomeWrite, now: datetime) -> dict[str, Any]:
    assert outcome.response is not None
    return {
        "id": uuid.uuid4(),
        "prompt_id": outcome.claim.prompt_id,
        "created_at": now,
        **_values(outcome.response),
    }


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    prompt_id: uuid.UUID
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class OutcomeWrite:
    """A provider call's attempt row and/or the prompt's final status, written together."""

    claim: Claim
    attempt: AttemptRecord | None
    status: PromptStatus | None = None  # None: record the attempt, leave the status alone
    response: ResponseRecord | None = None
    error_code: str | None = None
    error_message: str | None = None


# Statements built once: with parameters bound per call, SQLAlchemy compiles each only once.
_CLAIM_MANY = (
    update(_REQUESTS)
    .where(
        _REQUESTS.c.id.in_(bindparam("b_ids", expanding=True)),
        _REQUESTS.c.status == PromptStatus.PENDING,
    )
    .values(
        status=PromptStatus.RUNNING,
        executions=_REQUESTS.c.executions + 1,
        started_at=bindparam("b_now"),
        lease_expires_at=bindparam("b_lease"),
    )
    .returning(
        _REQUESTS.c.id,
        _REQUESTS.c.executions,
        _REQUESTS.c.model,
        _REQUESTS.c.provider,
        _REQUESTS.c.upstream_model,
        _REQUESTS.c.prompt_text,
        _REQUESTS.c.parameters,
        _REQUESTS.c.limited,
    )
)
_FINISH_HELD = (
    update(_REQUESTS)
    .where(
        _REQUESTS.c.id == bindparam("b_id"),
        _REQUESTS.c.status == PromptStatus.RUNNING,
        _REQUESTS.c.executions == bindparam("b_fence"),
    )
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_now"),
        lease_expires_at=None,
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
    )
)
INSERT_ATTEMPTS = insert(_ATTEMPTS)
INSERT_PROMPT = insert(_REQUESTS)
# (attribute, column) of each mapped column: `meta` is stored as `metadata`.
_PROMPT_COLUMNS = [(a.key, a.columns[0]) for a in sa_inspect(PromptRequest).column_attrs]


def prompt_row(prompt: NewPrompt) -> dict[str, Any]:
    """A value for every column, by column name; one left None gets its column's default."""
    values = vars(prompt)
    row: dict[str, Any] = {}
    for attribute, column in _PROMPT_COLUMNS:
        value = values.get(attribute)
        if value is None and (default := column.default) is not None:
            value = default.arg(None) if default.is_callable else default.arg
        row[column.key] = value
    return row


_INSERT_RESPONSES = insert(_RESPONSES)
# PostgreSQL: each batch of new prompts, and of outcomes, in one statement.
_PG_BATCHES = PromptBatches(_REQUESTS, _ATTEMPTS, _RESPONSES)


class BatchWrites:
    """Writes one batch in one transaction (one statement on PostgreSQL where it can)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # PostgreSQL: one statement per batch, each writer on a connection of its own (its
        # batches go one after the other: group commit flushes one at a time).
        self._prompt_writer: DedicatedConnection | None = None
        self._outcome_writer: DedicatedConnection | None = None
        if engine.dialect.name == "postgresql":
            self._prompt_writer = DedicatedConnection(engine)
            self._outcome_writer = DedicatedConnection(engine)

    async def aclose(self) -> None:
        for writer in (self._prompt_writer, self._outcome_writer):
            if writer is not None:
                await writer.aclose()

    async def insert_prompts(self, rows: Sequence[dict[str, Any]]) -> list[None]:
        """New prompts (`prompt_row`s)."""
        if self._prompt_writer is not None:
            await _PG_BATCHES.insert_prompts(self._prompt_writer, rows)
        else:
            async with self._engine.begin() as connection:
                await connection.execute(INSERT_PROMPT, rows)
        return [None] * len(rows)

    async def claim(self, requests: Sequence[ClaimRequest]) -> dict[uuid.UUID, Claim]:
        """`pending → running` for those still pending: their claims, by prompt id."""
        now = utcnow()
        claims: dict[uuid.UUID, Claim] = {}
        async with self._engine.begin() as connection:
            for lease_seconds in {r.lease_seconds for r in requests}:
                rows = await connection.execute(
                    _CLAIM_MANY,
                    {
                        "b_ids": list(
                            {r.prompt_id for r in requests if r.lease_seconds == lease_seconds}
                        ),
                        "b_now": now,
                        "b_lease": now + timedelta(seconds=lease_seconds),
                    },
                )
                for prompt_id, *rest in rows:
                    claims[prompt_id] = Claim(prompt_id, *rest)
        return claims

    async def outcomes(self, outcomes: Sequence[OutcomeWrite]) -> list[bool]:
        """Every attempt row, then each status change fenced on its claim, then the responses
        of the prompts whose claim held, and all of it in the daily usage rollups
        (usage_rollups.py); for each outcome, whether its status change held."""
        now = utcnow()
        attempts = [attempt_row(o.claim, o.attempt) for o in outcomes if o.attempt is not None]
        if self._outcome_writer is not None:
            return await _outcomes_pg(self._outcome_writer, outcomes, attempts, now)
        async with self._engine.begin() as connection:
            return await _outcomes_core(connection, outcomes, attempts, now)


async def _outcomes_pg(
    connection: DedicatedConnection,
    outcomes: Sequence[OutcomeWrite],
    attempts: list[dict[str, Any]],
    now: datetime,
) -> list[bool]:
    finishing = [o for o in outcomes if o.status is not None]
    held = await _PG_BATCHES.write_outcomes(
        connection,
        now=now,
        attempts=attempts,
        finishing=[
            (
                o.claim.prompt_id,
                o.claim.fence,
                str(o.status),
                o.error_code,
                o.error_message,
                o.response.duration_ms if o.response is not None else None,
            )
            for o in finishing
        ],
        responses=[response_row(o, now) for o in finishing if o.response is not None],
    )
    won = []
    for outcome in outcomes:  # (one prompt finished twice in a batch: the first one won)
        won.append(outcome.status is not None and outcome.claim.prompt_id in held)
        if won[-1]:
            held.discard(outcome.claim.prompt_id)
    return won


async def _outcomes_core(
    connection: AsyncConnection,
    outcomes: Sequence[OutcomeWrite],
    attempts: list[dict[str, Any]],
    now: datetime,
) -> list[bool]:
    if attempts:
        await connection.execute(INSERT_ATTEMPTS, attempts)
    won: list[bool] = []
    for outcome in outcomes:
        if outcome.status is None:
            won.append(False)
            continue
        result = await connection.execute(
            _FINISH_HELD,
            {
                "b_id": outcome.claim.prompt_id,
                "b_fence": outcome.claim.fence,
                "b_status": outcome.status,
                "b_now": now,
                "b_code": outcome.error_code,
                "b_message": outcome.error_message,
            },
        )
        won.append(bool(result.rowcount))
    responses = [
        response_row(outcome, now)
        for outcome, held in zip(outcomes, won, strict=True)
        if held and outcome.response is not None
    ]
    if responses:
        await connection.execute(_INSERT_RESPONSES, responses)
    # The daily usage rollups, read back from the rows just written (PostgreSQL folds them
    # into its one statement instead: pg_batches.py).
    await roll_up(
        connection,
        attempt_ids=[row["id"] for row in attempts],
        prompt_ids=[o.claim.prompt_id for o, held in zip(outcomes, won, strict=True) if held],
    )
    return won
