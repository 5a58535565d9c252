"""`Provider.stream` across every adapter, over HTTP to the wire-level mocks: a stream must end
in the very `Completion` that `complete` returns for the same behaviour, fail with the very
error `complete` fails with, deliver its text as it arrives, keep one deadline for the whole
call, and abandon the upstream call when closed early. The SSE decoder has its own tests here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from app.providers import anthropic, gemini, openai
from app.providers.base import (
    Completion,
    CompletionRequest,
    Message,
    Provider,
    ProviderError,
    ProviderTimeout,
)
from app.providers.local import LocalProvider
from app.providers.openai_http import OpenAIHTTPProvider
from app.providers.sse import Event, EventDecoder
from tests.mocks import anthropic_server, gemini_server, openai_server
from tests.mocks.anthropic_server import MockAnthropic
from tests.mocks.gemini_server import MockGemini
from tests.mocks.openai_server import MockOpenAI

ADAPTERS = ("openai-sdk", "openai-direct", "gemini", "anthropic")
Mock = MockOpenAI | MockGemini | MockAnthropic


@dataclass
class Adapter:
    """One adapter kind against its mock; `make` builds providers closed after the test."""

    kind: str
    mock: Mock
    make: Callable[..., Provider]

    def streamed(self, model: str) -> bool:
        """Whether the mock's last call for `model` asked for a stream, as the vendor's SDK
        would (for OpenAI: with a usage chunk at the end)."""
        if isinstance(self.mock, MockGemini):
            call = self.mock.calls_for(model)[-1]
            return call.path.endswith(":streamGenerateContent") and call.query == {"alt": "sse"}
        body = self.mock.calls_for(model)[-1].body
        if isinstance(self.mock, MockOpenAI):
            return body.get("stream") is True and body["stream_options"] == {"include_usage": True}
        return body.get("stream") is True

    async def wait_abandoned(self, model: str, within: float = 2.0) -> bool:
        deadline = time.monotonic() + within
        while model not in self.mock.abandoned:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


def _build(kind: str, base_url: str, timeout: float) -> Provider:
    if kind == "openai-sdk":
        client = openai.build_client(
            api_key=openai_server.MOCK_API_KEY,
            base_url=base_url,
            timeout=timeout,
            connect_timeout=1.0,
        )
        return openai.OpenAIProvider(client)
    if kind == "openai-direct":
        return OpenAIHTTPProvider(
            api_key=openai_server.MOCK_API_KEY,
            base_url=base_url,
            timeout=timeout,
            connect_timeout=1.0,
        )
    if kind == "gemini":
        return gemini.GeminiProvider(
            gemini.build_client(
                api_key=gemini_server.MOCK_API_KEY,
                base_url=base_url,
                timeout=timeout,
                connect_timeout=1.0,
            )
        )
    client = anthropic.build_client(
        api_key=anthropic_server.MOCK_API_KEY,
        base_url=base_url,
        timeout=timeout,
        connect_timeout=1.0,
    )
    return anthropic.AnthropicProvider(client, default_max_tokens=64)


@pytest.fixture(params=ADAPTERS)
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[Adapter]:
    kind = str(request.param)
    mock_fixture = {"gemini": "mock_gemini", "anthropic": "mock_anthropic"}.get(kind, "mock_openai")
    mock: Mock = request.getfixturevalue(mock_fixture)
    made: list[Provider] = []

    def make(timeout: float = 5.0) -> Provider:
        made.append(_build(kind, mock.base_url, timeout))
        return made[-1]

    yield Adapter(kind, mock, make)
    for provider in made:
        await provider.aclose()


def _request(model: str, text: str = "one two three", **options: Any) -> CompletionRequest:
    messages: list[Message] = [{"role": "user", "content": text}]
    return CompletionRequest(model=model, messages=messages, **options)


Outcome = Completion | tuple[type[ProviderError], str, int | None, float | None, str]


def _failure(exc: ProviderError) -> Outcome:
    return (type(exc), exc.code, exc.status, exc.retry_after, exc.message)


async def _completed(provider: Provider, request: CompletionRequest) -> Outcome:
    try:
        return await provider.complete(request)
    except ProviderError as exc:
        return _failure(exc)


async def _streamed(provider: Provider, request: CompletionRequest) -> tuple[list[str], Outcome]:
    """The deltas, then the final Completion or the error the stream ended with; checks that
    the stream keeps its shape: non-empty str deltas, then exactly one Completion, last."""
    deltas: list[str] = []
    finals: list[Completion] = []
    try:
        async for item in provider.stream(request):
            if isinstance(item, Completion):
                finals.append(item)
            else:
                assert not finals, "a delta after the Completion"
                assert isinstance(item, str) and item, "an empty delta"
                deltas.append(item)
    except ProviderError as exc:
        assert not finals
        return deltas, _failure(exc)
    assert len(finals) == 1
    return deltas, finals[0]


@pytest.mark.parametrize("model", ["stream-ok", "no-usage", "cached-2"])
async def test_the_stream_ends_in_the_completion_complete_returns(adapter: Adapter, model: str):
    provider = adapter.make()
    request = _request(model, "the quick brown fox")
    expected = await provider.complete(request)
    deltas, final = await _streamed(provider, request)
    assert adapter.streamed(model)
    assert final == expected
    assert isinstance(final, Completion) and "".join(deltas) == final.text
    assert final.text == "echo: the quick brown fox" and len(deltas) > 1
    assert final.usage_reported == (model != "no-usage")
    assert final.cached_input_tokens == (2 if model == "cached-2" else 0)


@pytest.mark.parametrize(
    "model",
    ["error-429", "error-500", "error-401", "context-length", "bad-chunk", "break-2", "stall-2"],
)
async def test_a_stream_fails_as_complete_fails(adapter: Adapter, model: str):
    """Rejections before the stream, a chunk that is not JSON, a connection reset in the middle
    of the answer, an answer that stops coming: the error `complete` gives, after the text
    that did arrive."""
    if model.startswith(("bad-chunk", "break-", "stall-")):
        model = f"{model}-{adapter.kind}"  # abandoned streams are recorded by model name
    provider = adapter.make()
    request = _request(model, "the quick brown fox", timeout=0.8)
    expected = await _completed(provider, request)
    assert not isinstance(expected, Completion)
    started = time.monotonic()
    deltas, failure = await _streamed(provider, request)
    assert failure == expected
    assert time.monotonic() - started < 3  # the 0.8 s deadline, when it stalls
    if model == "error-429":
        assert failure[3] == 1.0  # retry_after, from the Retry-After header
    assert adapter.streamed(model)
    if model.startswith(("break-", "stall-")):
        assert deltas == ["echo:", " the"]
    elif model.startswith("bad-chunk"):
        assert deltas == ["echo:"]
    else:
        assert deltas == []
    if failure[0] is ProviderTimeout:  # a stalled stream's connection is closed, not left open
        assert await adapter.wait_abandoned(model)


async def test_each_delta_is_handed_on_as_it_arrives(adapter: Adapter):
    """`stall-2` sends two pieces of text and then holds the stream open: both are handed on
    while the answer is still coming, not gathered up until its end."""
    provider = adapter.make()
    model = f"stall-2-arrive-{adapter.kind}"
    stream = provider.stream(_request(model, "one two three"))
    assert [await anext(stream), await anext(stream)] == ["echo:", " one"]
    assert model not in adapter.mock.abandoned  # the upstream is still sending
    await stream.aclose()
    assert await adapter.wait_abandoned(model)


async def test_closing_early_abandons_the_upstream_call(adapter: Adapter):
    provider = adapter.make()
    model = f"drip-300-{adapter.kind}"
    stream = provider.stream(_request(model, "one two three four five six"))
    assert await anext(stream) == "echo:"
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 0.5
    assert await adapter.wait_abandoned(model)  # the mock saw the connection go
    again = await provider.complete(_request(f"after-close-{adapter.kind}", "still there"))
    assert again.text == "echo: still there"


async def test_one_deadline_for_the_whole_stream_and_none_across_a_yield(adapter: Adapter):
    """The provider's timeout (0.4 s, no request timeout) bounds the whole stream, so a stream
    that goes quiet after its first text fails as a timeout; and a caller that holds the
    iterator past the deadline is never cancelled itself: the next read says so instead."""
    provider = adapter.make(timeout=0.4)
    model = f"stall-1-{adapter.kind}"
    stream = provider.stream(_request(model))
    started = time.monotonic()
    assert await anext(stream) == "echo:"
    await asyncio.sleep(0.6)  # past the deadline, in the caller's own code
    with pytest.raises(ProviderTimeout):
        await anext(stream)
    assert time.monotonic() - started < 2.5  # 0.4 s deadline, 0.6 s pause, then at once
    assert await adapter.wait_abandoned(model)


async def test_the_local_provider_streams_through_its_compatible_server(mock_openai: MockOpenAI):
    """`local` delegates to the direct OpenAI-compatible adapter, with its default
    max_tokens, as `complete` does (a stand-in for the llama.cpp server: the OpenAI mock)."""

    class Server:
        api_key = openai_server.MOCK_API_KEY

        async def address(self) -> str:
            return mock_openai.base_url.removesuffix("/v1")

        async def close(self) -> None:
            pass

    provider = LocalProvider(
        Server(),  # type: ignore[arg-type]
        default_max_tokens=3,
        timeout=5,
        connect_timeout=1,
    )
    try:
        request = _request("local-stream", "one two three four")
        deltas, final = await _streamed(provider, request)
        expected = await provider.complete(request)
        stream = provider.stream(_request("drip-200-local", "one two three"))
        assert await anext(stream) == "echo:"
        await stream.aclose()
    finally:
        await provider.aclose()
    assert final == expected and isinstance(final, Completion)
    assert "".join(deltas) == final.text == "echo: one two"
    assert final.finish_reason == "length"
    streamed, completed = mock_openai.calls_for("local-stream")
    assert streamed.body["max_tokens"] == completed.body["max_tokens"] == 3
    assert streamed.body["stream"] is True and "stream" not in completed.body
    deadline = time.monotonic() + 2
    while "drip-200-local" not in mock_openai.abandoned:
        assert time.monotonic() < deadline, "the inner stream was not closed"
        await asyncio.sleep(0.01)


# The SSE decoder.

SSE = (
    b"data: a\r\n\r\n"  # CRLF
    b": a comment\n"
    b"event: named\ndata: 1\ndata:2\n\n"  # two data lines, one without the space
    b"id: 7\nretry: 10\n\n"  # no data: no event
    b"data: [DONE]\r\r"  # CR alone
    b"data\n\n"  # a field without a colon: empty data
    b"data: cut off"  # never ended: never dispatched
)
EXPECTED = [Event("a"), Event("1\n2", "named"), Event("[DONE]"), Event("")]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, len(SSE)])
def test_sse_events_whatever_the_reads(size: int):
    decoder = EventDecoder()
    events: list[Event] = []
    for start in range(0, len(SSE), size):
        events += decoder.feed(SSE[start : start + size])
    assert events == EXPECTED


def test_sse_a_long_line_and_split_utf8():
    decoder = EventDecoder()
    data = ("é" * 100_000).encode()
    assert decoder.feed(b"data: " + data[:1]) == []  # half of a two-byte character
    assert decoder.feed(data[1:] + b"\n") == []
    assert decoder.feed(b"\n") == [Event("é" * 100_000)]
