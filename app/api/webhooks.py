from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response

from app.api.auth import CurrentUser
from app.api.deps import ServicesDep, Session
from app.api.problems import problem_responses
from app.db.models import WebhookEvent
from app.kit.outbound import OutboundPolicy
from app.kit.sealing import SecretBox
from app.services.webhooks import service
from app.services.webhooks.schemas import (
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookMessage,
    WebhookOut,
    WebhookUpdate,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


async def get_secret_box(services: ServicesDep) -> SecretBox:
    return services.box


async def get_outbound_policy(services: ServicesDep) -> OutboundPolicy:
    return services.outbound


SecretBoxDep = Annotated[SecretBox, Depends(get_secret_box)]
PolicyDep = Annotated[OutboundPolicy, Depends(get_outbound_policy)]


@router.post(
    "",
    status_code=201,
    summary="Register a webhook endpoint",
    response_description="Created; `secret` is shown in this answer only.",
    responses=problem_responses(401, 422, 503),
)
async def create_webhook(
    session: Session,
    box: SecretBoxDep,
    policy: PolicyDep,
    user: CurrentUser,
    data: WebhookCreate,
) -> WebhookCreated:
    """Register a URL to be POSTed a signed message whenever one of your prompts reaches a
    final status you subscribed to (`prompt.completed`, `prompt.failed`, `prompt.cancelled`).
    Prompts that finish from now on are announced; none from before.

    The answer carries the endpoint's **secret**, which signs every delivery
    (`Webhook-Signature`, see the README's *Webhooks* section). It is never shown again: store
    it now, or rotate it later.

    An unusable URL is a 422 `invalid_webhook_url` with the reason: not http(s), carrying
    `user:password@`, or pointing at this server's own networks (a loopback, private,
    link-local, ... address in any notation, or a name such as `localhost`), unless the
    operator allowed it (OUTBOUND_ALLOWLIST). A host name that resolves to such an address is
    refused at each delivery instead (`blocked: …` in the delivery log).
    """
    return await service.create_endpoint(session, box, policy, user=user, data=data)


@router.get("", summary="List your webhook endpoints", responses=problem_responses(401, 503))
async def list_webhooks(session: Session, user: CurrentUser) -> list[WebhookOut]:
    """Your endpoints, oldest first. Secrets are never listed."""
    return await service.list_endpoints(session, user_id=user.id)


@router.get(
    "/{webhook_id}",
    summary="Read a webhook endpoint",
    responses=problem_responses(401, 404, 422, 503),
)
async def get_webhook(session: Session, user: CurrentUser, webhook_id: uuid.UUID) -> WebhookOut:
    """One of your endpoints, without its secret."""
    return await service.get_endpoint(session, user_id=user.id, endpoint_id=webhook_id)


@router.patch(
    "/{webhook_id}",
    summary="Change a webhook endpoint",
    responses=problem_responses(401, 404, 422, 503),
)
async def update_webhook(
    session: Session,
    policy: PolicyDep,
    user: CurrentUser,
    webhook_id: uuid.UUID,
    data: WebhookUpdate,
) -> WebhookOut:
    """Change the URL, the events, the description, or turn deliveries off and on
    (`enabled`). Only the fields given change. Prompts that finish while an endpoint is
    disabled are not announced when it is enabled again. A new URL is checked as on
    registration (422 `invalid_webhook_url`)."""
    return await service.update_endpoint(
        session, policy, user=user, endpoint_id=webhook_id, data=data
    )


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Delete a webhook endpoint",
    response_description="Deleted, with its delivery log.",
    responses=problem_responses(401, 404, 422, 503),
)
async def delete_webhook(session: Session, user: CurrentUser, webhook_id: uuid.UUID) -> Response:
    """Delete the endpoint and its delivery log; nothing more is sent to it."""
    await service.delete_endpoint(session, user=user, endpoint_id=webhook_id)
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="Replace a webhook endpoint's secret",
    response_description="The endpoint with its new `secret`, shown in this answer only.",
    responses=problem_responses(401, 404, 422, 503),
)
async def rotate_webhook_secret(
    session: Session, box: SecretBoxDep, user: CurrentUser, webhook_id: uuid.UUID
) -> WebhookCreated:
    """Generate a new secret. Every POST from now on is signed with it (a retry of an older
    delivery too); the old one stops working at once."""
    return await service.rotate_secret(session, box, user=user, endpoint_id=webhook_id)


@router.get(
    "/{webhook_id}/deliveries",
    summary="List a webhook endpoint's deliveries",
    responses=problem_responses(401, 404, 422, 503),
)
async def list_deliveries(
    session: Session,
    user: CurrentUser,
    webhook_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=100, description="How many, newest first.")] = 20,
) -> list[DeliveryOut]:
    """The endpoint's delivery log, newest first: each delivery's event and prompt, its status
    (`pending`, `sending`, `delivered`, `failed`), when it is next tried, and every attempt
    with the receiver's HTTP status or why there was none: `timeout`, `unreachable` (the
    same words whatever happened on the network), `blocked` (an address this server may not
    reach), `secret_unreadable`, `internal_error`."""
    return await service.list_deliveries(
        session, user_id=user.id, endpoint_id=webhook_id, limit=limit
    )


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a delivery again",
    response_description="Queued: `pending`, due now.",
    responses=problem_responses(401, 404, 409, 422, 503),
)
async def redeliver(session: Session, user: CurrentUser, delivery_id: uuid.UUID) -> DeliveryOut:
    """Queue one of your deliveries again, whatever its status (delivered, failed, or waiting
    for a retry): it is sent within about a second (WEBHOOK_POLL_SECONDS), with the same
    `Webhook-Id`, and gets WEBHOOK_MAX_ATTEMPTS attempts again. A delivery being sent at this
    moment is a 409 `delivery_in_progress`."""
    return await service.redeliver(session, user_id=user.id, delivery_id=delivery_id)


# Documentation only (OpenAPI `webhooks`): what an endpoint receives. Nothing is served here.
events = APIRouter()


def _receiver_doc(event: str) -> None:
    @events.post(
        event,
        summary=f"`{event}` (sent to your endpoint)",
        response_description="Any 2xx ends the delivery; anything else, or no answer within "
        "WEBHOOK_TIMEOUT_SECONDS, is retried.",
    )
    async def receive(
        body: WebhookMessage,
        webhook_id: Annotated[str, Header(description="The delivery's id.")],
        webhook_timestamp: Annotated[str, Header(description="Unix seconds of this POST.")],
        webhook_signature: Annotated[
            str,
            Header(description='`v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`'),
        ],
    ) -> None:
        """POSTed to your endpoint when one of your prompts reaches this status. Check the
        signature over the raw body before trusting it (README, *Webhooks*)."""


for _event in WebhookEvent:
    _receiver_doc(_event.value)
