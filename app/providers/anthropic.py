"""Anthropic's Messages API through the official `anthropic` SDK (2.x).

SDK 2.x sends API version 2026-10-21 on every request, and that version removed the sampling
parameters: `temperature`, `top_p` and `top_k` are answered 400 even at their defaults, and the
SDK no longer accepts them. So `max_temperature` is None: a prompt for Anthropic that sets a
temperature is refused at submission with 422 `unsupported_parameter`, never silently dropped.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import anthropic
from anthropic import AsyncAnthropic, AsyncAPIResponse
from anthropic.types import MessageParam, TextBlock, Usage

from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Completion,
    CompletionRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    Message,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    estimate_tokens,
    retry_after_seconds,
)
from app.providers.transport import is_connection_failure

DEFAULT_BASE_URL = "https://api.anthropic.com"
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The answer was cut short because the context window filled up: a truncation, as above.
    "model_context_window_exceeded": "length",
}


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> AsyncAnthropic:
    """One client per process. The SDK's own retries are off: the gateway owns that loop, so
    every upstream call is counted and billed once. The aiohttp transport is vendored in the
    SDK (it needs only `aiohttp`) and, unlike openai's, reports a refused connection as a
    connection error rather than a timeout. The base URL is always given, so the SDK never
    falls back to `ANTHROPIC_BASE_URL` from the environment behind the settings' back (the
    explicit key likewise stops it reading `ANTHROPIC_API_KEY` / `ANTHROPIC_AUTH_TOKEN`)."""
    return AsyncAnthropic(
        api_key=api_key,
        base_url=base_url or DEFAULT_BASE_URL,
        max_retries=0,
        timeout=anthropic.Timeout(timeout, connect=connect_timeout),
        http_client=anthropic.DefaultAioHttpClient(),
    )


def to_anthropic_messages(messages: list[Message]) -> tuple[str | None, list[MessageParam]]:
    """System messages become the top-level `system` prompt (joined); the rest are turns."""
    system: list[str] = []
    turns: list[MessageParam] = []
    for message in messages:
        if message["role"] == "system":
            system.append(message["content"])
        elif message["role"] == "user":
            turns.append({"role": "user", "content": message["content"]})
        else:
            turns.append({"role": "assistant", "content": message["content"]})
    return ("\n\n".join(system) if system else None), turns


class AnthropicProvider:
    max_temperature = None  # not accepted at all by API version 2026-10-21

    def __init__(
        self, client: AsyncAnthropic, *, default_max_tokens: int, name: str = "anthropic"
    ) -> None:
        self.name = name
        self._client = client
        self._default_max_tokens = default_max_tokens  # the Messages API requires max_tokens

    async def complete(self, request: CompletionRequest) -> Completion:
        if request.temperature is not None:  # refused at submission; never dropped here
            raise BadRequest(f"{self.name} does not accept a temperature")
        system, turns = to_anthropic_messages(request.messages)
        max_tokens = request.max_tokens
        # Always given: with no timeout and a client left on the SDK's default one, the SDK
        # refuses non-streamed calls whose max_tokens it guesses could take over 10 minutes.
        timeout = request.timeout if request.timeout is not None else self._client.timeout
        try:
            # The SDK's timeouts are per phase (connect, each read); this makes the request's
            # timeout a deadline for the whole call, as CompletionRequest promises.
            async with asyncio.timeout(request.timeout):
                raw = await self._client.messages.with_raw_response.create(
                    model=request.model,
                    max_tokens=max_tokens if max_tokens is not None else self._default_max_tokens,
                    messages=turns,
                    system=system if system is not None else anthropic.omit,
                    timeout=timeout,
                )
        except TimeoutError:
            raise ProviderTimeout(f"{self.name} did not answer in time") from None
        except anthropic.APIError as exc:
            key = self._client.api_key
            raise map_anthropic_error(exc, provider=self.name, api_key=key) from None
        reply = await _parse(raw)
        if reply is None:
            raise MalformedResponse(
                f"{self.name} sent a response that could not be read", status=raw.status_code
            )
        return self._completion(request, reply, status=raw.status_code)

    def _completion(
        self, request: CompletionRequest, reply: anthropic.types.Message, *, status: int
    ) -> Completion:
        if reply.stop_reason == "refusal":
            category = reply.stop_details.category if reply.stop_details else None
            raise ContentFiltered(
                f"{self.name} declined to answer under its usage policy"
                + (f" (category: {category})" if category else ""),
                status=status,
            )
        text = "".join(block.text for block in reply.content if isinstance(block, TextBlock))
        usage: Usage | None = reply.usage  # None when the vendor sent none
        if usage is not None and isinstance(usage.input_tokens, int):
            cache_read = usage.cache_read_input_tokens or 0
            # Anthropic counts prompt-cache reads and writes apart from input_tokens.
            input_tokens = usage.input_tokens + (usage.cache_creation_input_tokens or 0)
            input_tokens += cache_read
            output_tokens, reported = usage.output_tokens, True
        else:
            cache_read = 0
            input_tokens = estimate_tokens(" ".join(m["content"] for m in request.messages))
            output_tokens, reported = estimate_tokens(text), False
        reason = str(reply.stop_reason) if reply.stop_reason else None
        return Completion(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_reported=reported,
            finish_reason=_FINISH_REASONS.get(reason, reason.lower()) if reason else None,
            upstream_model=reply.model or request.model,
            cached_input_tokens=cache_read,
        )

    async def aclose(self) -> None:
        await self._client.close()


async def _parse(raw: AsyncAPIResponse[anthropic.types.Message]) -> anthropic.types.Message | None:
    """The reply, or None when it is not one. The SDK parses leniently: a body that is not
    JSON raises, a non-JSON content type comes back as text, and a JSON object of another
    shape as a Message whose fields are None."""
    try:
        reply: object = await raw.parse()
    except (ValueError, anthropic.APIResponseValidationError):
        return None
    if not isinstance(reply, anthropic.types.Message) or not isinstance(reply.content, list):
        return None
    return reply


def map_anthropic_error(
    exc: anthropic.APIError, *, provider: str, api_key: str | None = None
) -> ProviderError:
    """Translate an SDK exception into our error tree. Messages come from the vendor's error
    body or are written here, and never carry the API key."""
    if isinstance(exc, anthropic.APIConnectionError):  # APITimeoutError included
        if isinstance(exc, anthropic.APITimeoutError) and not is_connection_failure(exc):
            return ProviderTimeout(f"{provider} did not answer in time")
        if _never_connected(exc):
            return ConnectionFailed(f"could not connect to {provider}")
        return ConnectionFailed(f"the connection to {provider} failed or was dropped")
    if isinstance(exc, anthropic.APIResponseValidationError):
        return MalformedResponse(
            f"{provider} sent a response that could not be read", status=exc.status_code
        )
    if not isinstance(exc, anthropic.APIStatusError):
        return MalformedResponse(f"{provider} sent a response that could not be read")
    status = exc.status_code
    detail = _vendor_message(exc, api_key)
    message = f"{provider}: {detail}"
    if status in (401, 403):
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({detail})", status=status
        )
    retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    if status >= 500:  # 529 is Anthropic's "overloaded"
        return Unavailable(message, status=status, retry_after=retry_after)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if status == 400 and "prompt is too long" in detail.lower():
        return ContextLengthExceeded(message, status=status)
    return BadRequest(message, status=status)


def _vendor_message(exc: anthropic.APIStatusError, api_key: str | None) -> str:
    text = exc.api_message if isinstance(exc.api_message, str) else f"HTTP {exc.status_code}"
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return text[:500]


def _never_connected(exc: BaseException) -> bool:
    """Whether the connection was never made (refused, unresolvable host), as opposed to one
    that broke after the request went out, which the upstream may have acted on."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(
            seen, ConnectionRefusedError | socket.gaierror | aiohttp.ClientConnectorError
        ):
            return True
        seen = seen.__cause__
    return False
