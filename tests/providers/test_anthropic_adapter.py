"""The Anthropic adapter on the real `anthropic` SDK, over HTTP to the local wire-level mock."""

from __future__ import annotations

import socket
import time

import anthropic
import httpx2
import pytest

from app.providers.anthropic import AnthropicProvider, build_client, map_anthropic_error
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
from tests.mocks import openai_server
from tests.mocks.anthropic_server import MOCK_API_KEY, MockAnthropic


def _provider(base_url: str, *, key: str = MOCK_API_KEY, timeout: float = 5.0) -> AnthropicProvider:
    client = build_client(api_key=key, base_url=base_url, timeout=timeout, connect_timeout=1.0)
    return AnthropicProvider(client, default_max_tokens=64)


def _request(
    model: str, text: str = "ping", *, max_tokens: int | None = None, timeout: float | None = None
) -> CompletionRequest:
    messages: list[Message] = [{"role": "user", "content": text}]
    return CompletionRequest(model, messages, max_tokens=max_tokens, timeout=timeout)


async def _fails(
    mock: MockAnthropic, request: CompletionRequest, *, timeout: float = 5.0
) -> ProviderError:
    provider = _provider(mock.base_url, timeout=timeout)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request)
    finally:
        await provider.aclose()
    return caught.value


async def test_completion_with_usage_and_the_exact_request(mock_anthropic: MockAnthropic):
    messages: list[Message] = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "hello there"},
    ]
    provider = _provider(mock_anthropic.base_url)
    try:
        result = await provider.complete(CompletionRequest(model="adapter-ok", messages=messages))
        # API version 2026-10-21 refuses any temperature: never sent, never silently dropped.
        with pytest.raises(BadRequest, match="does not accept a temperature"):
            await provider.complete(
                CompletionRequest(model="adapter-temp", messages=messages, temperature=0.7)
            )
    finally:
        await provider.aclose()
    assert mock_anthropic.calls_for("adapter-temp") == []
    assert result.text == "echo: hello there"
    # The mock counts words: system (2 + 3) and turns (1 + 1 + 2) in; three words out.
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (9, 3, True)
    assert result.finish_reason == "stop" and result.upstream_model == "adapter-ok"
    [call] = mock_anthropic.calls_for("adapter-ok")
    assert call.path == "/v1/messages"
    assert call.body == {
        "model": "adapter-ok",
        "max_tokens": 64,  # the provider's default: the request had none
        "system": "Be terse.\n\nAnswer in French.",
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "hello there"},
        ],
    }
    assert (call.auth, call.api_version) == ("bearer", "2026-10-21")
    assert call.headers["Authorization"] == f"Bearer {MOCK_API_KEY}"
    assert "x-api-key" not in {name.lower() for name in call.headers}
    assert not any(openai_server.MOCK_API_KEY in value for value in call.headers.values())


async def test_explicit_max_tokens_truncates_with_length(mock_anthropic: MockAnthropic):
    provider = _provider(mock_anthropic.base_url)
    try:
        result = await provider.complete(_request("adapter-max", "one two three", max_tokens=2))
    finally:
        await provider.aclose()
    assert (result.text, result.finish_reason, result.output_tokens) == ("echo: one", "length", 2)
    [call] = mock_anthropic.calls_for("adapter-max")
    assert call.body["max_tokens"] == 2
    assert "system" not in call.body


async def test_environment_cannot_redirect_the_client(
    mock_anthropic: MockAnthropic, monkeypatch: pytest.MonkeyPatch
):
    """Settings are the one source of configuration, whatever ANTHROPIC_* says."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-environment")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-from-the-environment")
    default = build_client(api_key=MOCK_API_KEY, base_url=None, timeout=5, connect_timeout=1)
    await default.close()
    assert str(default.base_url).rstrip("/") == "https://api.anthropic.com"
    provider = _provider(mock_anthropic.base_url)
    try:
        await provider.complete(_request("adapter-env"))
    finally:
        await provider.aclose()
    [call] = mock_anthropic.calls_for("adapter-env")
    assert call.headers["Authorization"] == f"Bearer {MOCK_API_KEY}"


@pytest.mark.parametrize(
    ("model", "error", "status", "retry_after"),
    [
        ("error-400", BadRequest, 400, None),
        ("error-401", AuthenticationFailed, 401, None),
        ("error-403", AuthenticationFailed, 403, None),
        ("error-404", BadRequest, 404, None),
        ("error-429", RateLimited, 429, 1.0),
        ("error-429-no-retry-after", RateLimited, 429, None),
        ("error-500", Unavailable, 500, None),
        ("error-503", Unavailable, 503, 1.0),
        ("error-529", Unavailable, 529, 1.0),
        ("context-length", ContextLengthExceeded, 400, None),
    ],
)
async def test_vendor_errors_map_to_our_tree_with_one_call(
    mock_anthropic: MockAnthropic,
    model: str,
    error: type[ProviderError],
    status: int,
    retry_after: float | None,
):
    before = len(mock_anthropic.calls_for(model))
    caught = await _fails(mock_anthropic, _request(model))
    assert type(caught) is error
    assert (caught.status, caught.retry_after) == (status, retry_after)
    assert len(mock_anthropic.calls_for(model)) == before + 1  # SDK retries are off
    expected = "prompt is too long" if model == "context-length" else f"mock error {status}"
    assert expected in caught.message


async def test_wrong_key_is_an_authentication_error_without_the_key(
    mock_anthropic: MockAnthropic,
):
    provider = _provider(mock_anthropic.base_url, key="sk-ant-wrong-secret-value")
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await provider.complete(_request("adapter-wrong-key"))
    finally:
        await provider.aclose()
    assert "sk-ant-wrong-secret-value" not in caught.value.message
    assert "invalid x-api-key" in caught.value.message and caught.value.status == 401


def test_a_vendor_message_echoing_the_key_is_redacted():
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad sk-1"}}
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(400, json=body, request=request)
    exc = anthropic.BadRequestError("Error code: 400", response=response, body=body)
    mapped = map_anthropic_error(exc, provider="anthropic", api_key="sk-1")
    assert mapped.message == "anthropic: bad [redacted]"


@pytest.mark.parametrize("model", ["slow-5000", "hang", "trickle-4000"])
async def test_per_request_timeout_is_a_deadline_for_the_call(
    mock_anthropic: MockAnthropic, model: str
):
    """`trickle` never leaves a read waiting long: only a deadline for the whole call stops
    it before the body is complete. (The deadline leaves a loaded machine time to send the
    request; the answer would take far longer.)"""
    started = time.monotonic()
    caught = await _fails(mock_anthropic, _request(model, timeout=1.0))
    assert type(caught) is ProviderTimeout and caught.retryable
    assert time.monotonic() - started < 3.0
    assert len(mock_anthropic.calls_for(model)) >= 1


async def test_client_timeout_applies_and_a_request_timeout_overrides_it(
    mock_anthropic: MockAnthropic,
):
    caught = await _fails(mock_anthropic, _request("slow-1000-client"), timeout=0.3)
    assert type(caught) is ProviderTimeout
    provider = _provider(mock_anthropic.base_url, timeout=0.3)
    try:
        result = await provider.complete(_request("slow-600-longer", timeout=3.0))
    finally:
        await provider.aclose()
    assert result.text == "echo: ping"


async def test_reset_and_refused_connections(mock_anthropic: MockAnthropic):
    """Anthropic's aiohttp transport reports both as connection errors (openai's reports a
    refusal as a timeout); the cause tells a refusal from a connection that broke mid-call."""
    before = len(mock_anthropic.calls_for("reset"))
    reset = await _fails(mock_anthropic, _request("reset"))
    assert type(reset) is ConnectionFailed and reset.status is None
    assert reset.message == "the connection to anthropic failed or was dropped"
    assert len(mock_anthropic.calls_for("reset")) == before + 1

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    refused = _provider(f"http://127.0.0.1:{free_port}")
    try:
        with pytest.raises(ConnectionFailed) as caught:
            await refused.complete(_request("anything"))
    finally:
        await refused.aclose()
    assert caught.value.message == "could not connect to anthropic"


@pytest.mark.parametrize("model", ["malformed", "malformed-html", "malformed-shape"])
async def test_unreadable_replies_are_malformed(mock_anthropic: MockAnthropic, model: str):
    caught = await _fails(mock_anthropic, _request(model))
    assert type(caught) is MalformedResponse and caught.status == 200 and caught.retryable


async def test_missing_usage_is_estimated(mock_anthropic: MockAnthropic):
    provider = _provider(mock_anthropic.base_url)
    try:
        result = await provider.complete(_request("no-usage", "a somewhat longer prompt"))
    finally:
        await provider.aclose()
    assert result.usage_reported is False
    assert result.input_tokens == estimate_tokens("a somewhat longer prompt")
    assert result.output_tokens == estimate_tokens("echo: a somewhat longer prompt")


async def test_refusal_is_content_filtered(mock_anthropic: MockAnthropic):
    caught = await _fails(mock_anthropic, _request("refusal"))
    assert type(caught) is ContentFiltered and caught.status == 200
    assert "category: cyber" in caught.message and not caught.retryable


async def test_the_mock_streams_what_the_sdk_assembles(mock_anthropic: MockAnthropic):
    client = build_client(
        api_key=MOCK_API_KEY, base_url=mock_anthropic.base_url, timeout=5, connect_timeout=1
    )
    try:
        async with client.messages.stream(
            model="stream-ok",
            max_tokens=64,
            system="Be brief.",
            messages=[{"role": "user", "content": "hello streaming world"}],
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    finally:
        await client.close()
    assert len(pieces) == 4 and "".join(pieces) == "echo: hello streaming world"
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 4)
    assert (final.stop_reason, final.model) == ("end_turn", "stream-ok")
    assert final.id.startswith("msg_mock")
    [call] = mock_anthropic.calls_for("stream-ok")
    assert call.body["stream"] is True


async def test_the_mock_refuses_temperature_under_the_current_api_version(
    mock_anthropic: MockAnthropic,
):
    """Like the API: temperature is a 400 under 2026-10-21 (what SDK 2.x sends, and why the
    adapter sends none) and accepted under 2023-06-01 from older, x-api-key clients."""
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "ping"}]
    current = build_client(
        api_key=MOCK_API_KEY, base_url=mock_anthropic.base_url, timeout=5, connect_timeout=1
    )
    legacy = anthropic.AsyncAnthropic(
        api_key=MOCK_API_KEY,
        base_url=mock_anthropic.base_url,
        max_retries=0,
        default_headers={"anthropic-version": "2023-06-01", "x-api-key": MOCK_API_KEY},
    )
    try:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await current.messages.create(
                model="temperature-current",
                max_tokens=8,
                messages=messages,
                extra_body={"temperature": 1.0},
            )
        reply = await legacy.messages.create(
            model="temperature-legacy",
            max_tokens=8,
            messages=messages,
            extra_body={"temperature": 1.0},
        )
    finally:
        await current.close()
        await legacy.close()
    assert caught.value.api_message == "temperature: Extra inputs are not permitted"
    assert reply.content[0].type == "text" and reply.content[0].text == "echo: ping"
    [call] = mock_anthropic.calls_for("temperature-legacy")
    assert (call.auth, call.api_version, call.body["temperature"]) == (
        "x-api-key",
        "2023-06-01",
        1.0,
    )


# Streams (the cases every adapter shares are in test_streaming.py).


async def _stream(mock: MockAnthropic, request: CompletionRequest) -> list[str | Completion]:
    provider = _provider(mock.base_url)
    try:
        return [item async for item in provider.stream(request)]
    finally:
        await provider.aclose()


async def test_stream_sends_the_complete_request_with_stream_set(mock_anthropic: MockAnthropic):
    messages: list[Message] = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hello there"},
    ]
    request = CompletionRequest(model="stream-request", messages=messages)
    items = await _stream(mock_anthropic, request)
    provider = _provider(mock_anthropic.base_url)
    try:
        assert await provider.complete(request) == items[-1]
    finally:
        await provider.aclose()
    streamed, whole = mock_anthropic.calls_for("stream-request")
    assert streamed.body == {**whole.body, "stream": True}
    assert (streamed.auth, streamed.api_version) == ("bearer", "2026-10-21")


async def test_a_streamed_temperature_is_refused_without_a_call(mock_anthropic: MockAnthropic):
    with pytest.raises(BadRequest, match="does not accept a temperature"):
        await _stream(mock_anthropic, CompletionRequest("stream-temp", [], temperature=0.5))
    assert mock_anthropic.calls_for("stream-temp") == []


async def test_a_streamed_refusal_is_content_filtered_as_complete_is(
    mock_anthropic: MockAnthropic,
):
    with pytest.raises(ContentFiltered) as streamed:
        await _stream(mock_anthropic, _request("refusal"))
    whole = await _fails(mock_anthropic, _request("refusal"))
    assert (streamed.value.message, streamed.value.status) == (whole.message, whole.status)
    assert "category: cyber" in streamed.value.message


async def test_an_error_event_mid_stream_is_mapped_by_its_type(mock_anthropic: MockAnthropic):
    """Anthropic sends `overloaded_error` as an event inside a 200 OK stream under load: it is
    the retryable Unavailable that a 529 before the stream would be, not a bad request."""
    provider = _provider(mock_anthropic.base_url)
    deltas: list[str | Completion] = []
    try:
        with pytest.raises(Unavailable) as caught:
            async for item in provider.stream(_request("overloaded-mid-stream", "a b")):
                deltas.append(item)
    finally:
        await provider.aclose()
    assert deltas == ["echo:"]
    assert caught.value.retryable and caught.value.status == 529
    assert caught.value.message == "anthropic: Overloaded"


async def test_a_stream_cut_by_max_tokens_ends_with_length(mock_anthropic: MockAnthropic):
    items = await _stream(mock_anthropic, _request("stream-max", "one two three", max_tokens=2))
    assert items[:-1] == ["echo:", " one"]
    final = items[-1]
    assert isinstance(final, Completion)
    assert (final.text, final.finish_reason, final.output_tokens) == ("echo: one", "length", 2)
