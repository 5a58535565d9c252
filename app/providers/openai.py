"""OpenAI, and anything speaking its chat-completions API, through the official `openai` SDK."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import openai
from openai import AsyncOpenAI

from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Completion,
    CompletionRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    estimate_tokens,
    retry_after_seconds,
)
from app.providers.transport import is_connection_failure


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> AsyncOpenAI:
    """One client per process. The SDK's own retries are off: the gateway owns that loop so
    that every upstream call is counted and billed once. The aiohttp transport holds up far
    better than the default one under many concurrent calls (WIRE-FORMATS.md)."""
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(timeout, connect=connect_timeout),
        http_client=openai.DefaultAioHttpClient(),
    )


class OpenAIProvider:
    max_temperature = 2.0

    def __init__(self, client: AsyncOpenAI, *, name: str = "openai") -> None:
        self.name = name
        self._client = client

    async def complete(self, request: CompletionRequest) -> Completion:
        try:
            # The SDK's timeout bounds each phase (connect, each read); this makes the
            # request's timeout a deadline for the whole call, as CompletionRequest promises.
            async with asyncio.timeout(request.timeout):
                reply = await self._client.chat.completions.create(
                    model=request.model,
                    messages=list(request.messages),  # type: ignore[arg-type]
                    temperature=_given(request.temperature),
                    max_tokens=_given(request.max_tokens),
                    timeout=request.timeout if request.timeout is not None else openai.NOT_GIVEN,
                )
        except TimeoutError:
            raise ProviderTimeout(f"{self.name} did not answer in time") from None
        except openai.APIError as exc:
            raise map_openai_error(exc, provider=self.name) from None
        except ValueError:  # the SDK lets a body that is not JSON through as JSONDecodeError
            raise MalformedResponse(f"{self.name} sent a response that is not JSON") from None
        if not reply.choices:
            raise MalformedResponse(f"{self.name} answered with no choices")
        choice = reply.choices[0]
        if choice.finish_reason == "content_filter":
            raise ContentFiltered(f"{self.name} withheld the answer under its content policy")
        text = choice.message.content or ""
        cached = 0
        if reply.usage is not None:
            input_tokens = reply.usage.prompt_tokens
            output_tokens = reply.usage.completion_tokens
            details = reply.usage.prompt_tokens_details
            cached = (details.cached_tokens or 0) if details is not None else 0
            reported = True
        else:
            input_tokens = estimate_tokens(" ".join(m["content"] for m in request.messages))
            output_tokens = estimate_tokens(text)
            reported = False
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_reported=reported,
            finish_reason=choice.finish_reason,
            upstream_model=reply.model or request.model,
            cached_input_tokens=cached,
        )

    async def aclose(self) -> None:
        await self._client.close()


_Number = TypeVar("_Number", int, float)


def _given(value: _Number | None) -> _Number | openai.Omit:
    return value if value is not None else openai.omit


def _vendor_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:500]
    return f"HTTP {exc.status_code}"


def map_openai_error(exc: openai.APIError, *, provider: str) -> ProviderError:
    """Translate an SDK exception into our error tree. Messages never include the API key:
    they come from the vendor's error body or are written here."""
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        if is_connection_failure(exc):
            return ConnectionFailed(f"the connection to {provider} failed or was dropped")
        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeout(f"{provider} did not answer in time")
        return ConnectionFailed(f"could not connect to {provider}")
    if not isinstance(exc, openai.APIStatusError):
        return MalformedResponse(f"{provider} sent a response that could not be read")
    status = exc.status_code
    message = f"{provider}: {_vendor_message(exc)}"
    if status in (401, 403):
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({_vendor_message(exc)})",
            status=status,
        )
    retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if status >= 500:
        return Unavailable(message, status=status, retry_after=retry_after)
    code = ""
    if isinstance(exc.body, dict):
        inner = exc.body.get("error", exc.body)
        code = str(inner.get("code") or "") if isinstance(inner, dict) else ""
    if code == "context_length_exceeded":
        return ContextLengthExceeded(message, status=status)
    if code == "content_filter" or code == "content_policy_violation":
        return ContentFiltered(message, status=status)
    return BadRequest(message, status=status)
