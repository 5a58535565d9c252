"""The /webhooks domain: a user's endpoints and their delivery log. Plain async functions.

Every query is filtered on the owner, so someone else's endpoint or delivery is exactly as
missing as one that does not exist. Sending is not done here: a redelivery only puts the row
back in the queue, and the webhook pump (`pump.py`) sends it.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.database import read_one_snapshot
from app.db.models import DeliveryStatus, User, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.kit.errors import Conflict, InvalidInput, NotFound
from app.kit.outbound import OutboundPolicy, OutboundRefused
from app.kit.sealing import SecretBox
from app.services import audit
from app.services.audit import Actor
from app.services.webhooks.schemas import (
    MAX_URL_CHARS,
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
)
from app.services.webhooks.signing import new_secret

# Each finished prompt is one delivery per endpoint: a bound keeps one user's fan-out small.
MAX_ENDPOINTS_PER_USER = 20


def check_url(url: str, policy: OutboundPolicy) -> str:
    """An absolute http(s) URL that the outbound guard accepts (`app/kit/outbound.py`: no
    userinfo, no address on this server's own networks, no `localhost`-like name), or 422
    `invalid_webhook_url` with the reason. What a host name resolves to is judged at each
    delivery instead: an answer now would say nothing about the next one."""
    reason = None
    if len(url) > MAX_URL_CHARS:
        reason = f"it is longer than {MAX_URL_CHARS} characters"
    else:
        try:
            policy.check_new_url(url)
        except OutboundRefused as exc:
            reason = str(exc)
    if reason is not None:
        raise InvalidInput(
            f"url is not usable for a webhook: {reason}.", code="invalid_webhook_url"
        )
    return url


async def _endpoint(
    session: AsyncSession, *, user_id: uuid.UUID, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    endpoint = await session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.user_id == user_id
        )
    )
    if endpoint is None:
        raise NotFound("No webhook with this id.")
    return endpoint


async def create_endpoint(
    session: AsyncSession,
    box: SecretBox,
    policy: OutboundPolicy,
    *,
    user: User,
    data: WebhookCreate,
) -> WebhookCreated:
    """Register an endpoint; its secret is in this answer only. Prompts that finish from now
    on are announced to it (none from before)."""
    user_id = user.id
    count = await session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.user_id == user_id)
    )
    if (count or 0) >= MAX_ENDPOINTS_PER_USER:
        raise InvalidInput(
            f"You have {MAX_ENDPOINTS_PER_USER} webhooks already, the most allowed; delete one.",
            code="too_many_webhooks",
            extra={"limit": MAX_ENDPOINTS_PER_USER},
        )
    now, secret = utcnow(), new_secret()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        user_id=user_id,
        url=check_url(data.url, policy),
        description=data.description,
        sealed_secret=box.seal(secret),
        enabled=True,
        created_at=now,
        updated_at=now,
        scanned_until=now,
    )
    endpoint.subscribe(data.events)
    session.add(endpoint)
    await session.flush()
    out = WebhookOut.model_validate(endpoint)
    audit.record(session, Actor(user), "webhook.create", "webhook", endpoint.id, after=_seen(out))
    return WebhookCreated(**out.model_dump(), secret=secret)


def _seen(webhook: WebhookOut) -> dict[str, Any]:
    """A webhook as the audit log keeps it (it has no secret)."""
    return webhook.model_dump(mode="json", exclude={"id", "created_at", "updated_at"})


async def list_endpoints(session: AsyncSession, *, user_id: uuid.UUID) -> list[WebhookOut]:
    rows = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.user_id == user_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return [WebhookOut.model_validate(row) for row in rows]


async def get_endpoint(
    session: AsyncSession, *, user_id: uuid.UUID, endpoint_id: uuid.UUID
) -> WebhookOut:
    endpoint = await _endpoint(session, user_id=user_id, endpoint_id=endpoint_id)
    return WebhookOut.model_validate(endpoint)


async def update_endpoint(
    session: AsyncSession,
    policy: OutboundPolicy,
    *,
    user: User,
    endpoint_id: uuid.UUID,
    data: WebhookUpdate,
) -> WebhookOut:
    endpoint = await _endpoint(session, user_id=user.id, endpoint_id=endpoint_id)
    before = _seen(WebhookOut.model_validate(endpoint))
    now = utcnow()
    if data.url is not None:
        endpoint.url = check_url(data.url, policy)
    if data.events is not None:
        endpoint.subscribe(data.events)
    if "description" in data.model_fields_set:
        endpoint.description = data.description
    if data.enabled is not None:
        if data.enabled and not endpoint.enabled:
            # What finished while it was off is not announced: the pump starts from now.
            endpoint.scanned_until = now
        endpoint.enabled = data.enabled
    endpoint.updated_at = now
    await session.flush()
    out = WebhookOut.model_validate(endpoint)
    audit.record(
        session,
        Actor(user),
        "webhook.update",
        "webhook",
        endpoint.id,
        before=before,
        after=_seen(out),
    )
    return out


async def delete_endpoint(session: AsyncSession, *, user: User, endpoint_id: uuid.UUID) -> None:
    """The endpoint, its deliveries and their attempts (the foreign keys cascade)."""
    endpoint = await _endpoint(session, user_id=user.id, endpoint_id=endpoint_id)
    before = _seen(WebhookOut.model_validate(endpoint))
    await session.delete(endpoint)
    await session.flush()
    audit.record(session, Actor(user), "webhook.delete", "webhook", endpoint_id, before=before)


async def rotate_secret(
    session: AsyncSession, box: SecretBox, *, user: User, endpoint_id: uuid.UUID
) -> WebhookCreated:
    """A new secret, in this answer only; every POST from now on is signed with it."""
    endpoint = await _endpoint(session, user_id=user.id, endpoint_id=endpoint_id)
    secret = new_secret()
    endpoint.sealed_secret = box.seal(secret)
    endpoint.updated_at = utcnow()
    await session.flush()
    # (the secrets themselves are never logged: only that it changed)
    audit.record(session, Actor(user), "webhook.rotate_secret", "webhook", endpoint_id)
    return WebhookCreated(**WebhookOut.model_validate(endpoint).model_dump(), secret=secret)


async def reseal_secrets(session: AsyncSession, box: SecretBox) -> int:
    """Seal every endpoint's secret under the first key (rotating ENCRYPTION_KEYS); returns
    how many changed. A secret that no key opens raises `UnreadableSecret`: the caller rolls
    back, so nothing is half done."""
    count = 0
    for endpoint in await session.scalars(select(WebhookEndpoint)):
        resealed = box.resealed(endpoint.sealed_secret)
        if resealed is not None:
            endpoint.sealed_secret = resealed
            count += 1
    await session.flush()
    return count


async def _attempts(
    session: AsyncSession, deliveries: list[WebhookDelivery]
) -> dict[uuid.UUID, list[WebhookAttempt]]:
    by_delivery: dict[uuid.UUID, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        rows = await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(by_delivery)))
            .order_by(WebhookAttempt.attempted_at)
        )
        for attempt in rows:
            by_delivery[attempt.delivery_id].append(attempt)
    return by_delivery


async def list_deliveries(
    session: AsyncSession, *, user_id: uuid.UUID, endpoint_id: uuid.UUID, limit: int
) -> list[DeliveryOut]:
    """The endpoint's deliveries, newest first, each with every attempt made, as of one
    moment (an attempt is never listed without the delivery state it left)."""
    await read_one_snapshot(session)
    await _endpoint(session, user_id=user_id, endpoint_id=endpoint_id)
    deliveries = list(
        await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        )
    )
    attempts = await _attempts(session, deliveries)
    return [DeliveryOut.from_delivery(d, attempts[d.id]) for d in deliveries]


async def redeliver(
    session: AsyncSession, *, user_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryOut:
    """Queue a delivery again, due now, with a fresh round of WEBHOOK_MAX_ATTEMPTS attempts.
    One being sent right now is a 409 `delivery_in_progress`: its outcome is a moment away."""
    mine = select(WebhookEndpoint.id).where(WebhookEndpoint.user_id == user_id)
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.endpoint_id.in_(mine),
            WebhookDelivery.status != DeliveryStatus.SENDING,
        )
        .values(
            status=DeliveryStatus.PENDING,
            next_attempt_at=utcnow(),
            lease_expires_at=None,
            attempts_at_requeue=WebhookDelivery.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    delivery = await session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id.in_(mine))
        .execution_options(populate_existing=True)
    )
    if delivery is None:
        raise NotFound("No webhook delivery with this id.")
    if not cast("CursorResult[Any]", result).rowcount:
        raise Conflict(
            "This delivery is being sent right now; ask again once it is not `sending`.",
            code="delivery_in_progress",
        )
    attempts = await _attempts(session, [delivery])
    return DeliveryOut.from_delivery(delivery, attempts[delivery.id])
