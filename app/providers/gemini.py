"""Google's Gemini API through the official `google-genai` SDK (its async client, `.aio`).

Streamed calls use `generate_content_stream` (`:streamGenerateContent?alt=sse`). Its deadline is
the SDK's, as for `complete`: the per-request (or client) timeout becomes aiohttp's `total`,
which bounds the whole call, body included, so a stream that goes quiet ends as a timeout.
The SDK's stream is a chain of async generators whose innermost one (the one that releases the
HTTP response) sits in a reference cycle: closing the outer generator leaves the connection open
until the garbage collector happens by. So the SDK's stream is read ahead in a task of its own
(`_ReadAhead`), always inside a read, and closing cancels that read, which unwinds the whole
chain at once and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import pydantic
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from google import genai
from google.genai import errors, types

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

_Item = TypeVar("_Item")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/"
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
# Finish reasons meaning the answer was withheld by a policy rather than ended.
FILTERED_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
# "The input token count (N) exceeds the maximum number of tokens allowed (M)." (Gemini API);
# "... the input token count is N but model only supports up to M" (Vertex AI).
CONTEXT_LENGTH = re.compile(r"input token count.*(exceeds the maximum|only supports up to)", re.I)


class _ConnectTimeoutConnector(aiohttp.TCPConnector):
    """Bounds the TCP/TLS connect. The SDK gives every request its own
    `ClientTimeout(total=...)`, which replaces the session's, so this is the only place a
    connect limit survives."""

    def __init__(self, *, connect_timeout: float) -> None:
        super().__init__(limit=0)  # no pool queue: the gateway caps calls in flight itself
        self._connect_timeout = connect_timeout

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        bounded = aiohttp.ClientTimeout(
            total=timeout.total,
            connect=timeout.connect,
            sock_read=timeout.sock_read,
            sock_connect=min(timeout.sock_connect or math.inf, self._connect_timeout),
            ceil_threshold=timeout.ceil_threshold,
        )
        return await super().connect(req, traces, bounded)


@dataclass(frozen=True, slots=True)
class GeminiClient:
    """The SDK client and the aiohttp session it sends through; the SDK never closes a
    session it was given, so they are closed together here."""

    sdk: genai.Client
    session: aiohttp.ClientSession

    async def aclose(self) -> None:
        await self.sdk.aio.aclose()
        self.sdk.close()  # the sync transport the SDK builds (unused) holds a pool too
        await self.session.close()


def build_client(
    *, api_key: str, base_url: str | None, timeout: float, connect_timeout: float
) -> GeminiClient:
    """One client per process; call it from the running event loop (the app's lifespan),
    which the aiohttp session belongs to.

    - Retries off: `attempts=1` stops tenacity after one try and also switches off the SDK's
      hidden resend of a refused or reset connection (after a 1-10 s sleep), which it makes
      whenever no `retry_options` are set. The gateway owns that loop, so every upstream
      call is counted and billed once.
    - Our own aiohttp session (the SDK would also pick aiohttp, but build its session by
      subclassing `ClientSession`, which aiohttp deprecates): it bounds the connect time
      (see _ConnectTimeoutConnector) and is closed cleanly with the client.
    - Everything explicit (base URL, API version, `vertexai=False`), so no GOOGLE_* variable
      in the environment changes where requests go.
    """
    session = aiohttp.ClientSession(
        connector=_ConnectTimeoutConnector(connect_timeout=connect_timeout)
    )
    options = types.HttpOptions(
        base_url=base_url or DEFAULT_BASE_URL,
        api_version="v1",
        timeout=_milliseconds(timeout),
        retry_options=types.HttpRetryOptions(attempts=1),
        aiohttp_client=session,
    )
    return GeminiClient(
        genai.Client(api_key=api_key, vertexai=False, http_options=options), session
    )


class GeminiProvider:
    max_temperature = 2.0
    kind = "gemini"

    def __init__(self, client: GeminiClient, *, name: str = "gemini") -> None:
        self.name = name
        self._client = client

    async def complete(self, request: CompletionRequest) -> Completion:
        contents, config = _call(request)
        with _sdk_errors(self.name):
            reply = await self._client.sdk.aio.models.generate_content(
                model=request.model, contents=contents, config=config
            )
        return _completion(request, reply, provider=self.name)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        contents, config = _call(request)
        # Nothing is sent until the first chunk is asked for.
        chunks = _ReadAhead(
            await self._client.sdk.aio.models.generate_content_stream(
                model=request.model, contents=contents, config=config
            )
        )
        answer = _StreamedAnswer(provider=self.name)
        try:
            while (chunk := await self._next(chunks)) is not None:
                if text := answer.add(chunk):
                    yield text
        finally:
            await chunks.close()
        yield answer.completion(request)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _next(
        self, chunks: _ReadAhead[types.GenerateContentResponse]
    ) -> types.GenerateContentResponse | None:
        with _sdk_errors(self.name):
            return await chunks.next()


class _ReadAhead(Generic[_Item]):
    """An async iterator read in a task of its own, as fast as it yields; closing cancels the
    task, in the middle of a read unless the iterator is done."""

    def __init__(self, items: AsyncIterator[_Item]) -> None:
        self._queue: asyncio.Queue[_Item | Exception | None] = asyncio.Queue()  # None: the end
        self._task = asyncio.create_task(self._read(items))

    async def next(self) -> _Item | None:
        """The next item, None after the last, or what the iterator raised."""
        item = await self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])  # a cancellation of our own caller still goes through

    async def _read(self, items: AsyncIterator[_Item]) -> None:
        try:
            async for item in items:
                self._queue.put_nowait(item)
        except Exception as exc:
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(None)


@contextlib.contextmanager
def _sdk_errors(provider: str) -> Iterator[None]:
    """What the SDK or its transport raised, as our errors (a bug here goes through as is)."""
    try:
        yield
    except (errors.APIError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        mapped = map_gemini_error(exc, provider=provider)
        if mapped is None:
            raise
        raise mapped from None


def _call(request: CompletionRequest) -> tuple[list[types.Content], types.GenerateContentConfig]:
    """The request's contents and config, the same streamed or not."""
    contents, system = _to_contents(request.messages)
    config = types.GenerateContentConfig(
        system_instruction=system,
        temperature=request.temperature,
        max_output_tokens=request.max_tokens,
        # One HTTP call per complete(): no continuation hops, no function-calling loop.
        # (Streamed, continuation would also resend a stream that broke off before any text.)
        automatic_continuation=False,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        http_options=(
            types.HttpOptions(timeout=_milliseconds(request.timeout))
            if request.timeout is not None
            else None
        ),
    )
    return contents, config


def _completion(
    request: CompletionRequest, reply: types.GenerateContentResponse, *, provider: str
) -> Completion:
    _refuse_blocked_prompt(reply, provider=provider)
    if not reply.candidates:
        raise MalformedResponse(f"{provider} answered with no candidates")
    candidate = reply.candidates[0]
    finish = _finish(candidate, provider=provider)
    text = _answer_text(candidate)
    return _result(request, text, finish, reply.usage_metadata, reply.model_version)


class _StreamedAnswer:
    """What the chunks of a stream add up to, read as `_completion` reads a whole reply: the
    text of every chunk, and the last chunk's finish reason, usage and model version."""

    def __init__(self, *, provider: str) -> None:
        self._provider = provider
        self._pieces: list[str] = []
        self._candidates = False  # whether any chunk had one
        self._finish: str | None = None
        self._usage: types.GenerateContentResponseUsageMetadata | None = None
        self._model_version: str | None = None

    def add(self, chunk: types.GenerateContentResponse) -> str:
        """Returns the text the chunk adds to the answer (maybe none)."""
        _refuse_blocked_prompt(chunk, provider=self._provider)
        self._usage = chunk.usage_metadata or self._usage
        self._model_version = chunk.model_version or self._model_version
        if not chunk.candidates:
            return ""
        self._candidates = True
        candidate = chunk.candidates[0]
        self._finish = _finish(candidate, provider=self._provider) or self._finish
        text = _answer_text(candidate)
        self._pieces.append(text)
        return text

    def completion(self, request: CompletionRequest) -> Completion:
        if not self._candidates:
            raise MalformedResponse(f"{self._provider} answered with no candidates")
        if self._finish is None:  # cut off, though the connection ended cleanly
            raise MalformedResponse(f"{self._provider} ended its stream before the answer did")
        text = "".join(self._pieces)
        return _result(request, text, self._finish, self._usage, self._model_version)


def _refuse_blocked_prompt(reply: types.GenerateContentResponse, *, provider: str) -> None:
    feedback = reply.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        raise ContentFiltered(
            f"{provider} refused the prompt under its content policy "
            f"({_name(feedback.block_reason).lower()})"
        )


def _finish(candidate: types.Candidate, *, provider: str) -> str | None:
    """The candidate's finish reason as Google names it; a policy's is ContentFiltered."""
    finish = _name(candidate.finish_reason) if candidate.finish_reason else None
    if finish in FILTERED_FINISH_REASONS:
        raise ContentFiltered(
            f"{provider} withheld the answer under its content policy ({finish.lower()})"
        )
    return finish


def _answer_text(candidate: types.Candidate) -> str:
    parts = candidate.content.parts if candidate.content else None
    # Thought summaries are not the answer; they only appear when asked for, but still.
    return "".join(p.text for p in parts or [] if p.text and not p.thought)


def _result(
    request: CompletionRequest,
    text: str,
    finish: str | None,
    usage: types.GenerateContentResponseUsageMetadata | None,
    model_version: str | None,
) -> Completion:
    if usage is not None and usage.prompt_token_count is not None:
        input_tokens = usage.prompt_token_count
        # Thinking tokens are billed as output. Google omits a count that is zero.
        output_tokens = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        cached = usage.cached_content_token_count or 0
        reported = True
    else:
        input_tokens = estimate_prompt_tokens(request)
        output_tokens = estimate_tokens(text)
        cached, reported = 0, False
    return Completion(
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=reported,
        finish_reason=FINISH_REASONS.get(finish, finish.lower()) if finish else None,
        upstream_model=model_version or request.model,
        cached_input_tokens=cached,
    )


def _to_contents(messages: list[Message]) -> tuple[list[types.Content], types.Content | None]:
    """Our chat messages as Gemini `contents`; system messages become `systemInstruction`."""
    contents: list[types.Content] = []
    system: list[types.Part] = []
    for message in messages:
        part = types.Part(text=message["content"])
        if message["role"] == "system":
            system.append(part)
        else:
            role = "model" if message["role"] == "assistant" else "user"
            contents.append(types.Content(role=role, parts=[part]))
    return contents, types.Content(parts=system) if system else None


def _milliseconds(seconds: float) -> int:
    """The SDK's `HttpOptions.timeout` is whole milliseconds."""
    return max(1, math.ceil(seconds * 1000))


def _name(value: Any) -> str:
    """An SDK enum member, or the raw string of a value newer than this SDK."""
    return str(getattr(value, "value", value))


def map_gemini_error(exc: BaseException, *, provider: str) -> ProviderError | None:
    """Translate what the SDK or its transport raised into our error tree; None for what is
    not the upstream's doing (a bug here), which the caller re-raises. Messages never hold
    the API key: they are Google's error message or written here."""
    if isinstance(exc, errors.APIError):
        return _map_status(exc, provider=provider)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectionFailed(f"could not connect to {provider} in time")
    if isinstance(exc, TimeoutError):  # aiohttp's total deadline and socket read timeout
        return ProviderTimeout(f"{provider} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectionFailed(f"could not connect to {provider}")
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return ConnectionFailed(f"the connection to {provider} was lost before its answer")
    if isinstance(exc, aiohttp.ClientError):
        return ConnectionFailed(f"could not reach {provider} ({type(exc).__name__})")
    if isinstance(exc, errors.UnknownApiResponseError | json.JSONDecodeError):
        return MalformedResponse(f"{provider} sent a response that is not JSON")
    if isinstance(exc, pydantic.ValidationError):
        return MalformedResponse(f"{provider} sent a response of an unexpected shape")
    return None


def _map_status(exc: errors.APIError, *, provider: str) -> ProviderError:
    status = exc.code
    vendor = str(exc.message or exc.status or f"HTTP {status}")[:500]
    message = f"{provider}: {vendor}"
    reasons = {d.get("reason") for d in _details(exc)}
    # A wrong key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID from Google.
    if status in (401, 403) or "API_KEY_INVALID" in reasons:
        return AuthenticationFailed(
            f"{provider} rejected the gateway's credentials ({vendor})", status=status
        )
    if status == 429:
        return RateLimited(message, status=status, retry_after=_retry_after(exc))
    if status >= 500:
        return Unavailable(message, status=status, retry_after=_retry_after(exc))
    if status == 408:
        return ProviderTimeout(message, status=status)
    if CONTEXT_LENGTH.search(vendor):
        return ContextLengthExceeded(message, status=status)
    return BadRequest(message, status=status)


def _details(exc: errors.APIError) -> list[dict[str, Any]]:
    """The `error.details` list of Google's error body (google.rpc status details)."""
    body = exc.details
    inner = body.get("error", body) if isinstance(body, dict) else None
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _retry_after(exc: errors.APIError) -> float | None:
    """Retry-After if sent, else the RetryInfo detail ("7s") Google usually sends on 429."""
    headers = getattr(exc.response, "headers", None)
    header = headers.get("retry-after") if headers is not None else None
    if (seconds := retry_after_seconds(header)) is not None:
        return seconds
    for detail in _details(exc):
        delay = detail.get("retryDelay")
        if str(detail.get("@type", "")).endswith("RetryInfo") and isinstance(delay, str):
            return retry_after_seconds(delay.removesuffix("s"))
    return None
