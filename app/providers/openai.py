"""OpenAI, and anything speaking its chat-completions API, through the official `openai` SDK.

A stream is read with `anext` on the SDK's `AsyncStream` (never `async for`, whose hidden
wrapper generator would outlive an early close) and closed on the way out, which closes its
HTTP response: an abandoned stream abandons the upstream call. Its deadline (the request's
timeout, else the client's) bounds the whole stream, as the direct adapter's does: it applies to
each read and is never held open across a `yield`, so a quiet stream fails as a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import TypeVar, cast

import openai
from openai import AsyncOpenAI
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from app.providers.base import (
    Completion,
    CompletionRequest,
    ConnectionFailed,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
)
from app.providers.openai_http import dropped
from app.providers.openai_wire import build_completion, map_finish_reason, status_error
from app.providers.transport import is_connection_failure

DEFAULT_STREAM_SECONDS = 600.0  # the SDK's own default timeout, for a client built without one


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> AsyncOpenAI:
    """One client per process. The SDK's own retries are off: the gateway owns that loop so
    that every upstream call is counted and billed once. The aiohttp transport holds up far
    better than the default one under many concurrent calls (docs/wire-formats.md)."""
    return AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(timeout, connect=connect_timeout),
        http_client=openai.DefaultAioHttpClient(),
    )


class OpenAIProvider:
    max_temperature = 2.0
    kind = "openai"

    def __init__(self, client: AsyncOpenAI, *, name: str = "openai") -> None:
        self.name = name
        self._client = client

    async def complete(self, request: CompletionRequest) -> Completion:
        with _sdk_errors(self.name):
            # The SDK's timeout bounds each phase (connect, each read); this makes the
            # request's timeout a deadline for the whole call, as CompletionRequest promises.
            async with asyncio.timeout(request.timeout):
                reply = await self._client.chat.completions.create(
                    model=request.model,
                    messages=_messages(request),
                    temperature=_given(request.temperature),
                    max_tokens=_given(request.max_tokens),
                    timeout=_timeout(request),
                )
        if not reply.choices:
            raise MalformedResponse(f"{self.name} answered with no choices")
        choice = reply.choices[0]
        finish_reason = map_finish_reason(choice.finish_reason, provider=self.name)
        text = choice.message.content or ""
        usage = _usage_json(reply.usage)
        return build_completion(
            request, text, finish_reason, reply.model, usage, provider=self.name
        )

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        deadline = asyncio.get_running_loop().time() + _seconds(request, self._client.timeout)
        with _sdk_errors(self.name):
            async with asyncio.timeout_at(deadline):
                chunks = await self._client.chat.completions.create(
                    model=request.model,
                    messages=_messages(request),
                    temperature=_given(request.temperature),
                    max_tokens=_given(request.max_tokens),
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=_timeout(request),
                )
        answer = _StreamedAnswer(provider=self.name)
        try:
            while (chunk := await self._next(chunks, deadline)) is not None:
                if delta := answer.add(chunk):
                    yield delta
        finally:
            await chunks.close()  # after the last chunk the SDK has closed it already
        yield answer.completion(request)

    async def aclose(self) -> None:
        await self._client.close()

    async def _next(
        self, chunks: openai.AsyncStream[ChatCompletionChunk], deadline: float
    ) -> ChatCompletionChunk | None:
        with _sdk_errors(self.name, reading=True):
            async with asyncio.timeout_at(deadline):
                return await anext(chunks, None)


class _StreamedAnswer:
    """What the chunks of a stream add up to, read as `complete` reads a whole reply."""

    def __init__(self, *, provider: str) -> None:
        self._provider = provider
        self._pieces: list[str] = []
        self._finish_reason: str | None = None
        self._model = ""
        self._usage: CompletionUsage | None = None

    def add(self, chunk: ChatCompletionChunk) -> str | None:
        """Returns the text the chunk adds to the answer, if any."""
        self._model = chunk.model or self._model
        if chunk.usage is not None:  # the last chunk, which has no choices
            self._usage = chunk.usage
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        finish = map_finish_reason(choice.finish_reason, provider=self._provider)
        self._finish_reason = finish or self._finish_reason
        text = choice.delta.content
        if text:
            self._pieces.append(text)
        return text or None

    def completion(self, request: CompletionRequest) -> Completion:
        if self._finish_reason is None:  # cut off, though the connection ended cleanly
            raise MalformedResponse(f"{self._provider} ended its stream before the answer did")
        text = "".join(self._pieces)
        usage = _usage_json(self._usage)
        return build_completion(
            request, text, self._finish_reason, self._model, usage, provider=self._provider
        )


@contextlib.contextmanager
def _sdk_errors(provider: str, *, reading: bool = False) -> Iterator[None]:
    """What the SDK (or our deadline) raised, as our errors. `reading`: the response had
    begun, so a connection error is one that was made and then lost."""
    try:
        yield
    except TimeoutError:
        raise ProviderTimeout(f"{provider} did not answer in time") from None
    except openai.APIError as exc:
        mapped = map_openai_error(exc, provider=provider)
        if reading and isinstance(mapped, ConnectionFailed):
            mapped = dropped(provider)
        raise mapped from None
    except ValueError:  # the SDK lets a body that is not JSON through as JSONDecodeError
        raise MalformedResponse(f"{provider} sent a response that is not JSON") from None


def _usage_json(usage: CompletionUsage | None) -> object:
    """The SDK's usage model as the JSON object it was read from, for
    `openai_wire.read_usage` (which reads it as the direct transport reads the bytes)."""
    if isinstance(usage, CompletionUsage):
        return usage.model_dump(warnings=False)
    return usage  # None (no usage), or what the SDK let through unread


_Number = TypeVar("_Number", int, float)


def _given(value: _Number | None) -> _Number | openai.Omit:
    return value if value is not None else openai.omit


def _messages(request: CompletionRequest) -> list[ChatCompletionMessageParam]:
    """Our messages are the SDK's system/user/assistant message params already."""
    return cast("list[ChatCompletionMessageParam]", list(request.messages))


def _seconds(request: CompletionRequest, client_timeout: float | openai.Timeout | None) -> float:
    """A stream's deadline: the request's timeout, else the client's, over the whole call
    (as the direct adapter has it: the setting is the total time of one call)."""
    if request.timeout is not None:
        return request.timeout
    if isinstance(client_timeout, openai.Timeout):
        client_timeout = client_timeout.read
    return client_timeout if client_timeout is not None else DEFAULT_STREAM_SECONDS


def _timeout(request: CompletionRequest) -> float | openai.NotGiven:
    """The SDK's per-phase timeout (the client's unless the request sets one); `omit` would
    not do here: the SDK looks for NOT_GIVEN."""
    return request.timeout if request.timeout is not None else openai.NOT_GIVEN


def map_openai_error(exc: openai.APIError, *, provider: str) -> ProviderError:
    """Translate an SDK exception into our error tree: a status error as
    `openai_wire.status_error` maps the same answer for the direct transport, from the status,
    the body and the Retry-After header the SDK kept. Messages never include the API key:
    they come from the vendor's error body or are written here."""
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        if is_connection_failure(exc):
            return ConnectionFailed(f"the connection to {provider} failed or was dropped")
        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeout(f"{provider} did not answer in time")
        return ConnectionFailed(f"could not connect to {provider}")
    if not isinstance(exc, openai.APIStatusError):
        return MalformedResponse(f"{provider} sent a response that could not be read")
    retry_after = exc.response.headers.get("retry-after")
    return status_error(exc.status_code, exc.body, retry_after, provider=provider)
