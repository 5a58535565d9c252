"""OpenAI's chat-completions API spoken directly over HTTP, without the `openai` SDK.

Why: the SDK spends much of its CPU on every call building an httpx2 request, bridging it to
aiohttp and validating the reply into pydantic models, a large share of what a prompt may cost
here (docs/architecture.md, "The hot path"). This adapter sends the same JSON body and reads
the answer and the usage itself, for a fraction of the CPU, and a non-streamed call over
`http1.HTTP1Client` saves more still (aiohttp stays for streams, and for a URL reached through
a proxy): measured by bench/providers_overhead.py; figures in bench/results/.
This module is the transport; reading the JSON, the chunks and the errors is `openai_wire.py`,
whose mapping of errors, finish reasons and usage the SDK adapter shares.

It must be indistinguishable from `OpenAIProvider`: the same `Completion` for the same answer,
and the same `ProviderError` (class, code, status, retry_after, message) for the same failure,
as `map_openai_error` would make from the SDK's exception; streamed or not.
tests/providers/test_openai_adapter.py runs every behaviour of the wire-level mock through both,
with the SDK as the reference. `OPENAI_TRANSPORT=sdk` switches back to the SDK.

A stream has one deadline for the whole call, like `complete`: each read of the body waits at
most until then, so a stream that goes quiet fails as a timeout (never while the caller holds
the iterator between two deltas: no timeout scope stays open across a `yield`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic_core import to_json

from app import __version__
from app.kit.outbound import env_proxy
from app.providers.base import (
    Completion,
    CompletionRequest,
    ConnectionFailed,
    Delta,
    EmbeddingRequest,
    Embeddings,
    ProviderTimeout,
)
from app.providers.http1 import HTTP1Client
from app.providers.openai_wire import (
    StreamedAnswer,
    embedding_body,
    error_body,
    parse_completion,
    parse_embeddings,
    status_error,
)
from app.providers.sse import Event, EventReader
from app.providers.transport import is_connection_failure

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's default too
USER_AGENT = f"prompt-manager/{__version__}"
# What the SDK adds to the body of a streamed call (a last chunk with the usage, as it does).
STREAM_FIELDS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
DRAIN_SECONDS = 1.0  # after `[DONE]`, for the end of the body (so the connection is reused)


@dataclass(frozen=True, slots=True)
class _Reply:
    """What the adapter keeps of an HTTP response: read whole, inside the call's deadline."""

    status: int
    retry_after: str | None
    body: bytes


class OpenAIHTTPProvider:
    """`openai` or any OpenAI-compatible server, over an HTTP/1.1 client and an aiohttp
    session of its own.

    Both are created on first use, inside the event loop that uses them (a Celery worker runs
    its loop in a thread of its own, so never in `__init__`), and closed by `aclose`; a call
    after `aclose` opens new ones. Neither limits its connections: the worker's in-flight cap,
    not a pool, decides how many calls are out at once.
    """

    max_temperature = 2.0
    kind = "openai"
    embeds_dimensions = True  # (a compatible server may not: the executor checks the answer)

    def __init__(
        self,
        *,
        name: str = "openai",
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        connect_timeout: float,
    ) -> None:
        self.name = name
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{base}/chat/completions"
        self.embeddings_url = f"{base}/embeddings"
        self._headers = _headers(api_key)
        self._timeout = timeout  # the whole call, unless the request gives its own
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        # Non-streamed calls: `HTTP1Client` (far less CPU per call than aiohttp: figures in
        # bench/results/), unless a proxy is configured for the URL, which only the aiohttp
        # session knows how to go through.
        self._direct: HTTP1Client | None = None
        self._direct_embeddings: HTTP1Client | None = None  # (created on the first embedding)
        self._proxied: bool | None = None

    async def complete(self, request: CompletionRequest) -> Completion:
        body = to_json(_request_body(request))
        with _transport_errors(self.name):
            async with asyncio.timeout(self._seconds(request)):
                reply = await self._post(body)
        if not 200 <= reply.status < 300:
            error = error_body(reply.body)
            raise status_error(reply.status, error, reply.retry_after, provider=self.name)
        return parse_completion(reply.body, request, provider=self.name)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[Delta | Completion, None]:
        body = to_json(_request_body(request) | STREAM_FIELDS)
        deadline = asyncio.get_running_loop().time() + self._seconds(request)
        reader = EventReader(await self._open(body, deadline))
        answer = StreamedAnswer(request, provider=self.name)
        try:
            while not answer.done and (events := await self._read(reader, deadline)) is not None:
                for event in events:
                    if delta := answer.add(event.data):
                        yield delta
                    if answer.deltas:
                        for piece in answer.take_deltas():
                            yield piece
            completion = answer.completion()
            left = deadline - asyncio.get_running_loop().time()
            await reader.release(min(DRAIN_SECONDS, max(0.0, left)))
        finally:
            reader.close()  # a no-op once released; else the upstream call is abandoned
        yield completion

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """`POST {base}/embeddings`, over the same transports and with the same errors as
        `complete`."""
        body = to_json(embedding_body(request))
        with _transport_errors(self.name):
            async with asyncio.timeout(self._seconds(request)):
                reply = await self._post(body, embeddings=True)
        if not 200 <= reply.status < 300:
            error = error_body(reply.body)
            raise status_error(reply.status, error, reply.retry_after, provider=self.name)
        return parse_embeddings(reply.body, request, provider=self.name)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        direct, self._direct = self._direct, None
        embeddings, self._direct_embeddings = self._direct_embeddings, None
        if session is not None:
            await session.close()
        for client in (direct, embeddings):
            if client is not None:
                await client.aclose()

    def _seconds(self, request: CompletionRequest | EmbeddingRequest) -> float:
        """The call's deadline, in seconds from its start."""
        return request.timeout if request.timeout is not None else self._timeout

    async def _post(self, body: bytes, *, embeddings: bool = False) -> _Reply:
        url = self.embeddings_url if embeddings else self.url
        if self._proxied is None:
            self._proxied = env_proxy(self.url) != (None, None)
        if not self._proxied:
            reply = await self._direct_client(embeddings).post(body)
            return _Reply(reply.status, reply.retry_after, reply.body)
        async with self._client().post(url, data=body) as response:
            content = await response.read()
            return _Reply(response.status, response.headers.get("Retry-After"), content)

    def _direct_client(self, embeddings: bool) -> HTTP1Client:
        """The keep-alive client of the chat-completions URL, or of the embeddings one."""
        if embeddings:
            if self._direct_embeddings is None:
                self._direct_embeddings = HTTP1Client(
                    self.embeddings_url, self._headers, connect_timeout=self._connect_timeout
                )
            return self._direct_embeddings
        if self._direct is None:
            self._direct = HTTP1Client(
                self.url, self._headers, connect_timeout=self._connect_timeout
            )
        return self._direct

    async def _open(self, body: bytes, deadline: float) -> aiohttp.ClientResponse:
        """A streamed call's response, once its status says the stream follows."""
        with _transport_errors(self.name):
            async with asyncio.timeout_at(deadline):
                response = await self._client().post(self.url, data=body)
                if 200 <= response.status < 300:
                    return response
                async with response:
                    content = await response.read()
        retry_after = response.headers.get("Retry-After")
        raise status_error(response.status, error_body(content), retry_after, provider=self.name)

    async def _read(self, reader: EventReader, deadline: float) -> list[Event] | None:
        with _transport_errors(self.name, reading=True):
            async with asyncio.timeout_at(deadline):
                return await reader.read()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            proxy, proxy_auth = env_proxy(self.url)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                # The deadline of the whole call is complete()'s asyncio.timeout.
                timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
                headers=self._headers,
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        return self._session


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    if api_key:  # a local compatible server may want none, and then gets none
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _request_body(request: CompletionRequest) -> dict[str, Any]:
    """The SDK's body: optional parameters only when given."""
    body: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.options:
        body.update(request.options)  # in OpenAI's shape already: forwarded as they are
    return body


@contextlib.contextmanager
def _transport_errors(provider: str, *, reading: bool = False) -> Iterator[None]:
    """Timeouts (ours, and aiohttp's, which are TimeoutErrors too) and transport failures as
    our errors. `reading`: the response had begun, so the connection was made and then lost."""
    try:
        yield
    except TimeoutError:
        raise ProviderTimeout(f"{provider} did not answer in time") from None
    except (aiohttp.ClientError, OSError) as exc:
        if reading:
            raise dropped(provider) from None
        raise _connection_error(exc, provider=provider) from None


def dropped(provider: str) -> ConnectionFailed:
    """A connection lost in the middle of a streamed answer (shared with `OpenAIProvider`)."""
    return ConnectionFailed(f"the connection to {provider} failed or was dropped")


def _connection_error(exc: BaseException, *, provider: str) -> ConnectionFailed:
    """The messages `map_openai_error` gives the SDK's APIConnectionError."""
    if is_connection_failure(exc):
        return ConnectionFailed(f"the connection to {provider} failed or was dropped")
    return ConnectionFailed(f"could not connect to {provider}")
