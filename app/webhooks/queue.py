"""The webhook pump's database side: finding finished prompts, claiming due deliveries,
recording what each POST did. Each function is one short transaction of its own.

**Finding what to announce** never touches the prompt-finishing transaction (the hot path,
written by group commit). Instead the pump reads finished prompts back: for each enabled
endpoint, the owner's prompts whose final status it subscribed to, that finished at or after
the endpoint's `scanned_until`, and that have no delivery for it yet. `scanned_until` is a
durable watermark, so a pass reads only recent prompts however long the history, and prompts
that finished while every process was down are found when one comes back.

The watermark trails the clock by SETTLE_SECONDS: a prompt's `finished_at` is stamped before
its transaction commits (and by another machine's clock), so a row may become visible a little
after the time it carries. Prompts in that trailing window are looked at on every pass until it
passes them; the NOT EXISTS and the unique (endpoint, prompt, event) make that, and pumps in
several processes at once, create each delivery exactly once.

**Sending** is claimed like a prompt: a conditional update to `sending` with a lease and the
attempt number as a fence, so two processes never send one delivery at once, a dead process's
claim expires, and a stale sender cannot overwrite a newer attempt's outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.errors import NotFound
from app.models import (
    DeliveryStatus,
    PromptRequest,
    PromptStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from app.models.webhook import EVENT_OF_STATUS
from app.prompts.service import get_prompt
from app.sealing import SecretBox
from app.webhooks.schemas import WebhookMessage

SETTLE_SECONDS = 60.0  # the longest a finished prompt may take to become visible
ENQUEUE_BATCH = 500
# The watermark moves in steps at least this long, so an idle pass writes nothing.
WATERMARK_STEP_SECONDS = 5.0
# Retry delays, in multiples of WEBHOOK_RETRY_BASE_SECONDS: 10 s, 1 min, 5 min, 30 min, 2 h,
# 5 h, then 10 h, by default.
BACKOFF_STEPS = (1, 6, 30, 180, 720, 1800, 3600)

_E, _D, _P = WebhookEndpoint, WebhookDelivery, PromptRequest
_SUBSCRIBED = or_(
    and_(_P.status == PromptStatus.COMPLETED, _E.on_prompt_completed),
    and_(_P.status == PromptStatus.FAILED, _E.on_prompt_failed),
    and_(_P.status == PromptStatus.CANCELLED, _E.on_prompt_cancelled),
)
_NOT_YET = ~exists().where(_D.endpoint_id == _E.id, _D.prompt_id == _P.id)


@dataclass(frozen=True, slots=True)
class DeliveryClaim:
    id: uuid.UUID
    fence: int  # the delivery's `attempts` once claimed: this POST's number
    attempts_at_requeue: int
    endpoint_id: uuid.UUID
    prompt_id: uuid.UUID
    event: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Message:
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff(attempt: int, *, base_seconds: float) -> timedelta:
    """The wait after the `attempt`-th failed POST of a round (1 for the first)."""
    step = BACKOFF_STEPS[min(attempt, len(BACKOFF_STEPS)) - 1]
    return timedelta(seconds=base_seconds * step)


def _insert_new(session: AsyncSession) -> Any:
    """INSERT that skips a delivery another process created first."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(_D).on_conflict_do_nothing(index_elements=["endpoint_id", "prompt_id", "event"])


async def enqueue_finished(sessions: SessionFactory, *, now: datetime) -> bool:
    """Create the missing deliveries of prompts that finished since each endpoint's watermark,
    then move the watermarks on. True when the batch was full: call again."""
    async with sessions() as session, session.begin():
        found = (
            await session.execute(
                select(_E.id, _P.id, _P.status, _P.finished_at)
                .join(_P, _P.user_id == _E.user_id)
                .where(_E.enabled, _P.finished_at >= _E.scanned_until, _SUBSCRIBED, _NOT_YET)
                # A total order: concurrent pumps insert the same rows in the same order, so
                # one waits for the other on the unique index instead of deadlocking with it.
                .order_by(_P.finished_at, _P.id, _E.id)
                .limit(ENQUEUE_BATCH)
            )
        ).all()
        if found:
            rows = [
                {
                    "id": uuid.uuid4(),
                    "endpoint_id": endpoint_id,
                    "prompt_id": prompt_id,
                    "event": EVENT_OF_STATUS[PromptStatus(status)],
                    "status": DeliveryStatus.PENDING,
                    "attempts": 0,
                    "attempts_at_requeue": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for endpoint_id, prompt_id, status, _ in found
            ]
            await session.execute(_insert_new(session), rows)
        mark = now - timedelta(seconds=SETTLE_SECONDS)
        behind = mark - timedelta(seconds=WATERMARK_STEP_SECONDS)
        full = len(found) == ENQUEUE_BATCH
        last_finished: datetime | None = found[-1][3] if found else None
        if full and last_finished is not None and last_finished < mark:
            # A full batch covered what finished before its last row, not more.
            mark = behind = last_finished
        await session.execute(
            update(_E)
            .where(_E.enabled, _E.scanned_until < behind)
            .values(scanned_until=mark)
            .execution_options(synchronize_session=False)
        )
    return full


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(_D.status == DeliveryStatus.PENDING, _D.next_attempt_at <= now),
        and_(_D.status == DeliveryStatus.SENDING, _D.lease_expires_at < now),
    )


async def claim_due(
    sessions: SessionFactory, *, limit: int, lease_seconds: float, now: datetime
) -> list[DeliveryClaim]:
    """Claim up to `limit` due deliveries of enabled endpoints: `sending`, leased, and the
    attempt counted. A claim whose holder died (lease expired) is due again."""
    due = (
        select(_D.id)
        .join(_E, _E.id == _D.endpoint_id)
        .where(_E.enabled, _due(now))
        .order_by(_D.next_attempt_at)
        .limit(limit)
        .with_for_update(of=_D, skip_locked=True)  # PostgreSQL; SQLite has one writer
    )
    async with sessions() as session, session.begin():
        rows = await session.execute(
            update(_D)
            .where(_D.id.in_(due.scalar_subquery()), _due(now))
            .values(
                status=DeliveryStatus.SENDING,
                attempts=_D.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(
                _D.id,
                _D.attempts,
                _D.attempts_at_requeue,
                _D.endpoint_id,
                _D.prompt_id,
                _D.event,
                _D.created_at,
            )
            .execution_options(synchronize_session=False)
        )
        return [DeliveryClaim(*row) for row in rows]


async def load_message(
    sessions: SessionFactory, box: SecretBox, claim: DeliveryClaim
) -> Message | None:
    """Where to send the claimed delivery, the secret to sign it with, and its body: the
    prompt as its owner reads it. None if the endpoint or the prompt is gone. Raises
    `UnreadableSecret` if this process's keys cannot open the endpoint's secret."""
    async with sessions() as session:
        endpoint = await session.get(_E, claim.endpoint_id)
        if endpoint is None:
            return None
        try:
            detail = await get_prompt(session, user_id=endpoint.user_id, prompt_id=claim.prompt_id)
        except NotFound:
            return None
        message = WebhookMessage.model_validate(
            {"id": claim.id, "type": claim.event, "created_at": claim.created_at, "data": detail}
        )
        secret = box.open(endpoint.sealed_secret)
        return Message(endpoint.url, secret, message.model_dump_json().encode())


def _held(claim: DeliveryClaim) -> tuple[ColumnElement[bool], ...]:
    return (
        _D.id == claim.id,
        _D.status == DeliveryStatus.SENDING,
        _D.attempts == claim.fence,
    )


async def record_outcome(
    sessions: SessionFactory,
    claim: DeliveryClaim,
    outcome: Outcome,
    *,
    max_attempts: int,
    retry_base_seconds: float,
) -> bool:
    """The attempt row and the delivery's next state (`delivered`, `pending` for a retry once
    the backoff has passed since this attempt ended, or `failed` after the round's last
    attempt), if the claim still holds."""
    attempt = claim.fence - claim.attempts_at_requeue
    ended = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": None,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    if outcome.delivered:
        values |= {
            "status": DeliveryStatus.DELIVERED,
            "delivered_at": ended,
            "next_attempt_at": None,
        }
    elif attempt >= max_attempts:
        values |= {"status": DeliveryStatus.FAILED, "next_attempt_at": None}
    else:
        retry_at = ended + backoff(attempt, base_seconds=retry_base_seconds)
        values |= {"status": DeliveryStatus.PENDING, "next_attempt_at": retry_at}
    async with sessions() as session, session.begin():
        result = await session.execute(
            update(_D)
            .where(*_held(claim))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        held = bool(cast("CursorResult[Any]", result).rowcount)
        if held:
            session.add(
                WebhookAttempt(
                    id=uuid.uuid4(),
                    delivery_id=claim.id,
                    attempted_at=outcome.attempted_at,
                    duration_ms=outcome.duration_ms,
                    status_code=outcome.status_code,
                    error=outcome.error,
                )
            )
    return held


async def release(sessions: SessionFactory, claims: list[DeliveryClaim], *, now: datetime) -> None:
    """Hand claims back (the process is stopping), due at once for another process."""
    if not claims:
        return
    async with sessions() as session, session.begin():
        for claim in claims:
            await session.execute(
                update(_D)
                .where(*_held(claim))
                .values(status=DeliveryStatus.PENDING, lease_expires_at=None, next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
