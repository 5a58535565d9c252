"""ORM models, one module per table. Importing this package registers them all."""

from app.models.api_key import ApiKey
from app.models.prompt_attempt import PromptAttempt
from app.models.prompt_request import PromptRequest, PromptStatus
from app.models.prompt_response import PromptResponse
from app.models.user import User

__all__ = [
    "ApiKey",
    "PromptAttempt",
    "PromptRequest",
    "PromptResponse",
    "PromptStatus",
    "User",
]
