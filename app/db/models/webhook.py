"""Webhook endpoints, their deliveries and each delivery's HTTP attempts.

The three tables live together because none is meaningful alone: a delivery is one prompt
outcome for one endpoint, an attempt is one POST of a delivery.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, JSONType, UTCDateTime, utcnow
from app.db.models.prompt import PromptRequest, PromptStatus


class WebhookEvent(enum.StrEnum):
    PROMPT_COMPLETED = "prompt.completed"
    PROMPT_FAILED = "prompt.failed"
    PROMPT_CANCELLED = "prompt.cancelled"
    # A budget's spending crossed its warning share (`warn_at`): once per budget period.
    BUDGET_THRESHOLD = "budget.threshold"


EVENT_OF_STATUS = {
    PromptStatus.COMPLETED: WebhookEvent.PROMPT_COMPLETED,
    PromptStatus.FAILED: WebhookEvent.PROMPT_FAILED,
    PromptStatus.CANCELLED: WebhookEvent.PROMPT_CANCELLED,
}


class DeliveryStatus(enum.StrEnum):
    """`pending → sending → delivered`, or back to `pending` (a retry) until `failed`."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEndpoint(Base):
    """A URL of a user's that is told when their prompts finish.

    The events are one boolean each, not a list, so that the pump's query can match a prompt's
    final status to them in plain SQL on both databases. The secret signs the deliveries; it is
    returned once, when created or rotated, and never again, and stored sealed under the
    server's keys (`app/kit/sealing.py`), so the database alone does not reveal it.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500))
    sealed_secret: Mapped[str] = mapped_column(String(255))
    on_prompt_completed: Mapped[bool] = mapped_column(Boolean, default=False)
    on_prompt_failed: Mapped[bool] = mapped_column(Boolean, default=False)
    on_prompt_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    on_budget_threshold: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The pump's durable watermark: every prompt that finished before it has its delivery.
    scanned_until: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def events(self) -> list[WebhookEvent]:
        flags = {
            WebhookEvent.PROMPT_COMPLETED: self.on_prompt_completed,
            WebhookEvent.PROMPT_FAILED: self.on_prompt_failed,
            WebhookEvent.PROMPT_CANCELLED: self.on_prompt_cancelled,
            WebhookEvent.BUDGET_THRESHOLD: self.on_budget_threshold,
        }
        return [event for event, on in flags.items() if on]

    def subscribe(self, events: list[WebhookEvent]) -> None:
        self.on_prompt_completed = WebhookEvent.PROMPT_COMPLETED in events
        self.on_prompt_failed = WebhookEvent.PROMPT_FAILED in events
        self.on_prompt_cancelled = WebhookEvent.PROMPT_CANCELLED in events
        self.on_budget_threshold = WebhookEvent.BUDGET_THRESHOLD in events


class WebhookDelivery(Base):
    """One prompt outcome (or one budget warning) to announce to one endpoint: the unit of
    retry and of the log.

    Unique per (endpoint, prompt, event), so pumps in several processes that find the same
    finished prompt create it once. `attempts` only grows (it fences a claim, as a prompt's
    does); `attempts_at_requeue` is its value when a redelivery was asked for, so each round
    gets WEBHOOK_MAX_ATTEMPTS POSTs.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sending', 'delivered', 'failed')", name="status"),
        UniqueConstraint("endpoint_id", "prompt_id", "event"),
        # The endpoint's delivery log, newest first.
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        # The pump's claim: due pending rows, expired sending ones.
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    # The prompt it announces; None for an event about something else (`budget.threshold`),
    # whose message is `payload`.
    prompt_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("prompt_requests.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempts_at_requeue: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        lazy="raise", order_by="WebhookAttempt.attempted_at"
    )


class WebhookAttempt(Base):
    """One POST of a delivery: what the receiver answered, or why there was no answer."""

    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))


# Defined here rather than with the table because it serves the webhook pump alone: its
# query reads a subscribed user's prompts by finish time (app/services/webhooks/queue.py).
Index("ix_prompt_requests_user_finished", PromptRequest.user_id, PromptRequest.finished_at)
