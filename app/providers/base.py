"""The narrow, typed boundary every provider adapter sits behind, and our own error tree.

Adapters translate vendor errors into `ProviderError` subclasses at the boundary, so the rest
of the system decides retry / fallback / fail on our codes, never on a vendor's exception type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str  # the upstream model name, as the provider knows it
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None  # total seconds for this call; None: the client's default


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    usage_reported: bool  # False: the provider sent no usage and the counts are estimates
    finish_reason: str | None
    upstream_model: str
    cached_input_tokens: int = 0  # of input_tokens, those served from the vendor's prompt cache


class Provider(Protocol):
    name: str

    @property
    def max_temperature(self) -> float | None:
        """The highest temperature the vendor accepts; None: it accepts none at all."""

    async def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[str | Completion]:
        """The same call, streamed: yields the answer's text as it arrives (non-empty `str`
        deltas), then exactly one `Completion` (the whole text, usage, finish reason) last.
        Fails with the same `ProviderError`s as `complete`, before or after some deltas;
        closing the iterator early abandons the upstream call."""
        ...

    async def aclose(self) -> None: ...


class ProviderError(Exception):
    """A provider call that did not produce an answer. `code` is stable and shown to users."""

    code = "provider_error"
    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message  # for users: never holds a key or a stack trace
        self.status = status  # the upstream HTTP status, when there was one
        self.retry_after = retry_after  # seconds, from the vendor's Retry-After header


class RateLimited(ProviderError):
    code = "rate_limited"
    retryable = True


class Unavailable(ProviderError):
    """5xx, and Anthropic's 529 "overloaded"."""

    code = "provider_unavailable"
    retryable = True


class ProviderTimeout(ProviderError):
    code = "timeout"
    retryable = True


class ConnectionFailed(ProviderError):
    code = "connection_error"
    retryable = True


class AuthenticationFailed(ProviderError):
    code = "authentication_failed"


class BadRequest(ProviderError):
    code = "bad_request"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class ContentFiltered(ProviderError):
    code = "content_filtered"


class ProviderNotConfigured(ProviderError):
    """The prompt names a provider this server no longer has (its configuration changed)."""

    code = "provider_not_configured"


class AdapterFailed(ProviderError):
    """An adapter raised something other than a ProviderError: a bug, logged in full."""

    code = "internal_error"


class MalformedResponse(ProviderError):
    code = "malformed_response"
    retryable = True


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is rare from these vendors)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def estimate_tokens(text: str) -> int:
    """A rough count (about four characters a token) for providers that report no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimate_prompt_tokens(request: CompletionRequest) -> int:
    """`estimate_tokens` of everything the request sends (its messages, one separator apart)."""
    return estimate_tokens(" ".join(m["content"] for m in request.messages))
