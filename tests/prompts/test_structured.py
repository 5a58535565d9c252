"""`POST /ai/prompts/` with a conversation, tools and structured output: the background API
for extraction and classification at scale. On every provider and backend (the Celery
worker runs these prompts in production mode)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.conftest import Api
from tests.fidelity_samples import CITY_SCHEMA, WEATHER_TOOL
from tests.mocks.anthropic_server import MockAnthropic

PROVIDERS = ["openai", "gemini", "anthropic"]
CITY_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
}


async def _run(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("prompt_type", "extraction")
    response = await api.client.post("/ai/prompts/", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return await api.wait_final(headers, response.json()["id"])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_structured_prompt_stores_its_answer_parsed(api: Api, provider: str):
    headers = await api.new_user()
    prompt = await _run(
        api,
        headers,
        model=f"{provider}/json-city",
        prompt_text="Which city is the capital of France, and how many live there?",
        response_format=CITY_FORMAT,
    )
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["response"]["output_json"] == {"city": "Paris", "population": 2100000}
    assert prompt["parameters"]["response_format"] == CITY_FORMAT


async def test_structured_output_on_a_model_without_the_native_kind(
    api: Api, mock_anthropic: MockAnthropic
):
    """claude-3-5-haiku has no native structured output (the catalogue): the gateway makes it
    call a tool of the answer's schema, and the call's input is the answer."""
    headers = await api.new_user()
    marker = uuid.uuid4().hex
    prompt = await _run(
        api,
        headers,
        model="claude-3-5-haiku",
        prompt_text=f"Which city is the capital of France? ({marker})",
        response_format=CITY_FORMAT,
    )
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["response"]["output_json"] == {"city": "Paris", "population": 2100000}
    assert prompt["response"]["finish_reason"] == "stop"
    assert not prompt["response"]["tool_calls"]
    [call] = [
        c
        for c in mock_anthropic.calls_for("claude-3-5-haiku-20241022")
        if marker in json.dumps(c.body)
    ]
    assert [tool["input_schema"] for tool in call.body["tools"]] == [CITY_SCHEMA]
    assert call.body["tool_choice"]["type"] == "tool"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_answer_that_does_not_match_fails_with_its_text_kept(api: Api, provider: str):
    headers = await api.new_user()
    schema = {**CITY_SCHEMA, "required": ["city", "population", "country"]}
    wanting = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    prompt = await _run(
        api,
        headers,
        model=f"{provider}/json-city",
        prompt_text="Where?",
        response_format=wanting,
    )
    assert prompt["status"] == "failed"
    assert prompt["error"]["code"] == "invalid_structured_output"
    assert "'place'" in prompt["error"]["message"] and "country" in prompt["error"]["message"]
    # The call was made and billed: its answer and cost are kept.
    assert prompt["response"]["response_text"] == '{"city": "Paris", "population": 2100000}'
    assert prompt["response"]["output_json"] is None
    assert [a["outcome"] for a in prompt["attempts"]] == ["success"]


async def test_json_mode_needs_json(api: Api):
    headers = await api.new_user()
    prompt = await _run(
        api,
        headers,
        model="openai/chatty",
        prompt_text="no json here",
        response_format={"type": "json_object"},
    )
    assert prompt["status"] == "failed"
    assert prompt["error"]["code"] == "invalid_structured_output"
    assert prompt["response"]["response_text"] == "echo: no json here"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_conversation_with_tools_records_the_calls(api: Api, provider: str):
    headers = await api.new_user()
    messages = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    prompt = await _run(
        api,
        headers,
        model=f"{provider}/tool-call",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["prompt_text"] == "Weather in Paris?"
    [call] = prompt["response"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"].replace(" ", "") == '{"city":"Paris"}'
    assert prompt["response"]["finish_reason"] == "tool_calls"
    assert prompt["parameters"]["messages"] == messages
    assert prompt["parameters"]["tools"] == [WEATHER_TOOL]
    assert prompt["parameters"]["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (
            {"prompt_text": "a", "messages": [{"role": "user", "content": "b"}]},
            "validation_error",
            "either prompt_text or messages",
        ),
        ({"prompt_text": None}, "validation_error", "either prompt_text or messages"),
        (
            {"messages": [{"role": "system", "content": "no user"}]},
            "invalid_messages",
            "user message",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]},
            "invalid_json_schema",
            "tools[0].function.parameters",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "invalid_response_format",
            "json_schema.schema",
        ),
        # What the model cannot do, and a fallback that could not either.
        ({"model": "local", "tools": [WEATHER_TOOL]}, "unsupported_parameter", "local"),
        (
            {"model": "gpt-4o-mini", "tools": [WEATHER_TOOL], "fallbacks": ["local"]},
            "unsupported_parameter",
            "fallback local",
        ),
        # Structured output by forced tool (no native kind) leaves no room for the request's
        # own tools.
        (
            {"model": "claude-3-5-haiku", "tools": [WEATHER_TOOL], "response_format": CITY_FORMAT},
            "unsupported_parameter",
            "response_format and tools cannot be combined",
        ),
    ],
)
async def test_what_cannot_be_run_is_refused_and_not_recorded(
    api: Api, body: dict[str, Any], code: str, words: str
):
    headers = await api.new_user()
    request = {"model": "openai/x", "prompt_type": "text", "prompt_text": "hi", **body}
    request = {k: v for k, v in request.items() if v is not None}
    if "messages" in body and "prompt_text" not in body:
        del request["prompt_text"]
    response = await api.client.post(
        "/ai/prompts/", json=request, headers=headers | {"Idempotency-Key": str(uuid.uuid4())}
    )
    assert response.status_code in (400, 422), response.text
    problem = response.json()
    assert problem["code"] == code, problem
    assert words in response.text
    assert (await api.client.get("/ai/prompts/", headers=headers)).json()["items"] == []
