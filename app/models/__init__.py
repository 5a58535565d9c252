"""ORM models, one module per table. Importing this package registers them all."""

from app.models.api_key import ApiKey
from app.models.idempotency_key import IdempotencyKey
from app.models.prompt_attempt import PromptAttempt
from app.models.prompt_request import IS_PENDING, NewPrompt, PromptRequest, PromptStatus
from app.models.prompt_response import PromptResponse
from app.models.prompt_type import PromptType
from app.models.user import User
from app.models.webhook import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "IS_PENDING",
    "ApiKey",
    "DeliveryStatus",
    "IdempotencyKey",
    "NewPrompt",
    "PromptAttempt",
    "PromptRequest",
    "PromptResponse",
    "PromptStatus",
    "PromptType",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
