"""Applications written for OpenAI, unchanged, through the gateway's /v1 on every provider: the
official `openai` SDK's structured outputs (`parse` into a pydantic model) and a two-step
agent loop with tools (whole and streamed), and LangChain's `ChatOpenAI` with tools and
structured output; over real HTTP, against the vendors' wire-level mocks.

The upstream model name picks the mock's behaviour (tests/mocks/*_server.py): `tool-call…`
calls the request's first tool with `{"city": "Paris"}` and, once the last turn is a tool
result, answers "tool said: <result>"; `json-city…` answers
`{"city": "Paris", "population": 2100000}`. Each request carries a marker of its own, by which
the test finds what the vendor's mock received (the mocks are shared by the whole session).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import BaseChatOpenAI
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, SecretStr

from tests.openai_compat.conftest import V1
from tests.openai_compat.test_chat import _mock

PROVIDERS = ["openai", "gemini", "anthropic"]

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
SUNNY = "sunny, 21 C"

# The id of the mock's tool call as the client sees it: OpenAI's and Anthropic's own; Gemini
# gives none (unless asked), so the gateway mints one.
CALL_IDS = {
    "openai": re.compile(r"call_mock_1"),
    "gemini": re.compile(r"call_[0-9a-f]+"),
    "anthropic": re.compile(r"toolu_mock_1"),
}


# What the vendor receives for LangChain's forced call of the tool `Place`.
FORCED_PLACE: dict[str, Callable[[dict[str, Any]], bool]] = {
    "openai": lambda body: (
        body["tool_choice"] == {"type": "function", "function": {"name": "Place"}}
        and body["parallel_tool_calls"] is False
    ),
    "gemini": lambda body: (
        body["toolConfig"]["functionCallingConfig"]
        == {"mode": "ANY", "allowedFunctionNames": ["Place"]}
    ),
    "anthropic": lambda body: (
        body["tool_choice"] == {"type": "tool", "name": "Place", "disable_parallel_tool_use": True}
    ),
}


class City(BaseModel):
    city: str
    population: int


class Place(BaseModel):
    """A place on the map."""

    city: str


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return SUNNY


def _json_city(provider: str) -> str:
    """An upstream name that answers the city's JSON: a name of its own where the mock takes
    a suffix; the Gemini mock knows `json-city` only by that exact name."""
    return "json-city" if provider == "gemini" else f"json-city-{uuid.uuid4().hex}"


def _received(
    request: pytest.FixtureRequest, provider: str, upstream: str, marker: str
) -> list[dict[str, Any]]:
    """The bodies the vendor's mock received for this upstream model carrying the marker."""
    calls = _mock(request, provider).calls_for(upstream)
    return [c.body for c in calls if marker in json.dumps(c.body)]


def _assert_schema_sent(provider: str, body: dict[str, Any], schema: dict[str, Any]) -> None:
    """The vendor was asked for JSON of this schema, in its own terms."""
    if provider == "openai":
        response_format = body["response_format"]
        assert response_format["type"] == "json_schema"
        assert response_format["json_schema"]["schema"] == schema
    elif provider == "gemini":
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"] == schema
    else:
        assert body["output_config"]["format"] == {"type": "json_schema", "schema": schema}


# -- the openai SDK: structured outputs --------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_parse_into_a_pydantic_model(v1: V1, request: pytest.FixtureRequest, provider: str):
    key, _ = await v1.user()
    upstream, marker = _json_city(provider), uuid.uuid4().hex
    async with v1.client(key) as client:
        completion = await client.chat.completions.parse(
            model=f"{provider}/{upstream}",
            messages=[{"role": "user", "content": f"Describe Paris. ({marker})"}],
            response_format=City,
        )

    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.refusal is None
    assert choice.message.parsed == City(city="Paris", population=2100000)
    # The SDK sent City's strict JSON schema; the vendor got exactly that schema.
    [body] = _received(request, provider, upstream, marker)
    _assert_schema_sent(provider, body, to_strict_json_schema(City))


# An Anthropic model of the catalogue without native structured output: the gateway makes it
# call a tool whose input schema is the answer's (app/providers/forced_tool.py).
BY_TOOL_MODEL, BY_TOOL_UPSTREAM = "claude-3-5-haiku", "claude-3-5-haiku-20241022"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_parse_on_a_model_without_native_structured_output(
    v1: V1, mock_anthropic: Any, stream: bool
):
    key, headers = await v1.user()
    marker = uuid.uuid4().hex
    messages: Any = [{"role": "user", "content": f"Describe Paris. ({marker})"}]
    async with v1.client(key) as client:
        if stream:
            async with client.chat.completions.stream(
                model=BY_TOOL_MODEL, messages=messages, response_format=City
            ) as events:
                completion = await events.get_final_completion()
        else:
            completion = await client.chat.completions.parse(
                model=BY_TOOL_MODEL, messages=messages, response_format=City
            )

    [choice] = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.parsed == City(city="Paris", population=2100000)
    assert not choice.message.tool_calls
    # Anthropic was made to call the forced tool, of City's schema, and asked nothing else.
    [call] = [c for c in mock_anthropic.calls_for(BY_TOOL_UPSTREAM) if marker in json.dumps(c.body)]
    [tool] = call.body["tools"]
    assert tool["name"] == "json_output"
    assert tool["input_schema"] == to_strict_json_schema(City)
    assert call.body["tool_choice"] == {
        "type": "tool",
        "name": "json_output",
        "disable_parallel_tool_use": True,
    }
    assert "output_config" not in call.body
    # The prompt records the answer as text, not as a tool call.
    [item] = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()["items"]
    answer = (await v1.prompt(headers, item["id"]))["response"]
    assert json.loads(answer["response_text"]) == {"city": "Paris", "population": 2100000}
    assert not answer["tool_calls"] and answer["finish_reason"] == "stop"


async def test_tools_and_structured_output_without_native_support_are_refused(
    v1: V1, mock_anthropic: Any
):
    """Refused at intake with a 400 naming both, before anything is recorded or sent."""
    key, headers = await v1.user()
    marker = uuid.uuid4().hex
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=BY_TOOL_MODEL,
                messages=[{"role": "user", "content": f"Weather in Paris? ({marker})"}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "City", "schema": to_strict_json_schema(City)},
                },
                tools=[WEATHER],
            )
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == "response_format"
    assert "response_format and tools cannot be combined" in refused.value.message
    assert BY_TOOL_MODEL in refused.value.message
    assert (await v1.api.client.get("/ai/prompts/", headers=headers)).json()["items"] == []
    sent = [c for c in mock_anthropic.calls_for(BY_TOOL_UPSTREAM) if marker in json.dumps(c.body)]
    assert sent == []


# -- the openai SDK: a two-step agent loop -------------------------------------------------------


async def _assert_tool_call_recorded(
    v1: V1, headers: dict[str, str], prompt_id: str, model: str, call: dict[str, Any]
) -> None:
    prompt = await v1.prompt(headers, prompt_id)
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["model"] == model
    assert prompt["parameters"]["tools"] == [WEATHER]
    answer = prompt["response"]
    assert answer["tool_calls"] == [call]
    assert answer["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_agent_loop(v1: V1, request: pytest.FixtureRequest, provider: str):
    key, headers = await v1.user()
    upstream, marker = f"tool-call-{uuid.uuid4().hex}", uuid.uuid4().hex
    model = f"{provider}/{upstream}"
    messages: list[Any] = [{"role": "user", "content": f"Weather in Paris? ({marker})"}]
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, tools=[WEATHER]
        )
        first = raw.parse()
        [choice] = first.choices
        assert choice.finish_reason == "tool_calls"
        message = choice.message
        assert message.role == "assistant" and message.content is None
        assert message.tool_calls is not None
        [call] = message.tool_calls
        assert isinstance(call, openai.types.chat.ChatCompletionMessageFunctionToolCall)
        assert CALL_IDS[provider].fullmatch(call.id), call.id
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}

        # Step 2: the assistant's turn as the SDK returned it, and the tool's result.
        messages += [
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": SUNNY},
        ]
        second = await client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER]
        )

    [answer] = second.choices
    assert answer.finish_reason == "stop"
    assert answer.message.content == f"tool said: {SUNNY}"
    assert answer.message.tool_calls is None
    assert len(_received(request, provider, upstream, marker)) == 2

    await _assert_tool_call_recorded(
        v1, headers, raw.headers["x-prompt-id"], model, call.model_dump(exclude_none=True)
    )


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_agent_loop_streamed(v1: V1, request: pytest.FixtureRequest, provider: str):
    key, headers = await v1.user()
    upstream, marker = f"tool-call-{uuid.uuid4().hex}", uuid.uuid4().hex
    model = f"{provider}/{upstream}"
    messages: list[Any] = [{"role": "user", "content": f"Weather in Paris? ({marker})"}]
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, tools=[WEATHER], stream=True
        )
        chunks = [chunk async for chunk in raw.parse()]

        choices = [c.choices[0] for c in chunks if c.choices]
        deltas = [d for c in choices for d in c.delta.tool_calls or []]
        assert deltas, "no tool-call delta in the stream"
        head = deltas[0]
        assert head.index == 0 and head.id and head.function and head.function.name
        assert CALL_IDS[provider].fullmatch(head.id), head.id
        assert head.function.name == "get_weather"
        assert {d.index for d in deltas} == {0}  # one call
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        assert json.loads(arguments) == {"city": "Paris"}
        assert choices[-1].finish_reason == "tool_calls"
        assert all(c.finish_reason is None for c in choices[:-1])
        assert not "".join(c.delta.content or "" for c in choices)

        # Step 2, streamed too: the assistant's turn built from the deltas.
        call = {
            "id": head.id,
            "type": "function",
            "function": {"name": head.function.name, "arguments": arguments},
        }
        messages += [
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": head.id, "content": SUNNY},
        ]
        stream = await client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER], stream=True
        )
        answer = [c.choices[0] async for c in stream if c.choices]

    assert "".join(c.delta.content or "" for c in answer) == f"tool said: {SUNNY}"
    assert not [c for c in answer if c.delta.tool_calls]
    assert answer[-1].finish_reason == "stop"
    assert len(_received(request, provider, upstream, marker)) == 2

    await _assert_tool_call_recorded(v1, headers, raw.headers["x-prompt-id"], model, call)


# -- LangChain's ChatOpenAI ----------------------------------------------------------------------


@pytest.fixture
def offline_langchain(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """LangChain reaches nothing but the gateway: no tracing, and no tokenizer (tiktoken
    would download its encodings) — a token count would fail the test here."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY"):
        monkeypatch.delenv(name, raising=False)

    def no_tokenizer(*_: Any, **__: Any) -> Any:
        raise AssertionError("LangChain tried to count tokens (tiktoken downloads encodings)")

    monkeypatch.setattr(BaseChatOpenAI, "_get_encoding_model", no_tokenizer)
    yield


def _chat_openai(v1: V1, key: str, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=v1.base_url,
        api_key=SecretStr(key),
        model=model,
        max_retries=0,
        timeout=30,
        **kwargs,
    )


@pytest.mark.usefixtures("offline_langchain")
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_langchain_tools(v1: V1, request: pytest.FixtureRequest, provider: str):
    key, _ = await v1.user()
    upstream, marker = f"tool-call-{uuid.uuid4().hex}", uuid.uuid4().hex
    llm = _chat_openai(v1, key, f"{provider}/{upstream}").bind_tools([get_weather])

    question = HumanMessage(f"Weather in Paris? ({marker})")
    called = await llm.ainvoke([question])
    assert isinstance(called, AIMessage)
    [call] = called.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
    assert call["id"] is not None and CALL_IDS[provider].fullmatch(call["id"]), call["id"]
    assert called.response_metadata["finish_reason"] == "tool_calls"

    result = await get_weather.ainvoke(call)  # a ToolMessage, as an agent runs the tool
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    answered = await llm.ainvoke([question, called, result])
    assert isinstance(answered, AIMessage)
    assert answered.content == f"tool said: {SUNNY}"
    assert answered.tool_calls == []
    # The vendor was offered the tool LangChain built from the function's signature.
    first, _ = _received(request, provider, upstream, marker)
    assert "get_weather" in json.dumps(first["tools"])


@pytest.mark.usefixtures("offline_langchain")
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_langchain_structured_output(v1: V1, request: pytest.FixtureRequest, provider: str):
    key, _ = await v1.user()
    upstream, marker = _json_city(provider), uuid.uuid4().hex
    llm = _chat_openai(v1, key, f"{provider}/{upstream}")
    structured = llm.with_structured_output(City)  # method json_schema, LangChain's default
    city = await structured.ainvoke(f"Describe Paris. ({marker})")
    assert city == City(city="Paris", population=2100000)
    [body] = _received(request, provider, upstream, marker)
    _assert_schema_sent(provider, body, to_strict_json_schema(City))


@pytest.mark.usefixtures("offline_langchain")
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_langchain_structured_output_by_function_calling(
    v1: V1, request: pytest.FixtureRequest, provider: str
):
    key, _ = await v1.user()
    upstream = f"tool-call-{uuid.uuid4().hex}"
    model = f"{provider}/{upstream}"
    extra: dict[str, Any] = {}
    if provider == "gemini":
        # LangChain asks for one call per turn (parallel_tool_calls false), which Gemini cannot
        # promise: the gateway refuses it, by name (the translation matrix), ...
        llm = _chat_openai(v1, key, model)
        with pytest.raises(openai.BadRequestError) as refused:
            await llm.with_structured_output(Place, method="function_calling").ainvoke("Paris?")
        assert refused.value.code == "unsupported_parameter"
        assert "parallel_tool_calls" in refused.value.message
        assert _mock(request, provider).calls_for(upstream) == []
        # ... and LangChain's own switch leaves it out.
        extra = {"disabled_params": {"parallel_tool_calls": None}}
    llm = _chat_openai(v1, key, model, **extra)
    place = await llm.with_structured_output(Place, method="function_calling").ainvoke("Paris?")
    assert place == Place(city="Paris")
    # The vendor was made to call Place, in its own terms (and, but for Gemini, only once).
    [sent] = _mock(request, provider).calls_for(upstream)
    assert FORCED_PLACE[provider](sent.body), sent.body
