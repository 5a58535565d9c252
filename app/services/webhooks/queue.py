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
claim expires, and a stale sender cannot overwrite a newer attempt's outcome. An expired claim
is an attempt that ended without an outcome: it is logged as `abandoned`, counts against
WEBHOOK_MAX_ATTEMPTS like any other, and the delivery is `failed` once they are used up, so
nothing is retried past the limit, whatever made its sender stop.

**Fairness.** The free slots of a pass are shared across users, not given to the oldest due
deliveries: one user's backlog (thousands of deliveries to a slow receiver) must not hold up
another user's single delivery until it drains. See `claim_due`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.database import SessionFactory
from app.db.models import (
    DeliveryStatus,
    PromptRequest,
    PromptStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from app.db.models.webhook import EVENT_OF_STATUS
from app.kit.errors import NotFound
from app.kit.sealing import SecretBox
from app.services.auth.scope import PromptScope
from app.services.prompts.service import get_prompt
from app.services.webhooks.schemas import WebhookMessage

SETTLE_SECONDS = 60.0  # the longest a finished prompt may take to become visible
ENQUEUE_BATCH = 500
# The watermark moves in steps at least this long, so an idle pass writes nothing.
WATERMARK_STEP_SECONDS = 5.0
# Retry delays, in multiples of WEBHOOK_RETRY_BASE_SECONDS: 10 s, 1 min, 5 min, 30 min, 2 h,
# 5 h, then 10 h, by default.
BACKOFF_STEPS = (1, 6, 30, 180, 720, 1800, 3600)
# The attempt log's words for an attempt whose sender stopped before recording its outcome,
# and for one whose message could not be built (details in the server's log, not here).
ABANDONED = "abandoned: no outcome was recorded (the process sending it stopped)"
INTERNAL_ERROR = "internal_error: the message could not be built or sent; the server logged why"

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
    prompt_id: uuid.UUID | None  # None: not about a prompt (its message is the payload)
    event: str
    created_at: datetime
    last_error: str | None = None  # the previous attempt's, if it failed without an answer


@dataclass(frozen=True, slots=True)
class DeliveryMessage:
    url: str
    secret: str
    body: bytes


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
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
    async with sessions.begin() as session:
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


def _fair_order(now: datetime, limit: int) -> Any:
    """The ids of the `limit` due deliveries to claim next, shared fairly across users.

    Each user's due deliveries are numbered oldest first (ROW_NUMBER() OVER (PARTITION BY the
    endpoint's owner)), and the number is added to how many of the user's deliveries are
    being sent right now (by any process). Claiming in that order, lowest first, fills free
    slots round-robin: a user with nothing in flight goes before any delivery of a user who
    holds slots, and a user's second delivery goes after every other user's first. Ties go
    to the user with fewer deliveries waiting (a single delivery before a backlog), then to
    the oldest. So a user flooding the pump holds up another user's delivery only until the
    next slot frees: at most one POST timeout and one poll.
    """
    due = (
        select(
            _D.id.label("id"),
            _E.user_id.label("user_id"),
            _D.next_attempt_at.label("next_attempt_at"),
            func.row_number()
            .over(partition_by=_E.user_id, order_by=(_D.next_attempt_at, _D.id))
            .label("position"),
            func.count().over(partition_by=_E.user_id).label("waiting"),
        )
        .join(_E, _E.id == _D.endpoint_id)
        .where(_E.enabled, _due(now))
        .subquery("due")
    )
    busy = (
        select(_E.user_id.label("user_id"), func.count().label("sending"))
        .select_from(_D)
        .join(_E, _E.id == _D.endpoint_id)
        .where(_D.status == DeliveryStatus.SENDING, _D.lease_expires_at >= now)
        .group_by(_E.user_id)
        .subquery("busy")
    )
    return (
        select(due.c.id)
        .outerjoin(busy, busy.c.user_id == due.c.user_id)
        .order_by(
            due.c.position + func.coalesce(busy.c.sending, 0),
            due.c.waiting,
            due.c.next_attempt_at,
            due.c.id,
        )
        .limit(limit)
    )


async def _abandon_expired(session: AsyncSession, *, max_attempts: int, now: datetime) -> None:
    """Turn claims whose lease expired (their sender stopped or lost the database before
    recording an outcome) into an `abandoned` attempt: due again at once, or `failed` if that
    was the round's last attempt."""
    last = _D.attempts - _D.attempts_at_requeue >= max_attempts
    rows = await session.execute(
        update(_D)
        .where(_D.status == DeliveryStatus.SENDING, _D.lease_expires_at < now)
        .values(
            status=case((last, DeliveryStatus.FAILED), else_=DeliveryStatus.PENDING),
            next_attempt_at=case((last, None), else_=now),
            lease_expires_at=None,
            last_status_code=None,
            last_error=ABANDONED,
        )
        .returning(_D.id)
        .execution_options(synchronize_session=False)
    )
    for (delivery_id,) in rows.all():
        session.add(
            WebhookAttempt(
                id=uuid.uuid4(),
                delivery_id=delivery_id,
                attempted_at=now,
                duration_ms=0,
                status_code=None,
                error=ABANDONED,
            )
        )
    await session.flush()


async def claim_due(
    sessions: SessionFactory,
    *,
    limit: int,
    lease_seconds: float,
    max_attempts: int,
    now: datetime,
) -> list[DeliveryClaim]:
    """Claim up to `limit` due deliveries of enabled endpoints, in the fair order of
    `_fair_order`: `sending`, leased, and the attempt counted. Expired claims are first
    recorded as abandoned attempts (`_abandon_expired`).

    The ids are chosen by one SELECT and claimed by a second statement. PostgreSQL refuses
    FOR UPDATE in a query with window functions, so the ranking is a subquery of a plain
    SELECT that locks (SKIP LOCKED: two pumps do not wait for each other). The UPDATE names
    those ids only: as a single `UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP
    LOCKED)`, PostgreSQL may run the subquery again as rows change and claim far more than
    `n` (every due delivery, so WEBHOOK_CONCURRENCY was not kept). The UPDATE checks again
    that each row is due, so two pumps that pick the same rows still never claim one twice:
    the second finds it `sending` and skips it."""
    async with sessions.begin() as session:
        await _abandon_expired(session, max_attempts=max_attempts, now=now)
        chosen = list(
            await session.scalars(
                select(_D.id)
                .where(_D.id.in_(_fair_order(now, limit).scalar_subquery()))
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer
            )
        )
        if not chosen:
            return []
        rows = await session.execute(
            update(_D)
            .where(_D.id.in_(chosen), _due(now))
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
                _D.last_error,
            )
            .execution_options(synchronize_session=False)
        )
        return [
            DeliveryClaim(id_, fence, requeue, endpoint_id, prompt_id, event, created, error)
            for id_, fence, requeue, endpoint_id, prompt_id, event, created, error in rows
        ]


async def load_message(
    sessions: SessionFactory, box: SecretBox, claim: DeliveryClaim
) -> DeliveryMessage | None:
    """Where to send the claimed delivery, the secret to sign it with, and its body: the
    prompt as its owner reads it (a budget warning: its payload). None if the endpoint or the
    prompt is gone. Raises
    `UnreadableSecret` if this process's keys cannot open the endpoint's secret."""
    async with sessions() as session:
        endpoint = await session.get(_E, claim.endpoint_id)
        if endpoint is None:
            return None
        data: Any
        if claim.prompt_id is None:
            data = await session.scalar(select(_D.payload).where(_D.id == claim.id))
            if data is None:
                return None
        else:
            try:
                data = await get_prompt(
                    session, scope=PromptScope.own(endpoint.user_id), prompt_id=claim.prompt_id
                )
            except NotFound:
                return None
        message = WebhookMessage.model_validate(
            {"id": claim.id, "type": claim.event, "created_at": claim.created_at, "data": data}
        )
        secret = box.open(endpoint.sealed_secret)
        return DeliveryMessage(endpoint.url, secret, message.model_dump_json().encode())


def _held(claim: DeliveryClaim) -> tuple[ColumnElement[bool], ...]:
    return (
        _D.id == claim.id,
        _D.status == DeliveryStatus.SENDING,
        _D.attempts == claim.fence,
    )


async def record_outcome(
    sessions: SessionFactory,
    claim: DeliveryClaim,
    outcome: DeliveryOutcome,
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
    async with sessions.begin() as session:
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
    async with sessions.begin() as session:
        for claim in claims:
            await session.execute(
                update(_D)
                .where(*_held(claim))
                .values(status=DeliveryStatus.PENDING, lease_expires_at=None, next_attempt_at=now)
                .execution_options(synchronize_session=False)
            )
