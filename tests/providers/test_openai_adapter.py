"""The OpenAI adapter on the real `openai` SDK, over HTTP to the local wire-level mock."""

from __future__ import annotations

import socket

import openai
import pytest

from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    CompletionRequest,
    ConnectionFailed,
    ContextLengthExceeded,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from app.providers.openai import OpenAIProvider, build_client
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI


def _provider(base_url: str, *, key: str = MOCK_API_KEY, timeout: float = 5.0) -> OpenAIProvider:
    return OpenAIProvider(
        build_client(api_key=key, base_url=base_url, timeout=timeout, connect_timeout=1.0)
    )


def _request(model: str, text: str = "ping") -> CompletionRequest:
    return CompletionRequest(model=model, messages=[{"role": "user", "content": text}])


async def test_completion_with_usage(mock_openai: MockOpenAI):
    provider = _provider(mock_openai.base_url)
    try:
        result = await provider.complete(_request("adapter-ok", "hello there"))
    finally:
        await provider.aclose()
    assert result.text == "echo: hello there"
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (2, 3, True)
    assert result.finish_reason == "stop" and result.upstream_model == "adapter-ok"
    [call] = mock_openai.calls_for("adapter-ok")
    assert call.path == "/v1/chat/completions"
    assert call.headers["Authorization"] == f"Bearer {MOCK_API_KEY}"


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [
        ("error-400", BadRequest, 400),
        ("error-403", AuthenticationFailed, 403),
        ("error-429", RateLimited, 429),
        ("error-500", Unavailable, 500),
        ("error-503", Unavailable, 503),
        ("context-length", ContextLengthExceeded, 400),
    ],
)
async def test_vendor_errors_map_to_our_tree_with_one_call(
    mock_openai: MockOpenAI, model: str, error: type[Exception], status: int
):
    provider = _provider(mock_openai.base_url)
    before = len(mock_openai.calls_for(model))
    try:
        with pytest.raises(error) as caught:
            await provider.complete(_request(model))
    finally:
        await provider.aclose()
    assert getattr(caught.value, "status", None) == status
    assert len(mock_openai.calls_for(model)) == before + 1  # SDK retries are off
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 1.0
        assert caught.value.retryable


async def test_wrong_key_is_an_authentication_error_without_the_key(mock_openai: MockOpenAI):
    provider = _provider(mock_openai.base_url, key="sk-wrong-secret-value")
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await provider.complete(_request("adapter-wrong-key"))
    finally:
        await provider.aclose()
    assert "sk-wrong-secret-value" not in caught.value.message
    assert "Incorrect API key" in caught.value.message


async def test_timeout_and_refused_connection(mock_openai: MockOpenAI):
    slow = _provider(mock_openai.base_url, timeout=0.3)
    try:
        with pytest.raises(ProviderTimeout):
            await slow.complete(_request("slow-2000"))
    finally:
        await slow.aclose()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    refused = _provider(f"http://127.0.0.1:{free_port}/v1")
    try:
        with pytest.raises(ConnectionFailed):
            await refused.complete(_request("anything"))
    finally:
        await refused.aclose()


async def test_the_mock_streams_like_openai(mock_openai: MockOpenAI):
    """The SDK itself assembles the mock's stream: proof the chunk format is OpenAI's."""
    client = openai.AsyncOpenAI(api_key=MOCK_API_KEY, base_url=mock_openai.base_url, max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="stream-check",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage, finish = [], None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
    finally:
        await client.close()
    assert "".join(pieces) == "echo: one two three"
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 4)
