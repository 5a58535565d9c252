"""Every write to the prompt records goes through here (ARCHITECTURE §5).

Each method is one short transaction that is committed before it returns, so a caller never
acts (answers a client, dispatches, calls a provider) on something that is not yet durable.
Status changes are conditional updates, which makes duplicate deliveries and lost races
harmless: whoever does not match the expected state simply changes nothing.

Cancellation: a pending prompt is cancelled at once; a running one gets `cancel_requested_at`,
and whichever process holds it stops it (see EmbeddedRunner). From then on, every path that
would hand the prompt back to `pending` (shutdown, expired lease) ends it `cancelled` instead.
A prompt that finishes before its runner stops it keeps that outcome: `finish` and
`finish_cancelled` are both fenced on the claim, so exactly one of them wins.

The two writes every execution makes, the claim and the outcome (with its attempt rows), go
through group commit (`group_commit.py`): each caller still returns only once its rows are
committed, but a busy worker writes hundreds of them per transaction, in a few statements on
the table directly rather than through the ORM (ARCHITECTURE §5).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, func, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.base import utcnow
from app.db.database import create_session_factory
from app.models import PromptAttempt, PromptRequest, PromptResponse, PromptStatus
from app.prompts.events import EventBus, LocalBus, PromptEvent
from app.prompts.group_commit import GroupCommit
from app.prompts.idempotency import IdempotencyRecord, insert_key, purge_expired_keys
from app.prompts.pg_batches import PromptBatches

_P = PromptRequest
_REQUESTS: Table = PromptRequest.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = PromptAttempt.__table__  # type: ignore[assignment]
_RESPONSES: Table = PromptResponse.__table__  # type: ignore[assignment]
_CANCEL_REQUESTED = _P.cancel_requested_at.is_not(None)
LOST_MESSAGE = (
    "Its runner stopped (killed, or cut off from the database) before recording what this "
    "execution did; a provider call may have been made, and billed."
)
FINAL_STATUSES = frozenset({PromptStatus.COMPLETED, PromptStatus.FAILED, PromptStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Claim:
    """What a runner needs to execute a prompt it has claimed. `fence` is the execution
    number: only the holder of the current one may finish the prompt."""

    prompt_id: uuid.UUID
    fence: int
    model: str
    provider: str
    upstream_model: str
    prompt_text: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    provider: str
    model: str
    started_at: datetime
    ended_at: datetime
    outcome: str
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    usage_estimated: bool = False
    cost_usd: Decimal | None = None
    catalogue_version: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    response_text: str
    duration_ms: int
    provider: str
    upstream_model: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    cost_usd: Decimal
    finish_reason: str | None
    catalogue_version: str | None
    # Streamed answers only: from the start of the call that answered to its first text.
    time_to_first_token_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `recover_expired` did with the prompts whose runner was lost."""

    requeued: list[uuid.UUID]
    failed: int
    cancelled: int


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (AttemptRecord, ResponseRecord)}


def _values(record: AttemptRecord | ResponseRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _FIELDS[type(record)]}


def _attempt_row(claim: Claim, attempt: AttemptRecord) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "prompt_id": claim.prompt_id, **_values(attempt)}


def _response_row(outcome: _Outcome, now: datetime) -> dict[str, Any]:
    assert outcome.response is not None
    return {
        "id": uuid.uuid4(),
        "prompt_id": outcome.claim.prompt_id,
        "created_at": now,
        **_values(outcome.response),
    }


def _held_by(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """The prompt is still running under this claim (the fence is the execution number)."""
    return (
        _P.id == claim.prompt_id,
        _P.status == PromptStatus.RUNNING,
        _P.attempts == claim.fence,
    )


@dataclass(frozen=True, slots=True)
class _ClaimRequest:
    prompt_id: uuid.UUID
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class _Outcome:
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
        attempts=_REQUESTS.c.attempts + 1,
        started_at=bindparam("b_now"),
        lease_expires_at=bindparam("b_lease"),
    )
    .returning(
        _REQUESTS.c.id,
        _REQUESTS.c.attempts,
        _REQUESTS.c.model,
        _REQUESTS.c.provider,
        _REQUESTS.c.upstream_model,
        _REQUESTS.c.prompt_text,
        _REQUESTS.c.parameters,
    )
)
_FINISH_HELD = (
    update(_REQUESTS)
    .where(
        _REQUESTS.c.id == bindparam("b_id"),
        _REQUESTS.c.status == PromptStatus.RUNNING,
        _REQUESTS.c.attempts == bindparam("b_fence"),
    )
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_now"),
        lease_expires_at=None,
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
    )
)
_INSERT_ATTEMPTS = insert(_ATTEMPTS)
_INSERT_PROMPT = insert(_REQUESTS)
# (attribute, column) of each mapped column: `meta` is stored as `metadata`.
_PROMPT_COLUMNS = [(a.key, a.columns[0]) for a in sa_inspect(PromptRequest).column_attrs]


def _prompt_row(prompt: PromptRequest) -> dict[str, Any]:
    """A value for every column; one left unset gets its column's default, as the ORM would
    give it."""
    row: dict[str, Any] = {}
    for attribute, column in _PROMPT_COLUMNS:
        value = getattr(prompt, attribute)
        if value is None and (default := column.default) is not None:
            value = default.arg(None) if default.is_callable else default.arg
        row[column.key] = value
    return row


_INSERT_RESPONSES = insert(_RESPONSES)
# PostgreSQL: each batch of new prompts, and of outcomes, in one statement.
_PG_BATCHES = PromptBatches(_REQUESTS, _ATTEMPTS, _RESPONSES)


class Recorder:
    def __init__(self, engine: AsyncEngine, *, bus: EventBus | None = None) -> None:
        self._engine = engine
        self._bus: EventBus = bus if bus is not None else LocalBus()
        self._sessions = create_session_factory(engine)
        self._claims = GroupCommit(self._claim_many, orphaned=self._release_orphan)
        self._outcomes = GroupCommit(self._write_outcomes)
        self._inserts = GroupCommit(self._insert_many)
        # PostgreSQL: a batch is one statement (pg_batches.py), atomic and durable on its own,
        # so it runs without BEGIN and COMMIT (two round trips fewer per batch).
        self._single_statements: AsyncEngine | None = None
        if engine.dialect.name == "postgresql":
            self._single_statements = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def aclose(self) -> None:
        """Wait for the writes already queued (before the engine is disposed)."""
        await self._inserts.aclose()
        await self._claims.aclose()
        await self._outcomes.aclose()

    async def create_prompt(
        self, prompt: PromptRequest, *, idempotency: IdempotencyRecord | None = None
    ) -> None:
        """Insert the prompt and, with `idempotency`, its key row in the same transaction
        (an IntegrityError then means the key was taken meanwhile: see idempotency.py).
        A Core insert of the row's values: the ORM's unit of work cost a fifth of a /v1
        request's CPU (py-spy, `bench/gateways.py`)."""
        if idempotency is None:
            await self._inserts.submit(_prompt_row(prompt))
            return
        async with self._engine.begin() as connection:
            await connection.execute(_INSERT_PROMPT, _prompt_row(prompt))
            await insert_key(connection, idempotency, prompt_id=prompt.id)

    async def _insert_many(self, rows: Sequence[dict[str, Any]]) -> list[None]:
        """One transaction for a batch of new prompts."""
        if self._single_statements is not None:
            async with self._single_statements.connect() as connection:
                await _PG_BATCHES.insert_prompts(connection, rows)
        else:
            async with self._engine.begin() as connection:
                await connection.execute(_INSERT_PROMPT, rows)
        return [None] * len(rows)

    async def create_claimed(
        self,
        prompt: PromptRequest,
        *,
        lease_seconds: float,
        idempotency: IdempotencyRecord | None = None,
    ) -> Claim:
        """Insert a prompt that this process runs at once (a /v1 call its client waits for):
        stored already `running` under a first claim, in one transaction instead of an insert
        and then a claim. Nothing else can have seen it pending, so the result is the same.

        Its `running` is not published: nobody can be waiting for a prompt whose id this
        server has only just made up (a follower reads the state once it has subscribed)."""
        now = utcnow()
        prompt.status = PromptStatus.RUNNING
        prompt.attempts = 1
        prompt.started_at = now
        prompt.lease_expires_at = now + timedelta(seconds=lease_seconds)
        await self.create_prompt(prompt, idempotency=idempotency)
        return Claim(
            prompt.id,
            1,
            prompt.model,
            prompt.provider,
            prompt.upstream_model,
            prompt.prompt_text,
            prompt.parameters,
        )

    async def purge_idempotency_keys(self) -> int:
        """Delete a bounded batch of expired idempotency keys (the sweeper's pass)."""
        async with self._sessions() as session, session.begin():
            return await purge_expired_keys(session)

    async def claim(self, prompt_id: uuid.UUID, *, lease_seconds: float) -> Claim | None:
        """`pending → running` with a lease; None if someone else has it or it is finished."""
        return await self._claims.submit(_ClaimRequest(prompt_id, lease_seconds))

    async def _claim_many(self, requests: Sequence[_ClaimRequest]) -> list[Claim | None]:
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
        await self._published(claims, PromptStatus.RUNNING)
        # The same prompt asked for twice in one batch (a duplicate delivery): one claim.
        return [claims.pop(r.prompt_id, None) for r in requests]

    async def _published(self, prompt_ids: Iterable[uuid.UUID], status: str) -> None:
        """Tell waiters (Prefer: wait, /events) of status changes that are now committed."""
        await self._bus.publish([PromptEvent(i, "status", status=status) for i in prompt_ids])

    async def _release_orphan(self, claim: Claim | None) -> None:
        if claim is not None:
            await self.release([claim])

    async def _write_outcomes(self, outcomes: Sequence[_Outcome]) -> list[bool]:
        """One transaction: every attempt row, then each status change fenced on its claim,
        then the responses of the prompts whose claim held."""
        now = utcnow()
        attempts = [_attempt_row(o.claim, o.attempt) for o in outcomes if o.attempt is not None]
        if self._single_statements is not None:
            async with self._single_statements.connect() as connection:
                won = await self._write_outcomes_pg(connection, outcomes, attempts, now)
        else:
            async with self._engine.begin() as connection:
                won = await self._write_outcomes_core(connection, outcomes, attempts, now)
        await self._bus.publish(
            [
                PromptEvent(o.claim.prompt_id, "status", status=o.status)
                for o, held in zip(outcomes, won, strict=True)
                if held and o.status is not None
            ]
        )
        return won

    @staticmethod
    async def _write_outcomes_pg(
        connection: AsyncConnection,
        outcomes: Sequence[_Outcome],
        attempts: list[dict[str, Any]],
        now: datetime,
    ) -> list[bool]:
        finishing = [o for o in outcomes if o.status is not None]
        held = await _PG_BATCHES.write_outcomes(
            connection,
            now=now,
            attempts=attempts,
            finishing=[
                (o.claim.prompt_id, o.claim.fence, str(o.status), o.error_code, o.error_message)
                for o in finishing
            ],
            responses=[_response_row(o, now) for o in finishing if o.response is not None],
        )
        won = []
        for outcome in outcomes:  # (one prompt finished twice in a batch: the first one won)
            won.append(outcome.status is not None and outcome.claim.prompt_id in held)
            if won[-1]:
                held.discard(outcome.claim.prompt_id)
        return won

    @staticmethod
    async def _write_outcomes_core(
        connection: AsyncConnection,
        outcomes: Sequence[_Outcome],
        attempts: list[dict[str, Any]],
        now: datetime,
    ) -> list[bool]:
        if attempts:
            await connection.execute(_INSERT_ATTEMPTS, attempts)
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
            _response_row(outcome, now)
            for outcome, held in zip(outcomes, won, strict=True)
            if held and outcome.response is not None
        ]
        if responses:
            await connection.execute(_INSERT_RESPONSES, responses)
        return won

    async def renew_leases(self, prompt_ids: list[uuid.UUID], *, lease_seconds: float) -> None:
        """Extend the leases of these running prompts. Rows another transaction holds right
        now (an outcome being written) are skipped, not waited for: they are about to leave
        `running`, and waiting on them while holding other rows' locks is how this and a
        group-commit batch deadlocked (seen under load, `bench/gateways.py`)."""
        if not prompt_ids:
            return
        free = (
            select(_P.id)
            .where(_P.id.in_(prompt_ids), _P.status == PromptStatus.RUNNING)
            .with_for_update(skip_locked=True)
        )
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(_P)
                .where(_P.id.in_(free.scalar_subquery()))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            )

    async def record_attempt(self, claim: Claim, attempt: AttemptRecord) -> None:
        """A provider call that leaves the prompt's status alone (e.g. abandoned at shutdown)."""
        await self._outcomes.submit(_Outcome(claim, attempt))

    async def finish(
        self,
        claim: Claim,
        *,
        attempt: AttemptRecord | None,
        response: ResponseRecord | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Record the provider call and the outcome in one transaction.

        The attempt row is written even when the claim was lost (the call happened and may be
        billed); the status, and the response, only by the holder of the current claim.
        """
        status = PromptStatus.COMPLETED if response is not None else PromptStatus.FAILED
        return await self._outcomes.submit(
            _Outcome(claim, attempt, status, response, error_code, error_message)
        )

    async def finish_cancelled(self, claim: Claim) -> bool:
        """`running → cancelled` for a prompt whose execution its runner stopped on request.
        False if the claim was lost or the prompt finished first."""
        now = utcnow()
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(_P)
                .where(*_held_by(claim))
                .values(
                    status=PromptStatus.CANCELLED,
                    finished_at=now,
                    lease_expires_at=None,
                    cancel_requested_at=func.coalesce(_P.cancel_requested_at, now),
                )
            )
        won = bool(result.rowcount)  # type: ignore[attr-defined]
        if won:
            await self._published([claim.prompt_id], PromptStatus.CANCELLED)
        return won

    async def release(self, claims: list[Claim]) -> None:
        """Hand claims back (`running → pending`) without counting them, e.g. at shutdown, or
        end them `cancelled` if their cancellation was requested. Fenced, so a claim that has
        since passed to another runner is left alone."""
        if not claims:
            return
        now = utcnow()
        cancelled: list[uuid.UUID] = []
        async with self._sessions() as session, session.begin():
            for claim in claims:
                await session.execute(
                    update(_P)
                    .where(*_held_by(claim), _P.cancel_requested_at.is_(None))
                    .values(
                        status=PromptStatus.PENDING,
                        attempts=claim.fence - 1,
                        lease_expires_at=None,
                    )
                )
                ended = await session.execute(
                    update(_P)
                    .where(*_held_by(claim), _CANCEL_REQUESTED)
                    .values(status=PromptStatus.CANCELLED, finished_at=now, lease_expires_at=None)
                    .returning(_P.id)
                )
                cancelled.extend(ended.scalars())
        await self._published(cancelled, PromptStatus.CANCELLED)

    async def recover_expired(self, *, max_attempts: int) -> Recovered:
        """Running prompts whose lease ran out lost their runner: end them `cancelled` if that
        was requested, fail them once they have used `max_attempts` executions, and otherwise
        return them to `pending`.

        Each such execution also gets an attempt row, outcome `lost`: its runner may well have
        called the provider (and been billed) before it died, and the attempt log is where
        calls are accounted for."""
        now = utcnow()
        expired = (_P.status == PromptStatus.RUNNING, _P.lease_expires_at < now)
        lost = (_P.id, _P.provider, _P.upstream_model, _P.started_at)
        async with self._sessions() as session, session.begin():
            cancelled = await session.execute(
                update(_P)
                .where(*expired, _CANCEL_REQUESTED)
                .values(status=PromptStatus.CANCELLED, finished_at=now, lease_expires_at=None)
                .returning(*lost)
            )
            cancelled_rows = cancelled.all()
            failed = await session.execute(
                update(_P)
                .where(*expired, _P.attempts >= max_attempts)
                .values(
                    status=PromptStatus.FAILED,
                    finished_at=now,
                    lease_expires_at=None,
                    error_code="attempts_exhausted",
                    error_message=f"Gave up after {max_attempts} executions: each time, the "
                    "runner executing it stopped before finishing.",
                )
                .returning(*lost)
            )
            failed_rows = failed.all()
            requeued = await session.execute(
                update(_P)
                .where(*expired)
                .values(status=PromptStatus.PENDING, lease_expires_at=None)
                .returning(*lost)
            )
            requeued_rows = requeued.all()
            attempts = [
                {
                    "id": uuid.uuid4(),
                    "prompt_id": prompt_id,
                    "provider": provider,
                    "model": upstream_model,
                    "started_at": started_at or now,
                    "ended_at": now,
                    "outcome": "lost",
                    "error_code": "runner_lost",
                    "error_message": LOST_MESSAGE,
                }
                for prompt_id, provider, upstream_model, started_at in (
                    *cancelled_rows,
                    *failed_rows,
                    *requeued_rows,
                )
            ]
            if attempts:
                await session.execute(_INSERT_ATTEMPTS, attempts)
        await self._published([row[0] for row in cancelled_rows], PromptStatus.CANCELLED)
        await self._published([row[0] for row in failed_rows], PromptStatus.FAILED)
        return Recovered(
            requeued=[row[0] for row in requeued_rows],
            failed=len(failed_rows),
            cancelled=len(cancelled_rows),
        )

    async def due_pending(self, *, created_before: datetime, limit: int) -> list[uuid.UUID]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(_P.id)
                .where(_P.status == PromptStatus.PENDING, _P.created_at <= created_before)
                .order_by(_P.created_at)
                .limit(limit)
            )
            return list(rows)

    async def cancel(self, prompt_id: uuid.UUID, *, user_id: uuid.UUID) -> str | None:
        """Cancel one of the user's prompts: a `pending` one now, a `running` one by requesting
        it of its runner. Returns the status it had: `pending` (now cancelled), `running`
        (cancellation requested), a final status (nothing changed), or None if the user has
        no such prompt (someone else's is as missing as a missing one)."""
        now = utcnow()
        owned = (_P.id == prompt_id, _P.user_id == user_id)
        async with self._sessions() as session, session.begin():
            # Each statement sees the latest committed state; a runner may move the prompt
            # between them (claim it, finish it, hand it back), so look again until one holds.
            while True:
                cancelled = await session.execute(
                    update(_P)
                    .where(*owned, _P.status == PromptStatus.PENDING)
                    .values(status=PromptStatus.CANCELLED, finished_at=now, cancel_requested_at=now)
                    .returning(_P.id)
                )
                if cancelled.first() is not None:
                    status: str | None = PromptStatus.PENDING
                    break
                requested = await session.execute(
                    update(_P)
                    .where(*owned, _P.status == PromptStatus.RUNNING)
                    .values(cancel_requested_at=func.coalesce(_P.cancel_requested_at, now))
                    .returning(_P.id)
                )
                if requested.first() is not None:
                    return PromptStatus.RUNNING
                status = await session.scalar(select(_P.status).where(*owned))
                if status is None or status in FINAL_STATUSES:
                    return status
        await self._published([prompt_id], PromptStatus.CANCELLED)
        return status

    async def cancel_requested(self, prompt_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        """Those of these running prompts whose cancellation was requested."""
        if not prompt_ids:
            return []
        async with self._sessions() as session:
            rows = await session.scalars(
                select(_P.id).where(
                    _P.id.in_(prompt_ids), _P.status == PromptStatus.RUNNING, _CANCEL_REQUESTED
                )
            )
            return list(rows)
