"""Errors under /v1 are OpenAI's shape and statuses, so the SDK raises its usual exceptions;
/ai keeps its problem+json."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from app.providers.base import (
    ConnectionFailed,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from app.services.chat.errors import UpstreamFailed
from tests.mocks.openai_server import MockOpenAI
from tests.openai_compat.conftest import V1

HELLO: list[Any] = [{"role": "user", "content": "hello"}]


def _assert_openai_error(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"] and error["type"]
    return error


@pytest.mark.parametrize("key", ["pm_not-a-real-key", "sk-someone-elses"])
async def test_a_bad_key_is_an_authentication_error(v1: V1, key: str):
    async with v1.client(key) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


async def test_a_missing_key_is_a_401_in_openai_shape(v1: V1):
    response = await v1.api.client.post(
        "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}
    )
    _assert_openai_error(response, 401, "missing_api_key")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_an_unknown_model_is_not_found(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(model="gpt-4o-mni", messages=HELLO)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4o-mni", messages=HELLO, stream=True)
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert "gpt-4o-mini" in raised.value.message  # the close match is suggested
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    assert page["items"] == []  # nothing was recorded


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_rate_limit_after_the_retries(
    v1: V1, mock_openai: MockOpenAI, stream: bool
):
    key, headers = await v1.user()
    model = f"error-429-no-retry-after-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.with_raw_response.create(
                model=f"openai/{model}", messages=HELLO, stream=stream
            )
    assert raised.value.code == "rate_limited"
    assert "after 3 provider calls" in raised.value.message
    assert len(mock_openai.calls_for(model)) == 3  # the first call and RETRY_MAX_RETRIES more
    prompt_id = raised.value.response.headers["x-prompt-id"]
    prompt = (await v1.api.client.get(f"/ai/prompts/{prompt_id}", headers=headers)).json()
    assert prompt["status"] == "failed" and prompt["error"]["code"] == "rate_limited"
    assert [a["http_status"] for a in prompt["attempts"]] == [429, 429, 429]


@pytest.mark.parametrize(
    ("model", "error", "status", "code"),
    [
        ("error-503-no-retry-after", openai.InternalServerError, 503, "provider_unavailable"),
        ("reset", openai.InternalServerError, 502, "connection_error"),
        ("error-401", openai.InternalServerError, 502, "authentication_failed"),
        ("context-length", openai.BadRequestError, 400, "context_length_exceeded"),
    ],
)
async def test_upstream_failures_have_their_status(
    v1: V1, model: str, error: type[openai.APIStatusError], status: int, code: str
):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(error) as raised:
            await client.chat.completions.create(model=f"openai/{model}", messages=HELLO)
    assert raised.value.status_code == status
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (RateLimited("slow down", retry_after=2.4), 429),
        (ProviderTimeout("too slow"), 504),
        (Unavailable("down"), 503),
        (ConnectionFailed("gone"), 502),
        (MalformedResponse("garbled"), 502),
    ],
)
def test_each_upstream_failure_has_the_status_clients_expect(failure: ProviderError, status: int):
    error = UpstreamFailed(failure)
    assert (error.status_code, error.code) == (status, failure.code)
    if failure.retry_after is not None:
        assert error.headers == {"Retry-After": "2"}


_TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ],
}


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"messages": []}, "messages", "at least 1"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "audio output"),
        ({"temperature": 3}, "temperature", "less than or equal"),
        ({"messages": [{"role": "system", "content": "no user"}]}, "messages", "user message"),
        # A tool result for no call, and for a call no assistant turn made.
        (
            {"messages": [*HELLO, {"role": "tool", "content": "x"}]},
            "messages[1].tool_call_id",
            "no call",
        ),
        (
            {
                "messages": [
                    *HELLO,
                    _TOOL_CALL,
                    {"role": "tool", "tool_call_id": "call_2", "content": "x"},
                ]
            },
            "messages[2].tool_call_id",
            "call_2",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
            "input_audio",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
            "image",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "http://example.com/cat.png"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
            "https",
        ),
        # Tools: a schema that is not JSON Schema, a choice of a tool that is not there.
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}
                ]
            },
            "tools[0].function.parameters",
            "not a valid JSON Schema",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
            "'g'",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"$ref": "http://169.254.169.254/"}},
                        },
                    },
                }
            },
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        # Beyond the model's capabilities (gpt-4o-mini does not reason) and the provider's.
        ({"reasoning_effort": "low"}, "reasoning_effort", "reasoning"),
        (
            {"model": "local", "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "local",
        ),
        ({"model": "claude-haiku-4-5", "seed": 7}, "seed", "anthropic"),
    ],
)
async def test_invalid_or_unsupported_requests_are_bad_requests(
    v1: V1, change: dict[str, Any], param: str, words: str
):
    key, headers = await v1.user()
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO, **change}
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(**body)
    assert raised.value.param == param
    assert words in raised.value.message
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    assert page["items"] == []


async def test_harmless_openai_fields_are_tolerated(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            n=1,
            top_p=1,
            store=False,
            service_tier="auto",
            parallel_tool_calls=False,
            extra_body={"future_field": {"anything": True}},
        )
    assert completion.choices[0].message.content == "echo: hello"


async def test_unknown_endpoints_are_not_found(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.moderations.create(input="hi")
    assert raised.value.code == "unknown_url"
    assert "/v1/moderations" in raised.value.message


async def test_the_ai_routes_keep_problem_json(v1: V1):
    response = await v1.api.client.post("/ai/prompts/", json={"model": "x"})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "missing_api_key"
