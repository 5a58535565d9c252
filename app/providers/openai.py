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
from typing import Any, TypeVar, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from pydantic import BaseModel

from app.providers.base import (
    Completion,
    CompletionRequest,
    ConnectionFailed,
    Delta,
    EmbeddingRequest,
    Embeddings,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
)
from app.providers.openai_http import dropped
from app.providers.openai_wire import (
    StreamedAnswer,
    read_completion,
    read_embeddings,
    status_error,
)
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
    embeds_dimensions = True

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
                    extra_body=_options(request),
                )
        # Read as the direct transport reads the bytes: the model dumped back to its JSON.
        return read_completion(_json(reply), request, provider=self.name)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[Delta | Completion, None]:
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
                    extra_body=_options(request),
                )
        answer = StreamedAnswer(request, provider=self.name)
        try:
            while (chunk := await self._next(chunks, deadline)) is not None:
                if delta := answer.add_chunk(_json(chunk)):
                    yield delta
                if answer.deltas:
                    for piece in answer.take_deltas():
                        yield piece
        finally:
            await chunks.close()  # after the last chunk the SDK has closed it already
        yield answer.completion()

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """`client.embeddings.create`, asking for base64 (an explicit `encoding_format`, so
        the SDK leaves the strings as they came, for `read_embeddings` to decode)."""
        with _sdk_errors(self.name):
            async with asyncio.timeout(request.timeout):
                reply = await self._client.embeddings.create(
                    model=request.model,
                    input=list(request.inputs),
                    encoding_format="base64",
                    dimensions=_given(request.dimensions),
                    user=request.user if request.user is not None else openai.omit,
                    timeout=_timeout(request),
                )
        return read_embeddings(_json(reply), request, provider=self.name)

    async def aclose(self) -> None:
        await self._client.close()

    async def _next(
        self, chunks: openai.AsyncStream[ChatCompletionChunk], deadline: float
    ) -> ChatCompletionChunk | None:
        with _sdk_errors(self.name, reading=True):
            async with asyncio.timeout_at(deadline):
                return await anext(chunks, None)


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


def _json(model: object) -> object:
    """An SDK model as the JSON it was read from (what the vendor sent, no defaults added),
    for `openai_wire`, which reads it as the direct transport reads the bytes."""
    if isinstance(model, BaseModel):
        return model.model_dump(mode="json", exclude_unset=True, warnings=False)
    return model  # what the SDK let through unread


def _options(request: CompletionRequest) -> dict[str, Any] | None:
    """The request's other chat-completions fields, in OpenAI's shape already: forwarded."""
    return dict(request.options) if request.options else None


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


def _timeout(request: CompletionRequest | EmbeddingRequest) -> float | openai.NotGiven:
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
