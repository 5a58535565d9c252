"""How a failed provider call is answered under /v1: the status an OpenAI SDK expects for it."""

from __future__ import annotations

from app.kit.errors import AppError
from app.providers.base import ProviderError

# Provider error codes → the HTTP status a client of an OpenAI-compatible API expects.
_UPSTREAM_STATUS = {
    "rate_limited": 429,
    "bad_request": 400,
    "context_length_exceeded": 400,
    "content_filtered": 400,
    "provider_unavailable": 503,
    "circuit_open": 503,
    "provider_not_configured": 503,
    "timeout": 504,
    "internal_error": 500,
}


class UpstreamFailed(AppError):
    """The provider call failed (after the retries and fallbacks): the prompt is `failed`
    with this code. The status follows the failure, 502 when nothing more specific fits
    (a connection error, a malformed answer, the upstream rejecting this server's key)."""

    title = "Upstream failure"

    def __init__(self, error: ProviderError, *, message: str | None = None) -> None:
        headers = None
        if error.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(error.retry_after)))}
        super().__init__(message or error.message, code=error.code, headers=headers)
        self.status_code = _UPSTREAM_STATUS.get(error.code, 502)
