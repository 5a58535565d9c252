"""ORM models: one module per table, and one for a prompt with its attempts and response.
Importing this package registers them all."""

from app.db.models.api_key import ApiKey
from app.db.models.audit import AuditEntry
from app.db.models.idempotency_key import IdempotencyKey
from app.db.models.prompt import (
    IS_PENDING,
    NewPrompt,
    PromptAttempt,
    PromptRequest,
    PromptResponse,
    PromptStatus,
)
from app.db.models.prompt_type import PromptType
from app.db.models.team import Team, TeamMember, TeamRole
from app.db.models.user import User
from app.db.models.webhook import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "IS_PENDING",
    "ApiKey",
    "AuditEntry",
    "DeliveryStatus",
    "IdempotencyKey",
    "NewPrompt",
    "PromptAttempt",
    "PromptRequest",
    "PromptResponse",
    "PromptStatus",
    "PromptType",
    "Team",
    "TeamMember",
    "TeamRole",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
