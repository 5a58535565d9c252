"""ORM models: one module per table, and one for a prompt with its attempts and response.
Importing this package registers them all."""

from app.db.models.api_key import ApiKey
from app.db.models.audit import AuditEntry
from app.db.models.idempotency_key import IdempotencyKey
from app.db.models.limits import (
    DEFAULT_SUBJECT,
    BudgetPeriod,
    Limit,
    LimitScope,
    LimitUsage,
    Reservation,
)
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
from app.db.models.usage import UsageDaily
from app.db.models.user import User
from app.db.models.webhook import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "DEFAULT_SUBJECT",
    "IS_PENDING",
    "ApiKey",
    "AuditEntry",
    "BudgetPeriod",
    "DeliveryStatus",
    "IdempotencyKey",
    "Limit",
    "LimitScope",
    "LimitUsage",
    "NewPrompt",
    "PromptAttempt",
    "PromptRequest",
    "PromptResponse",
    "PromptStatus",
    "PromptType",
    "Reservation",
    "Team",
    "TeamMember",
    "TeamRole",
    "UsageDaily",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
