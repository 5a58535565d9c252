"""The OpenAI adapters over HTTP to the local wire-level mock: every test runs against both
transports, the official `openai` SDK (`sdk`) and our own aiohttp client (`direct`); and a
conformance test holds the direct one to what the SDK one does, behaviour by behaviour."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import openai
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
    Provider,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from app.providers.catalogue import load_catalogue
from app.providers.openai import OpenAIProvider, build_client
from app.providers.openai_http import USER_AGENT, OpenAIHTTPProvider
from app.providers.registry import build_providers
from tests.conftest import make_settings
from tests.mocks.openai_server import MOCK_API_KEY, MockOpenAI

TRANSPORTS = ("sdk", "direct")


def _provider(
    transport: str,
    base_url: str,
    *,
    key: str | None = MOCK_API_KEY,
    timeout: float = 5.0,
    name: str = "openai",
) -> Provider:
    if transport == "sdk":
        client = build_client(
            api_key=key or "none", base_url=base_url, timeout=timeout, connect_timeout=1.0
        )
        return OpenAIProvider(client, name=name)
    return OpenAIHTTPProvider(
        name=name, api_key=key, base_url=base_url, timeout=timeout, connect_timeout=1.0
    )


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _request(model: str, text: str = "ping", **options: Any) -> CompletionRequest:
    return CompletionRequest(model=model, messages=[{"role": "user", "content": text}], **options)


async def test_completion_with_usage(mock_openai: MockOpenAI, transport: str):
    provider = _provider(transport, mock_openai.base_url)
    model = f"adapter-ok-{transport}"
    try:
        result = await provider.complete(_request(model, "hello there"))
    finally:
        await provider.aclose()
    assert result.text == "echo: hello there"
    assert (result.input_tokens, result.output_tokens, result.usage_reported) == (2, 3, True)
    assert result.finish_reason == "stop" and result.upstream_model == model
    [call] = mock_openai.calls_for(model)
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
        ("rejected-content_policy_violation", ContentFiltered, 400),
    ],
)
async def test_vendor_errors_map_to_our_tree_with_one_call(
    mock_openai: MockOpenAI, transport: str, model: str, error: type[Exception], status: int
):
    provider = _provider(transport, mock_openai.base_url)
    before = len(mock_openai.calls_for(model))
    try:
        with pytest.raises(error) as caught:
            await provider.complete(_request(model))
    finally:
        await provider.aclose()
    assert getattr(caught.value, "status", None) == status
    assert len(mock_openai.calls_for(model)) == before + 1  # no retries inside the adapter
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 1.0
        assert caught.value.retryable


async def test_wrong_key_is_an_authentication_error_without_the_key(
    mock_openai: MockOpenAI, transport: str
):
    provider = _provider(transport, mock_openai.base_url, key="sk-wrong-secret-value")
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await provider.complete(_request("adapter-wrong-key"))
    finally:
        await provider.aclose()
    assert "sk-wrong-secret-value" not in caught.value.message
    assert "Incorrect API key" in caught.value.message


async def test_timeout_and_refused_connection(mock_openai: MockOpenAI, transport: str):
    slow = _provider(transport, mock_openai.base_url, timeout=0.3)
    try:
        with pytest.raises(ProviderTimeout):
            await slow.complete(_request("slow-2000"))
    finally:
        await slow.aclose()

    refused = _provider(transport, f"http://127.0.0.1:{_free_port()}/v1")
    try:
        with pytest.raises(ConnectionFailed):
            await refused.complete(_request("anything"))
    finally:
        await refused.aclose()


async def test_the_request_timeout_is_a_deadline_for_the_whole_call(
    mock_openai: MockOpenAI, transport: str
):
    provider = _provider(transport, mock_openai.base_url, timeout=30)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProviderTimeout):
            await provider.complete(_request("hang-deadline", timeout=0.3))
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await provider.aclose()


async def test_http_proxy_from_the_environment(
    mock_openai: MockOpenAI, transport: str, monkeypatch: pytest.MonkeyPatch
):
    """HTTP_PROXY is honoured (the mock plays the proxy: it answers the absolute-form request
    itself), and NO_PROXY exempts a host from it."""
    origin = mock_openai.base_url.removesuffix("/v1")
    monkeypatch.setenv("HTTP_PROXY", origin)
    proxied = _provider(transport, "http://upstream.example/v1")
    try:
        result = await proxied.complete(_request(f"proxied-{transport}", "via"))
    finally:
        await proxied.aclose()
    assert result.text == "echo: via"

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exempt = _provider(transport, mock_openai.base_url)
    try:
        result = await exempt.complete(_request(f"not-proxied-{transport}", "direct"))
    finally:
        await exempt.aclose()
    assert result.text == "echo: direct"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Conformance: the direct adapter against the SDK one, with the SDK as the reference.

CONFORMANCE = [
    "adapter-ok",
    "no-usage",
    "cached-1",
    "slow-50",
    "null-content",
    "no-model",
    "error-400",
    "error-401",
    "error-403",
    "error-404",
    "error-422",
    "error-429",
    "error-429-no-retry-after",
    "error-500",
    "error-502",
    "error-503",
    "error-503-no-retry-after",
    "retry-after-7",
    "retry-after-0.5",
    "retry-after-soon",
    "context-length",
    "rejected-content_filter",
    "rejected-content_policy_violation",
    "rejected-other",
    "long-error",
    "html-400",
    "html-502",
    "filtered",
    "no-choices",
    "malformed",
    "reset",
    "hang",
]

Outcome = Completion | tuple[type[ProviderError], str, int | None, float | None, str]


async def _outcome(provider: Provider, request: CompletionRequest) -> Outcome:
    try:
        return await provider.complete(request)
    except ProviderError as exc:
        return (type(exc), exc.code, exc.status, exc.retry_after, exc.message)


@pytest.mark.parametrize("model", CONFORMANCE)
async def test_direct_transport_conforms_to_the_sdk(mock_openai: MockOpenAI, model: str):
    """Equal Completions, or the same error class, code, status, retry_after and message."""
    sdk = _provider("sdk", mock_openai.base_url, timeout=0.5)
    direct = _provider("direct", mock_openai.base_url, timeout=0.5)
    request = _request(model, "hello there")
    try:
        expected, got = await asyncio.gather(_outcome(sdk, request), _outcome(direct, request))
    finally:
        await sdk.aclose()
        await direct.aclose()
    assert got == expected


def _sent_request(model: str) -> CompletionRequest:
    """A request with every field the body can carry, for comparing what is sent."""
    return CompletionRequest(
        model=model,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three four"},
        ],
        temperature=0.25,
        max_tokens=2,
    )


async def test_both_transports_send_the_same_request(mock_openai: MockOpenAI):
    request = _sent_request("same-body")
    results = []
    for transport in TRANSPORTS:
        provider = _provider(transport, mock_openai.base_url)
        try:
            results.append(await provider.complete(request))
        finally:
            await provider.aclose()
    sdk_call, direct_call = mock_openai.calls_for("same-body")[-2:]
    assert direct_call.body == sdk_call.body
    assert direct_call.body["max_tokens"] == 2 and direct_call.body["temperature"] == 0.25
    assert results[0] == results[1] and results[1].finish_reason == "length"
    bare = _provider("direct", mock_openai.base_url)
    try:
        await bare.complete(_request("bare-body"))
    finally:
        await bare.aclose()
    [call] = mock_openai.calls_for("bare-body")
    assert set(call.body) == {"model", "messages"}  # optional parameters only when given


@pytest.mark.parametrize(
    ("setting", "kind"), [("direct", OpenAIHTTPProvider), ("sdk", OpenAIProvider)]
)
async def test_openai_transport_chooses_the_adapter_of_every_compatible_provider(
    mock_openai: MockOpenAI, setting: str, kind: type[Provider]
):
    settings = make_settings(
        "sqlite+aiosqlite://", mock_openai, openai_transport=setting, local_model_enabled=False
    )
    providers = build_providers(settings, load_catalogue())
    try:
        assert sorted(providers) == ["backup", "openai"]
        for name, provider in providers.items():
            assert isinstance(provider, kind) and provider.name == name
            result = await provider.complete(_request(f"wired-{setting}-{name}", "hi"))
            assert result.text == "echo: hi"
    finally:
        for provider in providers.values():
            await provider.aclose()


# The direct adapter's own promises.


async def test_direct_sends_no_authorization_without_a_key(mock_openai: MockOpenAI):
    provider = _provider("direct", mock_openai.base_url, key=None, name="keyless")
    try:
        with pytest.raises(AuthenticationFailed) as caught:  # this mock wants a key
            await provider.complete(_request("no-key-sent"))
    finally:
        await provider.aclose()
    assert caught.value.status == 401 and caught.value.message.startswith("keyless ")
    [call] = mock_openai.calls_for("no-key-sent")
    assert "Authorization" not in call.headers
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Accept"] == "application/json"
    assert call.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("prompt-manager/")


async def test_direct_unreachable_port_is_a_connection_failure():
    provider = _provider("direct", f"http://127.0.0.1:{_free_port()}/v1", name="gone")
    try:
        with pytest.raises(ConnectionFailed) as caught:
            await provider.complete(_request("anything"))
    finally:
        await provider.aclose()
    assert caught.value.retryable
    assert caught.value.message == "the connection to gone failed or was dropped"


async def test_direct_wrong_shape_is_malformed_not_a_crash(mock_openai: MockOpenAI):
    """The SDK lets an AttributeError out here; the direct adapter says what happened."""
    provider = _provider("direct", mock_openai.base_url)
    try:
        with pytest.raises(MalformedResponse) as caught:
            await provider.complete(_request("wrong-shape"))
    finally:
        await provider.aclose()
    assert caught.value.retryable


def test_direct_base_url_default_and_trailing_slash():
    default = OpenAIHTTPProvider(api_key="k", base_url=None, timeout=1, connect_timeout=1)
    assert default.url == "https://api.openai.com/v1/chat/completions"
    slash = OpenAIHTTPProvider(
        api_key="k", base_url="http://127.0.0.1:9/v1/", timeout=1, connect_timeout=1
    )
    assert slash.url == "http://127.0.0.1:9/v1/chat/completions"


async def test_direct_works_on_a_loop_in_another_thread(mock_openai: MockOpenAI):
    """Made outside any loop, used on a loop of its own thread, as the Celery worker does."""
    provider = await asyncio.to_thread(
        OpenAIHTTPProvider,
        api_key=MOCK_API_KEY,
        base_url=mock_openai.base_url + "/",
        timeout=5,
        connect_timeout=1,
    )

    async def use() -> list[Completion]:
        try:
            return [await provider.complete(_request("threaded", str(i))) for i in range(3)]
        finally:
            await provider.aclose()

    results = await asyncio.to_thread(asyncio.run, use())
    assert [r.text for r in results] == ["echo: 0", "echo: 1", "echo: 2"]


async def test_direct_has_no_connection_limit(mock_openai: MockOpenAI):
    """More calls in flight at once than aiohttp's default pool (100) would let out."""
    provider = _provider("direct", mock_openai.base_url, timeout=10)
    calls = 150
    tasks = [asyncio.create_task(provider.complete(_request("hang-many"))) for _ in range(calls)]
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while len(mock_openai.calls_for("hang-many")) < calls:
            assert asyncio.get_running_loop().time() < deadline, "the calls were held back"
            await asyncio.sleep(0.02)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await provider.aclose()


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


# Streams: both transports, the SDK's as the reference.

STREAM_CONFORMANCE = [
    "adapter-ok",
    "no-usage",
    "cached-1",
    "error-400",
    "error-401",
    "error-429",
    "error-503-no-retry-after",
    "retry-after-7",
    "context-length",
    "rejected-content_policy_violation",
    "long-error",
    "html-502",
    "filtered-stream",
    "malformed",
    "bad-chunk",
    "break-1",
    "stall-1",
    "reset",
    "hang",
]

StreamOutcome = tuple[list[str], Outcome]


async def _stream_outcome(provider: Provider, request: CompletionRequest) -> StreamOutcome:
    """The deltas, then the Completion, or the error the stream ended with."""
    deltas: list[str] = []
    try:
        async for item in provider.stream(request):
            if isinstance(item, Completion):
                return deltas, item
            deltas.append(item)
    except ProviderError as exc:
        return deltas, (type(exc), exc.code, exc.status, exc.retry_after, exc.message)
    raise AssertionError("the stream ended without a Completion")


@pytest.mark.parametrize("model", STREAM_CONFORMANCE)
async def test_direct_stream_conforms_to_the_sdk(mock_openai: MockOpenAI, model: str):
    """The same deltas, then an equal Completion or the same error."""
    sdk = _provider("sdk", mock_openai.base_url, timeout=1.0)
    direct = _provider("direct", mock_openai.base_url, timeout=1.0)
    request = _request(model, "hello there")
    try:
        expected, got = await asyncio.gather(
            _stream_outcome(sdk, request), _stream_outcome(direct, request)
        )
    finally:
        await sdk.aclose()
        await direct.aclose()
    assert got == expected


async def test_a_stream_asks_for_its_usage_and_both_transports_send_the_same_body(
    mock_openai: MockOpenAI,
):
    request = _sent_request("same-stream-body")
    results = []
    for transport in TRANSPORTS:
        provider = _provider(transport, mock_openai.base_url)
        try:
            results.append(await _stream_outcome(provider, request))
        finally:
            await provider.aclose()
    sdk_call, direct_call = mock_openai.calls_for("same-stream-body")[-2:]
    assert direct_call.body == sdk_call.body
    assert direct_call.body["stream"] is True
    assert direct_call.body["stream_options"] == {"include_usage": True}
    assert results[0] == results[1] == (["echo:", " one"], results[0][1])
    final = results[0][1]
    assert isinstance(final, Completion) and final.finish_reason == "length"


async def test_a_filtered_stream_is_content_filtered_after_its_text(
    mock_openai: MockOpenAI, transport: str
):
    provider = _provider(transport, mock_openai.base_url)
    try:
        deltas, outcome = await _stream_outcome(provider, _request("filtered-stream", "a b"))
    finally:
        await provider.aclose()
    assert deltas == ["echo:", " a", " b"]
    assert not isinstance(outcome, Completion) and outcome[0] is ContentFiltered


async def test_direct_stream_reuses_its_connection(mock_openai: MockOpenAI):
    """After `[DONE]` the end of the body is read, so the connection goes back to the pool;
    an abandoned stream's connection is closed instead."""
    provider = OpenAIHTTPProvider(
        api_key=MOCK_API_KEY, base_url=mock_openai.base_url, timeout=5, connect_timeout=1
    )
    try:
        for _ in range(3):
            _, final = await _stream_outcome(provider, _request("pooled-stream", "hi"))
            assert isinstance(final, Completion)
        assert provider._session is not None

        def pooled() -> int:  # aiohttp has no public count of its idle connections
            return sum(len(idle) for idle in provider._session.connector._conns.values())

        assert pooled() == 1
        stream = provider.stream(_request("drip-300-pool", "a b c d"))
        await anext(stream)  # on the pooled connection
        await stream.aclose()
        assert pooled() == 0
    finally:
        await provider.aclose()
