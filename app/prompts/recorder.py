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
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Insert, func, insert, select, update

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.models import PromptAttempt, PromptRequest, PromptResponse, PromptStatus

_P = PromptRequest
_CANCEL_REQUESTED = _P.cancel_requested_at.is_not(None)
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


@dataclass(frozen=True, slots=True)
class Recovered:
    """What `recover_expired` did with the prompts whose runner was lost."""

    requeued: list[uuid.UUID]
    failed: int
    cancelled: int


def _values(record: AttemptRecord | ResponseRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _insert_attempt(claim: Claim, attempt: AttemptRecord) -> Insert:
    return insert(PromptAttempt).values(
        id=uuid.uuid4(), prompt_id=claim.prompt_id, **_values(attempt)
    )


def _held_by(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    """The prompt is still running under this claim (the fence is the execution number)."""
    return (
        _P.id == claim.prompt_id,
        _P.status == PromptStatus.RUNNING,
        _P.attempts == claim.fence,
    )


class Recorder:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    async def create_prompt(self, prompt: PromptRequest) -> None:
        async with self._sessions() as session, session.begin():
            session.add(prompt)

    async def claim(self, prompt_id: uuid.UUID, *, lease_seconds: float) -> Claim | None:
        """`pending → running` with a lease; None if someone else has it or it is finished."""
        now = utcnow()
        statement = (
            update(_P)
            .where(_P.id == prompt_id, _P.status == PromptStatus.PENDING)
            .values(
                status=PromptStatus.RUNNING,
                attempts=_P.attempts + 1,
                started_at=now,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(
                _P.attempts,
                _P.model,
                _P.provider,
                _P.upstream_model,
                _P.prompt_text,
                _P.parameters,
            )
        )
        async with self._sessions() as session, session.begin():
            row = (await session.execute(statement)).first()
        if row is None:
            return None
        return Claim(prompt_id, *row)

    async def renew_leases(self, prompt_ids: list[uuid.UUID], *, lease_seconds: float) -> None:
        if not prompt_ids:
            return
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(_P)
                .where(_P.id.in_(prompt_ids), _P.status == PromptStatus.RUNNING)
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            )

    async def record_attempt(self, claim: Claim, attempt: AttemptRecord) -> None:
        """A provider call that leaves the prompt's status alone (e.g. abandoned at shutdown)."""
        async with self._sessions() as session, session.begin():
            await session.execute(_insert_attempt(claim, attempt))

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
        async with self._sessions() as session, session.begin():
            if attempt is not None:
                await session.execute(_insert_attempt(claim, attempt))
            result = await session.execute(
                update(_P)
                .where(*_held_by(claim))
                .values(
                    status=status,
                    finished_at=utcnow(),
                    lease_expires_at=None,
                    error_code=error_code,
                    error_message=error_message,
                )
            )
            won = bool(result.rowcount)  # type: ignore[attr-defined]
            if won and response is not None:
                await session.execute(
                    insert(PromptResponse).values(
                        id=uuid.uuid4(),
                        prompt_id=claim.prompt_id,
                        created_at=utcnow(),
                        **_values(response),
                    )
                )
        return won

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
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, claims: list[Claim]) -> None:
        """Hand claims back (`running → pending`) without counting them, e.g. at shutdown, or
        end them `cancelled` if their cancellation was requested. Fenced, so a claim that has
        since passed to another runner is left alone."""
        if not claims:
            return
        now = utcnow()
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
                await session.execute(
                    update(_P)
                    .where(*_held_by(claim), _CANCEL_REQUESTED)
                    .values(status=PromptStatus.CANCELLED, finished_at=now, lease_expires_at=None)
                )

    async def recover_expired(self, *, max_attempts: int) -> Recovered:
        """Running prompts whose lease ran out lost their runner: end them `cancelled` if that
        was requested, fail them once they have used `max_attempts` executions, and otherwise
        return them to `pending`."""
        now = utcnow()
        expired = (_P.status == PromptStatus.RUNNING, _P.lease_expires_at < now)
        async with self._sessions() as session, session.begin():
            cancelled = await session.execute(
                update(_P)
                .where(*expired, _CANCEL_REQUESTED)
                .values(status=PromptStatus.CANCELLED, finished_at=now, lease_expires_at=None)
            )
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
            )
            requeued = await session.execute(
                update(_P)
                .where(*expired)
                .values(status=PromptStatus.PENDING, lease_expires_at=None)
                .returning(_P.id)
            )
            requeued_ids = list(requeued.scalars())
        return Recovered(
            requeued=requeued_ids,
            failed=int(failed.rowcount),  # type: ignore[attr-defined]
            cancelled=int(cancelled.rowcount),  # type: ignore[attr-defined]
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
                    return PromptStatus.PENDING
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
