"""What the /webhooks API reads and returns, and the message a receiver gets.

The secret appears in one schema only, `WebhookCreated`, which is returned when an endpoint is
created or its secret rotated; every other answer is a `WebhookOut`, which has no field for it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEvent
from app.kit.text import Text
from app.services.prompts.schemas import PromptDetail

MAX_URL_CHARS = 2048

Events = Annotated[
    list[WebhookEvent],
    Field(
        min_length=1,
        max_length=len(WebhookEvent),
        description="What to be told about: `prompt.completed`, `prompt.failed`, "
        "`prompt.cancelled` (your prompts), `budget.threshold` (a budget you answer for — "
        "your own, your keys', your teams' as their owner — passed its warning share).",
        examples=[["prompt.completed", "prompt.failed"]],
    ),
]
# The length is checked by the service, so that every unusable URL is one error code.
Url = Annotated[
    Text,
    Field(
        max_length=4 * MAX_URL_CHARS,
        description=f"Where to POST: an absolute http:// or https:// URL, at most "
        f"{MAX_URL_CHARS} characters, without user:password@, and not on this server's own "
        "networks (loopback, private, link-local, ... addresses; OUTBOUND_ALLOWLIST lets the "
        "operator allow some).",
        examples=["https://example.com/hooks/prompt-manager"],
    ),
]
Description = Annotated[Text | None, Field(max_length=500, description="A note of yours.")]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url
    events: Events
    description: Description = None


class WebhookUpdate(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    events: Events | None = None
    description: Description = None
    enabled: bool | None = Field(
        None,
        description="`false` stops deliveries (pending ones wait); prompts that finish while "
        "disabled are not announced later.",
    )


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    events: list[WebhookEvent]
    description: str | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signs every delivery (see `Webhook-Signature`). Shown this once: store "
        "it now. Lost? `POST /webhooks/{id}/rotate-secret`.",
        examples=["whsec_kq3c0PZ6p0-2x6Vw2yXhYc0L3p0W8fA9x1mR4v7bN5E"],
    )


class DeliveryAttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime
    duration_ms: int
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None = Field(
        description="Why there was no answer: `timeout: …`, `unreachable: …` (no HTTP answer: "
        "the connection failed or was dropped), `blocked: …` (an address this server may not "
        "reach), `secret_unreadable: …`, `internal_error: …` (the message could not be built).",
        examples=["timeout: no answer within 10 s"],
    )


class DeliveryOut(BaseModel):
    id: uuid.UUID = Field(description="Also the `Webhook-Id` header and the message's `id`.")
    endpoint_id: uuid.UUID
    prompt_id: uuid.UUID | None = Field(description="The prompt announced (null: a budget's).")
    event: WebhookEvent
    status: str = Field(
        description="`pending` (waiting for its next attempt), `sending`, `delivered` (a 2xx "
        "answer), `failed` (WEBHOOK_MAX_ATTEMPTS attempts without one).",
        examples=["delivered"],
    )
    attempts: int = Field(description="POSTs made, redeliveries included.")
    next_attempt_at: datetime | None = Field(description="When pending: its next attempt.")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[DeliveryAttemptOut] = Field(description="Every POST, oldest first.")

    @classmethod
    def from_delivery(
        cls, delivery: WebhookDelivery, attempts: list[WebhookAttempt]
    ) -> DeliveryOut:
        return cls(
            id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            prompt_id=delivery.prompt_id,
            event=WebhookEvent(delivery.event),
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            attempt_log=[DeliveryAttemptOut.model_validate(a) for a in attempts],
        )


class WebhookMessage(BaseModel):
    """The JSON body POSTed to an endpoint."""

    id: uuid.UUID = Field(description="The delivery's id, the same on every retry.")
    type: WebhookEvent
    created_at: datetime = Field(description="When the delivery was created.")
    data: PromptDetail | BudgetThreshold = Field(
        description="`prompt.*`: the prompt, as `GET /ai/prompts/{id}` returns it; "
        "`budget.threshold`: the budget and its period's spending."
    )


class BudgetThreshold(BaseModel):
    """A budget whose spending in its period passed `warn_at` of it (sent once a period)."""

    scope: str = Field(description="`key`, `user` or `team`.", examples=["team"])
    subject_id: uuid.UUID
    budget_usd: str = Field(examples=["25"])
    spent_usd: str = Field(examples=["20.0132"])
    reserved_usd: str = Field(description="Held by prompts running now.", examples=["0.0431"])
    warn_at: float = Field(examples=[0.8])
    period: str = Field(description="`day`, `week` or `month` (UTC).", examples=["month"])
    period_start: str = Field(examples=["2026-12-01"])
    period_end: str = Field(description="The next period's first day.", examples=["2027-01-01"])
