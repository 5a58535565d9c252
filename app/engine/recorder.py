"""Every write to the prompt records goes through here (docs/architecture.md, "The hot path").

Each method is one short transaction that is committed before it returns, so a caller never
acts (answers a client, dispatches, calls a provider) on something that is not yet durable.
Status changes are conditional updates, which makes duplicate deliveries and lost races
harmless: whoever does not match the expected state simply changes nothing.

Cancellation: a pending prompt is cancelled at once; a running one gets `cancel_requested_at`,
and whichever process holds it stops it (see EmbeddedRunner). From then on, every path that
would hand the prompt back to `pending` (shutdown, expired lease) ends it `cancelled` instead.
A prompt that finishes before its runner stops it keeps that outcome: `finish` and
`finish_cancelled` are both fenced on the claim, so exactly one of them wins.

The writes every request and every execution make (a new prompt, its claim, its outcome with
the attempt rows) go through group commit (`app/kit/group_commit.py`): each caller still
returns only once its rows are committed, but a busy process writes hundreds of them per
transaction, in a few statements on the tables rather than through the ORM, one on
PostgreSQL (`batch_writes.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.base import utcnow
from app.db.database import create_session_factory
from app.db.models import IS_PENDING, NewPrompt, PromptRequest, PromptStatus
from app.engine.batch_writes import (
    INSERT_ATTEMPTS,
    INSERT_PROMPT,
    BatchWrites,
    ClaimRequest,
    OutcomeWrite,
    prompt_row,
)
from app.engine.events import EventBus, LocalBus, PromptEvent
from app.engine.idempotency import IdempotencyRecord, insert_key, purge_expired_keys
from app.engine.ledger import Ledger
from app.engine.records import AttemptRecord, Claim, ResponseRecord
from app.engine.usage_rollups import roll_up
from app.kit.group_commit import GroupCommit

_P = PromptRequest
_CANCEL_REQUESTED = _P.cancel_requested_at.is_not(None)
LOST_MESSAGE = (
    "Its runner stopped (killed, or cut off from the database) before recording what this "
    "execution did; a provider call may have been made, and billed."
)
FINAL_STATUSES = frozenset({PromptStatus.COMPLETED, PromptStatus.FAILED, PromptStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `recover_expired` did with the prompts whose runner was lost."""

    requeued: list[uuid.UUID]
    failed: int
    cancelled: int
    owners: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # requeued id → user


def _held_by(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """The prompt is still running under this claim (the fence is the execution number)."""
    return (
        _P.id == claim.prompt_id,
        _P.status == PromptStatus.RUNNING,
        _P.executions == claim.fence,
    )


class Recorder:
    def __init__(self, engine: AsyncEngine, *, bus: EventBus | None = None) -> None:
        self._engine = engine
        self._bus: EventBus = bus if bus is not None else LocalBus()
        self._sessions = create_session_factory(engine)
        self._writes = BatchWrites(engine)
        self._claims = GroupCommit(self._claim_many, orphaned=self._release_orphan)
        self._outcomes = GroupCommit(self._write_outcomes)
        self._inserts = GroupCommit(self._writes.insert_prompts)
        # Rate limits and budgets: whatever ends a prompt that holds reservations settles it.
        self.ledger = Ledger(engine)

    async def aclose(self) -> None:
        """Wait for the writes already queued, then close the writers' own connections
        (before the engine is disposed)."""
        await self._inserts.aclose()
        await self._claims.aclose()
        await self._outcomes.aclose()
        await self.ledger.aclose()
        await self._writes.aclose()

    async def create_prompt(
        self, prompt: NewPrompt, *, idempotency: IdempotencyRecord | None = None
    ) -> None:
        """Insert the prompt and, with `idempotency`, its key row in the same transaction
        (an IntegrityError then means the key was taken meanwhile: see idempotency.py).
        Without a key, the insert joins the next batch of new prompts (group commit); the
        ORM's unit of work, which this replaced, cost a fifth of a /v1 request's CPU (py-spy,
        `bench/gateways.py`)."""
        if idempotency is None:
            await self._inserts.submit(prompt_row(prompt))
            return
        async with self._engine.begin() as connection:
            await connection.execute(INSERT_PROMPT, prompt_row(prompt))
            await insert_key(connection, idempotency, prompt_id=prompt.id)

    async def create_claimed(
        self,
        prompt: NewPrompt,
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
        prompt.executions = 1
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
            prompt.limited,
        )

    async def purge_idempotency_keys(self) -> int:
        """Delete a bounded batch of expired idempotency keys (the sweeper's pass)."""
        async with self._sessions.begin() as session:
            return await purge_expired_keys(session)

    async def claim(self, prompt_id: uuid.UUID, *, lease_seconds: float) -> Claim | None:
        """`pending → running` with a lease; None if someone else has it or it is finished."""
        return await self._claims.submit(ClaimRequest(prompt_id, lease_seconds))

    async def _claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim | None]:
        claims = await self._writes.claim(requests)
        await self._published(claims, PromptStatus.RUNNING)
        # The same prompt asked for twice in one batch (a duplicate delivery): one claim.
        return [claims.pop(r.prompt_id, None) for r in requests]

    async def _published(self, prompt_ids: Iterable[uuid.UUID], status: str) -> None:
        """Tell waiters (Prefer: wait, /events) of status changes that are now committed."""
        await self._bus.publish([PromptEvent(i, "status", status=status) for i in prompt_ids])

    async def _release_orphan(self, claim: Claim | None) -> None:
        if claim is not None:
            await self.release([claim])

    async def _write_outcomes(self, outcomes: Sequence[OutcomeWrite]) -> list[bool]:
        won = await self._writes.outcomes(outcomes)
        limited = [
            o.claim.prompt_id
            for o, held in zip(outcomes, won, strict=True)
            if held and o.claim.limited and o.status is not None
        ]
        if limited:
            await self.ledger.settle(limited)
        await self._bus.publish(
            [
                PromptEvent(o.claim.prompt_id, "status", status=o.status)
                for o, held in zip(outcomes, won, strict=True)
                if held and o.status is not None
            ]
        )
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
        async with self._sessions.begin() as session:
            await session.execute(
                update(_P)
                .where(_P.id.in_(free.scalar_subquery()))
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            )

    async def record_attempt(self, claim: Claim, attempt: AttemptRecord) -> None:
        """A provider call that leaves the prompt's status alone (e.g. abandoned at shutdown)."""
        await self._outcomes.submit(OutcomeWrite(claim, attempt))

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
        # (a response with an error: the answer came, but was not what was asked for)
        completed = response is not None and error_code is None
        status = PromptStatus.COMPLETED if completed else PromptStatus.FAILED
        return await self._outcomes.submit(
            OutcomeWrite(claim, attempt, status, response, error_code, error_message)
        )

    async def finish_cancelled(self, claim: Claim) -> bool:
        """`running → cancelled` for a prompt whose execution its runner stopped on request.
        False if the claim was lost or the prompt finished first."""
        now = utcnow()
        async with self._sessions.begin() as session:
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
                await roll_up(session, prompt_ids=[claim.prompt_id])
        if won:
            if claim.limited:
                await self.ledger.settle([claim.prompt_id])
            await self._published([claim.prompt_id], PromptStatus.CANCELLED)
        return won

    async def release(self, claims: list[Claim], *, counted: bool = False) -> None:
        """Hand claims back (`running → pending`), e.g. at shutdown, or end them `cancelled`
        if their cancellation was requested. Fenced, so a claim that has since passed to
        another runner is left alone. The execution is not counted against MAX_ATTEMPTS
        (it did not happen), unless `counted` (it did, and failed)."""
        if not claims:
            return
        now = utcnow()
        cancelled: list[uuid.UUID] = []
        async with self._sessions.begin() as session:
            for claim in claims:
                await session.execute(
                    update(_P)
                    .where(*_held_by(claim), _P.cancel_requested_at.is_(None))
                    .values(
                        status=PromptStatus.PENDING,
                        executions=claim.fence if counted else claim.fence - 1,
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
            await roll_up(session, prompt_ids=cancelled)
        if cancelled:
            await self.ledger.settle(cancelled)
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
        lost = (_P.id, _P.provider, _P.upstream_model, _P.started_at, _P.user_id)
        async with self._sessions.begin() as session:
            cancelled = await session.execute(
                update(_P)
                .where(*expired, _CANCEL_REQUESTED)
                .values(status=PromptStatus.CANCELLED, finished_at=now, lease_expires_at=None)
                .returning(*lost)
            )
            cancelled_rows = cancelled.all()
            failed = await session.execute(
                update(_P)
                .where(*expired, _P.executions >= max_attempts)
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
            attempts: list[dict[str, Any]] = [
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
                for prompt_id, provider, upstream_model, started_at, _ in (
                    *cancelled_rows,
                    *failed_rows,
                    *requeued_rows,
                )
            ]
            if attempts:
                await session.execute(INSERT_ATTEMPTS, attempts)
            await roll_up(
                session,
                attempt_ids=[attempt["id"] for attempt in attempts],
                prompt_ids=[row[0] for row in (*cancelled_rows, *failed_rows)],
            )
        ended = [row[0] for row in (*cancelled_rows, *failed_rows)]
        if ended:  # (those that held nothing settle nothing: one indexed look)
            await self.ledger.settle(ended)
        await self._published([row[0] for row in cancelled_rows], PromptStatus.CANCELLED)
        await self._published([row[0] for row in failed_rows], PromptStatus.FAILED)
        return Recovered(
            requeued=[row[0] for row in requeued_rows],
            failed=len(failed_rows),
            cancelled=len(cancelled_rows),
            owners={row[0]: row[4] for row in requeued_rows},
        )

    async def due_pending(
        self, *, created_before: datetime, limit: int
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Up to `limit` (prompt id, owner) of pending prompts created before the time, taken
        in turns across owners (each one's oldest first), so that one user's backlog cannot
        fill a sweep that another user's prompt is waiting in."""
        ranked = (
            select(
                _P.id,
                _P.user_id,
                _P.created_at,
                func.row_number()
                .over(partition_by=_P.user_id, order_by=(_P.created_at, _P.id))
                .label("turn"),
            )
            .where(IS_PENDING, _P.created_at <= created_before)
            .subquery()
        )
        async with self._sessions() as session:
            rows = await session.execute(
                select(ranked.c.id, ranked.c.user_id)
                .order_by(ranked.c.turn, ranked.c.created_at)
                .limit(limit)
            )
            return [(prompt_id, owner) for prompt_id, owner in rows]

    async def claim_pending_of(
        self, owner: uuid.UUID, *, limit: int, lease_seconds: float
    ) -> list[Claim]:
        """Claim up to `limit` of the owner's pending prompts, oldest first: what a full runner
        left in the database (runners.py). Rows another runner is claiming are skipped,
        not waited for.

        Two statements, not `UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`:
        PostgreSQL may run such a subquery again for each row it updates, and each run skips
        the rows the last one locked, so the UPDATE claimed every pending row, not `n`."""
        now = utcnow()
        oldest = (
            select(_P.id)
            .where(_P.user_id == owner, IS_PENDING)
            .order_by(_P.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer
        )
        async with self._sessions.begin() as session:
            ids = list(await session.scalars(oldest))
            if not ids:
                return []
            rows = await session.execute(
                update(_P)
                .where(_P.id.in_(ids), IS_PENDING)
                .values(
                    status=PromptStatus.RUNNING,
                    executions=_P.executions + 1,
                    started_at=now,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                )
                .returning(
                    _P.id,
                    _P.executions,
                    _P.model,
                    _P.provider,
                    _P.upstream_model,
                    _P.prompt_text,
                    _P.parameters,
                    _P.limited,
                )
                .execution_options(synchronize_session=False)
            )
            claims = [Claim(*row) for row in rows]
        await self._published([c.prompt_id for c in claims], PromptStatus.RUNNING)
        return claims

    async def cancel(self, prompt_id: uuid.UUID, *, user_id: uuid.UUID) -> str | None:
        """Cancel one of the user's prompts: a `pending` one now, a `running` one by requesting
        it of its runner. Returns the status it had: `pending` (now cancelled), `running`
        (cancellation requested), a final status (nothing changed), or None if the user has
        no such prompt (someone else's is as missing as a missing one)."""
        now = utcnow()
        owned = (_P.id == prompt_id, _P.user_id == user_id)
        async with self._sessions.begin() as session:
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
                    await roll_up(session, prompt_ids=[prompt_id])
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
        await self.ledger.settle([prompt_id])
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
