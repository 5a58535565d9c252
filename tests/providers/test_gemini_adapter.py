"""The Gemini adapter on the real `google-genai` SDK, over HTTP to the local wire-level mock."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest

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
)
from app.providers.gemini import GeminiProvider, build_client
from tests.mocks import openai_server
from tests.mocks.gemini_server import CONTEXT_LENGTH_MESSAGE, MOCK_API_KEY, MockGemini


def _provider(
    base_url: str, *, key: str = MOCK_API_KEY, timeout: float = 5.0, connect_timeout: float = 1.0
) -> GeminiProvider:
    return GeminiProvider(
        build_client(
            api_key=key, base_url=base_url, timeout=timeout, connect_timeout=connect_timeout
        )
    )


@pytest.fixture
async def provider(mock_gemini: MockGemini) -> AsyncIterator[GeminiProvider]:
    provider = _provider(mock_gemini.base_url)
    yield provider
    await provider.aclose()


def _request(
    model: str, text: str = "ping", *, max_tokens: int | None = None, timeout: float | None = None
) -> CompletionRequest:
    messages: list[Message] = [{"role": "user", "content": text}]
    return CompletionRequest(model, messages, max_tokens=max_tokens, timeout=timeout)


async def test_completion_with_usage_and_the_exact_request(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you"},
    ]
    result = await provider.complete(
        CompletionRequest("adapter-ok", messages, temperature=0.3, max_tokens=50)
    )
    assert result.text == "echo: how are you"
    # The mock counts words: 1 + 1 + 3 in contents, 2 in systemInstruction; 4 in the answer.
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (7, 4, True)
    assert result.finish_reason == "stop"
    assert result.upstream_model == "adapter-ok-001"  # modelVersion, not the name we sent
    [call] = mock_gemini.calls_for("adapter-ok")
    assert call.path == "/v1/models/adapter-ok:generateContent"
    assert call.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "how are you"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 50},
    }


async def test_the_gemini_key_and_no_other_credentials(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    await provider.complete(_request("adapter-headers"))
    [call] = mock_gemini.calls_for("adapter-headers")
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["x-goog-api-key"] == MOCK_API_KEY
    assert "authorization" not in headers and "x-api-key" not in headers
    assert not any(openai_server.MOCK_API_KEY in v for v in headers.values())
    assert MOCK_API_KEY not in str(call.body)


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(provider: GeminiProvider):
    result = await provider.complete(_request("adapter-cut", "one two three four", max_tokens=2))
    assert (result.text, result.finish_reason, result.output_tokens) == ("echo: one", "length", 2)


async def test_per_request_timeout_reaches_the_wire(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    await provider.complete(_request("adapter-default-timeout"))
    await provider.complete(_request("adapter-own-timeout", timeout=2.5))
    [default] = mock_gemini.calls_for("adapter-default-timeout")
    [own] = mock_gemini.calls_for("adapter-own-timeout")
    # The SDK tells Google the deadline in whole seconds, rounded up.
    assert default.headers["X-Server-Timeout"] == "5"
    assert own.headers["X-Server-Timeout"] == "3"


@pytest.mark.parametrize(
    ("model", "error", "status", "retry_after"),
    [
        ("error-400", BadRequest, 400, None),
        ("error-401", AuthenticationFailed, 401, None),
        ("error-403", AuthenticationFailed, 403, None),
        ("error-404", BadRequest, 404, None),
        ("error-429", RateLimited, 429, 1.0),
        ("error-429-no-retry-after", RateLimited, 429, None),
        ("error-429-retry-info", RateLimited, 429, 7.0),
        ("error-500", Unavailable, 500, None),
        ("error-503", Unavailable, 503, 2.0),
        ("error-504", Unavailable, 504, None),
        ("context-length", ContextLengthExceeded, 400, None),
    ],
)
async def test_vendor_errors_map_to_our_tree_with_one_call(
    provider: GeminiProvider,
    mock_gemini: MockGemini,
    model: str,
    error: type[ProviderError],
    status: int,
    retry_after: float | None,
):
    before = len(mock_gemini.calls_for(model))
    with pytest.raises(ProviderError) as caught:
        await provider.complete(_request(model))
    assert type(caught.value) is error
    assert caught.value.status == status
    assert caught.value.retry_after == retry_after
    assert caught.value.retryable == (status in (429, 500, 503, 504))
    assert len(mock_gemini.calls_for(model)) == before + 1  # no SDK retries
    vendor_message = CONTEXT_LENGTH_MESSAGE if model == "context-length" else f"mock error {status}"
    assert vendor_message in caught.value.message


async def test_wrong_key_is_an_authentication_error_without_the_key(mock_gemini: MockGemini):
    provider = _provider(mock_gemini.base_url, key="AIza-wrong-secret-value")
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await provider.complete(_request("adapter-wrong-key"))
    finally:
        await provider.aclose()
    assert caught.value.status == 400  # Google answers a bad key with 400 API_KEY_INVALID
    assert "API key not valid" in caught.value.message
    assert "AIza-wrong-secret-value" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("model", ["slow-5000", "hang"])
async def test_per_request_timeout(provider: GeminiProvider, mock_gemini: MockGemini, model: str):
    before = len(mock_gemini.calls_for(model))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        # Long enough for a loaded machine to send the request; far shorter than the answer.
        await provider.complete(_request(model, timeout=1.0))
    assert time.monotonic() - started < 3.0  # the request's 1 s, not the client's 5 s
    assert caught.value.status is None and caught.value.retryable
    assert len(mock_gemini.calls_for(model)) == before + 1


async def test_reset_connection_fails_once_without_the_sdk_resending(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    """Left to its defaults, the SDK resends after a reset following a 1-10 s sleep."""
    before = len(mock_gemini.calls_for("reset"))
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        await provider.complete(_request("reset"))
    assert time.monotonic() - started < 1.0
    assert len(mock_gemini.calls_for("reset")) == before + 1
    assert caught.value.status is None and caught.value.retryable


async def test_refused_connection():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    provider = _provider(f"http://127.0.0.1:{free_port}")
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed):
            await provider.complete(_request("anything"))
    finally:
        await provider.aclose()
    assert time.monotonic() - started < 1.0


async def test_connect_timeout_is_honoured_apart_from_the_total():
    """A listener whose accept queue is full drops new SYNs, so connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(address)
        provider = _provider(f"http://{address[0]}:{address[1]}", timeout=5.0, connect_timeout=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(ConnectionFailed, match="in time"):
                await provider.complete(_request("anything"))
        finally:
            await provider.aclose()
            for filler in fillers:
                filler.close()
    assert time.monotonic() - started < 2.0


async def test_one_call_even_when_the_answer_could_be_continued(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    result = await provider.complete(_request("continuation"))
    assert result.finish_reason == "continuation"
    assert len(mock_gemini.calls_for("continuation")) == 1


async def test_malformed_body(provider: GeminiProvider, mock_gemini: MockGemini):
    with pytest.raises(MalformedResponse) as caught:
        await provider.complete(_request("malformed"))
    assert caught.value.retryable and len(mock_gemini.calls_for("malformed")) == 1


async def test_no_usage_is_estimated(provider: GeminiProvider):
    result = await provider.complete(_request("no-usage", "count these words please"))
    assert result.text == "echo: count these words please"
    assert not result.usage_reported
    assert result.input_tokens == estimate_tokens("count these words please")
    assert result.output_tokens == estimate_tokens(result.text)


@pytest.mark.parametrize(("model", "says"), [("blocked", "answer"), ("blocked-prompt", "prompt")])
async def test_blocked_is_content_filtered(provider: GeminiProvider, model: str, says: str):
    with pytest.raises(ContentFiltered, match=f"{says} under its content policy \\(safety\\)"):
        await provider.complete(_request(model))


async def test_aclose_closes_the_session(mock_gemini: MockGemini):
    client = build_client(
        api_key=MOCK_API_KEY, base_url=mock_gemini.base_url, timeout=5, connect_timeout=1
    )
    provider = GeminiProvider(client)
    await provider.complete(_request("adapter-close"))
    await provider.aclose()
    assert client.session.closed


async def test_the_mock_streams_like_google(mock_gemini: MockGemini):
    """The SDK's own SSE parser reads the mock's stream: proof of its wire format."""
    client = build_client(
        api_key=MOCK_API_KEY, base_url=mock_gemini.base_url, timeout=5, connect_timeout=1
    )
    try:
        stream = await client.sdk.aio.models.generate_content_stream(
            model="adapter-stream", contents="one two three"
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await client.aclose()
    assert [c.text for c in chunks] == ["echo:", " one", " two", " three"]
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == "STOP"
    assert last.usage_metadata and last.usage_metadata.candidates_token_count == 4
    assert last.model_version == "adapter-stream-001"
    [call] = mock_gemini.calls_for("adapter-stream")
    assert call.path == "/v1/models/adapter-stream:streamGenerateContent"
    assert call.query == {"alt": "sse"}


# Streams (the cases every adapter shares are in test_streaming.py).


async def _stream(provider: GeminiProvider, request: CompletionRequest) -> list[str | Completion]:
    return [item async for item in provider.stream(request)]


async def test_stream_sends_the_same_request_to_the_streaming_method(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "how are you"},
    ]
    request = CompletionRequest("stream-request", messages, temperature=0.3, max_tokens=50)
    items = await _stream(provider, request)
    assert await provider.complete(request) == items[-1]
    streamed, whole = mock_gemini.calls_for("stream-request")
    assert streamed.path == "/v1/models/stream-request:streamGenerateContent"
    assert streamed.query == {"alt": "sse"}
    assert whole.path == "/v1/models/stream-request:generateContent"
    assert streamed.body == whole.body


async def test_stream_request_timeout_reaches_the_wire(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    await _stream(provider, _request("stream-own-timeout", timeout=2.5))
    [call] = mock_gemini.calls_for("stream-own-timeout")
    assert call.headers["X-Server-Timeout"] == "3"


@pytest.mark.parametrize("model", ["blocked", "blocked-prompt"])
async def test_a_blocked_stream_is_content_filtered_as_complete_is(
    provider: GeminiProvider, model: str
):
    with pytest.raises(ContentFiltered) as streamed:
        await _stream(provider, _request(model))
    with pytest.raises(ContentFiltered) as whole:
        await provider.complete(_request(model))
    assert streamed.value.message == whole.value.message


async def test_a_stream_is_one_call_even_when_it_could_be_continued(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    before = len(mock_gemini.calls_for("continuation"))
    items = await _stream(provider, _request("continuation"))
    final = items[-1]
    assert isinstance(final, Completion) and final.finish_reason == "continuation"
    assert len(mock_gemini.calls_for("continuation")) == before + 1


async def test_a_stream_rate_limit_keeps_googles_retry_info(provider: GeminiProvider):
    with pytest.raises(RateLimited) as caught:
        await _stream(provider, _request("error-429-retry-info"))
    assert caught.value.retry_after == 7.0


async def test_a_stream_cut_by_max_tokens_ends_with_length(provider: GeminiProvider):
    items = await _stream(provider, _request("stream-cut", "one two three four", max_tokens=2))
    assert items[:-1] == ["echo:", " one"]
    final = items[-1]
    assert isinstance(final, Completion)
    assert (final.text, final.finish_reason, final.output_tokens) == ("echo: one", "length", 2)
