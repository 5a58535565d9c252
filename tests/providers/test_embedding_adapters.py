"""The adapters' `embed` over HTTP to the wire-level mocks: OpenAI through both transports (the
direct one held to what the SDK one does, behaviour by behaviour), and Gemini through its SDK.
Anthropic has no embeddings: its adapter is no `Embedder`."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from app.providers.anthropic import AnthropicProvider
from app.providers.base import (
    AuthenticationFailed,
    BadRequest,
    Embedder,
    EmbeddingRequest,
    Embeddings,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    pack_floats,
    unpack_floats,
)
from app.providers.gemini import GeminiProvider
from app.providers.gemini import build_client as gemini_client
from app.providers.local import LocalProvider
from app.providers.openai import OpenAIProvider, build_client
from app.providers.openai_http import OpenAIHTTPProvider
from tests.mocks import gemini_server
from tests.mocks.gemini_server import MockGemini
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI, mock_vector

TRANSPORTS = ("sdk", "direct")


def _openai(transport: str, base_url: str, *, key: str = MOCK_API_KEY) -> Embedder:
    if transport == "sdk":
        client = build_client(api_key=key, base_url=base_url, timeout=0.5, connect_timeout=1.0)
        return OpenAIProvider(client)
    return OpenAIHTTPProvider(api_key=key, base_url=base_url, timeout=0.5, connect_timeout=1.0)


async def _close(provider: Any) -> None:
    await provider.aclose()


def _vectors(texts: list[str], dimensions: int) -> tuple[bytes, ...]:
    return tuple(pack_floats(mock_vector(text, dimensions)) for text in texts)


def test_floats_pack_as_little_endian_float32():
    assert pack_floats([1.0, -2.5]) == struct.pack("<2f", 1.0, -2.5)
    assert unpack_floats(struct.pack("<2f", 0.25, 3.0)) == [0.25, 3.0]


def test_which_adapters_embed():
    for embedder in (OpenAIHTTPProvider, OpenAIProvider, GeminiProvider, LocalProvider):
        assert callable(embedder.embed)
    assert not hasattr(AnthropicProvider, "embed")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_openai_embeddings_and_the_request_sent(mock_openai: MockOpenAI, transport: str):
    provider = _openai(transport, mock_openai.base_url)
    model = f"embed-ok-{transport}"
    texts = ["hello there", "general kenobi"]
    try:
        result = await provider.embed(
            EmbeddingRequest(model=model, inputs=tuple(texts), dimensions=64, user="u-1")
        )
    finally:
        await _close(provider)
    assert result == Embeddings(_vectors(texts, 64), 4, True, model)
    assert result.dimensions == 64
    [call] = mock_openai.calls_for(model)
    assert call.path == "/v1/embeddings"
    assert call.body == {
        "model": model,
        "input": texts,
        "encoding_format": "base64",
        "dimensions": 64,
        "user": "u-1",
    }


CONFORMANCE = [
    "ok",
    "floats",
    "shuffled",
    "no-usage",
    "short",
    "fixed-8",
    "error-400",
    "error-401",
    "error-429",
    "error-429-no-retry-after",
    "error-500",
    "error-503",
    "malformed",
    "reset",
    "hang",
]

Outcome = Embeddings | tuple[type[ProviderError], str, int | None, float | None, str]


async def _outcome(provider: Embedder, request: EmbeddingRequest) -> Outcome:
    try:
        return await provider.embed(request)
    except ProviderError as exc:
        return (type(exc), exc.code, exc.status, exc.retry_after, exc.message)


@pytest.mark.parametrize("model", CONFORMANCE)
async def test_direct_embeddings_conform_to_the_sdk(mock_openai: MockOpenAI, model: str):
    """Equal Embeddings, or the same error class, code, status, retry_after and message."""
    sdk = _openai("sdk", mock_openai.base_url)
    direct = _openai("direct", mock_openai.base_url)
    request = EmbeddingRequest(model=model, inputs=("one", "two three"), dimensions=16)
    try:
        expected, got = await asyncio.gather(_outcome(sdk, request), _outcome(direct, request))
    finally:
        await _close(sdk)
        await _close(direct)
    assert got == expected
    if model == "error-429":
        assert expected[:4] == (RateLimited, "rate_limited", 429, 1.0)  # type: ignore[index]
    if model == "error-503":
        assert isinstance(expected, tuple) and expected[0] is Unavailable
    if model == "hang":
        assert isinstance(expected, tuple) and expected[0] is ProviderTimeout
    if model == "malformed":
        assert isinstance(expected, tuple) and expected[0] is MalformedResponse
    if model in ("ok", "floats", "shuffled"):
        assert isinstance(expected, Embeddings)
        assert expected.vectors == _vectors(["one", "two three"], 16)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_openai_wrong_key(mock_openai: MockOpenAI, transport: str):
    provider = _openai(transport, mock_openai.base_url, key="sk-wrong")
    try:
        with pytest.raises(AuthenticationFailed) as raised:
            await provider.embed(EmbeddingRequest(model="embed-key", inputs=("x",)))
    finally:
        await _close(provider)
    assert "sk-wrong" not in raised.value.message and raised.value.status == 401


async def test_gemini_embeddings_and_the_request_sent(mock_gemini: MockGemini):
    provider = GeminiProvider(
        gemini_client(
            api_key=gemini_server.MOCK_API_KEY,
            base_url=mock_gemini.base_url,
            timeout=5,
            connect_timeout=1,
        )
    )
    texts = ["first text", "second"]
    try:
        plain = await provider.embed(
            EmbeddingRequest(model="gemini-embedding-001", inputs=(texts[0],))
        )
        shortened = await provider.embed(
            EmbeddingRequest(model="usage-embed", inputs=tuple(texts), dimensions=32)
        )
        failures = []
        for model in ("error-429", "error-400", "error-503", "malformed-embed"):
            with pytest.raises(ProviderError) as raised:
                await provider.embed(EmbeddingRequest(model=model, inputs=("x",)))
            failures.append((type(raised.value), raised.value.retry_after))
    finally:
        await provider.aclose()
    # The Gemini API reports no usage: estimated (about four characters a token).
    assert plain == Embeddings(_vectors(texts[:1], 3072), 3, False, "gemini-embedding-001")
    assert shortened == Embeddings(_vectors(texts, 32), 3, True, "usage-embed")
    assert failures == [
        (RateLimited, 1.0),
        (BadRequest, None),
        (Unavailable, 2.0),
        (MalformedResponse, None),
    ]
    [call] = mock_gemini.calls_for("usage-embed")
    assert call.path == "/v1/models/usage-embed:batchEmbedContents"
    assert call.body == {
        "requests": [
            {
                "model": "models/usage-embed",
                "content": {"parts": [{"text": text}], "role": "user"},
                "outputDimensionality": 32,
            }
            for text in texts
        ]
    }
