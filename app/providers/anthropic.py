"""Anthropic's Messages API through the official `anthropic` SDK (2.x).

SDK 2.x sends API version 2026-10-21 on every request, and that version removed the sampling
parameters: `temperature`, `top_p` and `top_k` are answered 400 even at their defaults, and the
SDK no longer accepts them. So `max_temperature` is None: a prompt for Anthropic that sets a
temperature is refused at submission with 422 `unsupported_parameter`, never silently dropped.

Streams are `messages.create(stream=True)`, read an event at a time (`anext`) and closed on the
way out, which closes the HTTP response. Unlike openai's, this SDK does not wrap what the
transport raises while a stream is read: those arrive as bare `httpx2` errors and are mapped
here. An `error` event inside a stream that began 200 OK (Anthropic sends `overloaded_error` so
under load) is mapped by its error type, as the status that type stands for would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass

import aiohttp
import anthropic
import httpx2
from anthropic import AsyncAnthropic, AsyncAPIResponse
from anthropic.types import (
    MessageDeltaUsage,
    MessageParam,
    RawMessageStreamEvent,
    RefusalStopDetails,
    TextBlock,
    Usage,
)

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
    estimate_prompt_tokens,
    estimate_tokens,
    retry_after_seconds,
)
from app.providers.transport import is_connection_failure

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_STREAM_SECONDS = 600.0  # the SDK's own default timeout, for a client built without one
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The answer was cut short because the context window filled up: a truncation, as above.
    "model_context_window_exceeded": "length",
}
# The status each error type stands for, for an `error` event inside a 200 OK stream.
_ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
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
    kind = "anthropic"

    def __init__(
        self, client: AsyncAnthropic, *, default_max_tokens: int, name: str = "anthropic"
    ) -> None:
        self.name = name
        self._client = client
        self._default_max_tokens = default_max_tokens  # the Messages API requires max_tokens

    async def complete(self, request: CompletionRequest) -> Completion:
        system, turns, max_tokens = self._prepared(request)
        with self._sdk_errors():
            # The SDK's timeouts are per phase (connect, each read); this makes the request's
            # timeout a deadline for the whole call, as CompletionRequest promises.
            async with asyncio.timeout(request.timeout):
                raw = await self._client.messages.with_raw_response.create(
                    model=request.model,
                    max_tokens=max_tokens,
                    messages=turns,
                    system=system if system is not None else anthropic.omit,
                    timeout=self._timeout(request),
                )
        reply = await _parse(raw)
        if reply is None:
            raise MalformedResponse(
                f"{self.name} sent a response that could not be read", status=raw.status_code
            )
        text = "".join(block.text for block in reply.content if isinstance(block, TextBlock))
        return _completion(
            request,
            _Answer(text, reply.usage, reply.stop_reason, reply.stop_details, reply.model),
            provider=self.name,
            status=raw.status_code,
        )

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        system, turns, max_tokens = self._prepared(request)
        deadline = asyncio.get_running_loop().time() + _seconds(request, self._client.timeout)
        with self._sdk_errors():
            async with asyncio.timeout_at(deadline):
                events = await self._client.messages.create(
                    model=request.model,
                    max_tokens=max_tokens,
                    messages=turns,
                    system=system if system is not None else anthropic.omit,
                    stream=True,
                    timeout=self._timeout(request),
                )
        answer = _StreamedAnswer()
        status = events.response.status_code
        try:
            while (event := await self._next(events, deadline)) is not None:
                if text := answer.add(event):
                    yield text
        finally:
            await events.close()
        if answer.stop_reason is None:  # cut off, though the connection ended cleanly
            raise MalformedResponse(
                f"{self.name} ended its stream before the answer did", status=status
            )
        yield _completion(request, answer.answer(), provider=self.name, status=status)

    async def aclose(self) -> None:
        await self._client.close()

    def _prepared(self, request: CompletionRequest) -> tuple[str | None, list[MessageParam], int]:
        """The system prompt, the turns and max_tokens, the same streamed or not."""
        if request.temperature is not None:  # refused at submission; never dropped here
            raise BadRequest(f"{self.name} does not accept a temperature")
        system, turns = to_anthropic_messages(request.messages)
        max_tokens = request.max_tokens
        return system, turns, max_tokens if max_tokens is not None else self._default_max_tokens

    def _timeout(self, request: CompletionRequest) -> float | anthropic.Timeout | None:
        # Always given: with no timeout and a client left on the SDK's default one, the SDK
        # refuses non-streamed calls whose max_tokens it guesses could take over 10 minutes.
        return request.timeout if request.timeout is not None else self._client.timeout

    async def _next(
        self, events: anthropic.AsyncStream[RawMessageStreamEvent], deadline: float
    ) -> RawMessageStreamEvent | None:
        with self._sdk_errors(status=events.response.status_code):
            async with asyncio.timeout_at(deadline):
                return await anext(events, None)

    @contextlib.contextmanager
    def _sdk_errors(self, *, status: int | None = None) -> Iterator[None]:
        """What the SDK, its transport or our deadline raised, as our errors. `status`: that
        of a stream being read, whose transport errors the SDK passes on as they are."""
        try:
            yield
        except TimeoutError:  # httpx2.TimeoutException is not one
            raise ProviderTimeout(f"{self.name} did not answer in time") from None
        except anthropic.APIError as exc:
            key = self._client.api_key
            raise map_anthropic_error(exc, provider=self.name, api_key=key) from None
        except httpx2.TimeoutException:
            raise ProviderTimeout(f"{self.name} did not answer in time") from None
        except httpx2.TransportError:
            raise ConnectionFailed(f"the connection to {self.name} failed or was dropped") from None
        except ValueError:  # an event whose data is not JSON
            raise MalformedResponse(
                f"{self.name} sent a response that could not be read", status=status
            ) from None


@dataclass(frozen=True, slots=True)
class _Answer:
    """What `_completion` reads of a reply, whole or streamed."""

    text: str
    usage: Usage | None  # None when the vendor sent none
    stop_reason: str | None
    stop_details: RefusalStopDetails | None
    model: str | None


class _StreamedAnswer:
    """What the events of a stream add up to: the text of its `text_delta`s, the usage of
    `message_start` brought up to date by `message_delta` (whose counts are running totals),
    and the stop reason and details of `message_delta`."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._usage: Usage | None = None
        self._model: str | None = None
        self.stop_reason: str | None = None
        self._stop_details: RefusalStopDetails | None = None

    def add(self, event: RawMessageStreamEvent) -> str:
        """Returns the text the event adds to the answer (maybe none)."""
        if event.type == "message_start":
            self._model = event.message.model
            self._usage = getattr(event.message, "usage", None)  # the SDK parses leniently
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            self._pieces.append(event.delta.text)
            return event.delta.text
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason
            self._stop_details = event.delta.stop_details
            self._usage = _updated(self._usage, getattr(event, "usage", None))
        return ""

    def answer(self) -> _Answer:
        text = "".join(self._pieces)
        return _Answer(text, self._usage, self.stop_reason, self._stop_details, self._model)


def _updated(usage: Usage | None, delta: MessageDeltaUsage | None) -> Usage | None:
    if usage is None or delta is None:
        return usage
    totals = {
        "input_tokens": delta.input_tokens,
        "cache_creation_input_tokens": delta.cache_creation_input_tokens,
        "cache_read_input_tokens": delta.cache_read_input_tokens,
    }
    update = {name: count for name, count in totals.items() if count is not None}
    return usage.model_copy(update={**update, "output_tokens": delta.output_tokens})


def _seconds(request: CompletionRequest, client_timeout: float | anthropic.Timeout | None) -> float:
    """A stream's deadline: the request's timeout, else the client's, over the whole call."""
    if request.timeout is not None:
        return request.timeout
    if isinstance(client_timeout, anthropic.Timeout):
        client_timeout = client_timeout.read
    return client_timeout if client_timeout is not None else DEFAULT_STREAM_SECONDS


def _completion(
    request: CompletionRequest, answer: _Answer, *, provider: str, status: int
) -> Completion:
    if answer.stop_reason == "refusal":
        category = answer.stop_details.category if answer.stop_details else None
        raise ContentFiltered(
            f"{provider} declined to answer under its usage policy"
            + (f" (category: {category})" if category else ""),
            status=status,
        )
    usage = answer.usage
    if usage is not None and isinstance(usage.input_tokens, int):
        cache_read = usage.cache_read_input_tokens or 0
        # Anthropic counts prompt-cache reads and writes apart from input_tokens.
        input_tokens = usage.input_tokens + (usage.cache_creation_input_tokens or 0)
        input_tokens += cache_read
        output_tokens, reported = usage.output_tokens, True
    else:
        cache_read = 0
        input_tokens = estimate_prompt_tokens(request)
        output_tokens, reported = estimate_tokens(answer.text), False
    reason = str(answer.stop_reason) if answer.stop_reason else None
    return Completion(
        text=answer.text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=reported,
        finish_reason=_FINISH_REASONS.get(reason, reason.lower()) if reason else None,
        upstream_model=answer.model or request.model,
        cached_input_tokens=cache_read,
    )


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
    if status < 400:  # an `error` event inside a stream that began 200 OK
        status = _ERROR_EVENT_STATUS.get(str(exc.type), 500)
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
