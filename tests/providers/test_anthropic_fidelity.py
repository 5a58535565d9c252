"""The "anthropic" column of the translation matrix (app/providers/fidelity.py), through the real
`anthropic` SDK adapter over HTTP to the wire-level mock: every translated cell's sample
(tests/fidelity_samples.py) arrives as tests/mocks/anthropic_expect.py says, streamed or not;
what comes back (tool calls, JSON, thinking) is read into OpenAI's shape; and what cannot be
translated is refused before any call, never dropped."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from app.providers.anthropic import AnthropicProvider, build_client
from app.providers.base import (
    BadRequest,
    Completion,
    CompletionRequest,
    Message,
    ToolCall,
    ToolCallDelta,
)
from app.providers.fidelity import IMAGES, ROWS, TOOL_TURNS
from tests.fidelity_samples import CITY_SCHEMA, SAMPLES, WEATHER_TOOL
from tests.mocks.anthropic_expect import EXPECTED
from tests.mocks.anthropic_server import MOCK_API_KEY, MockAnthropic

CHECKED = [r.name for r in ROWS if r.cells["anthropic"].how in ("translated", "recorded")]
REFUSED = [r.name for r in ROWS if r.cells["anthropic"].how == "refused"]
DEFAULT_MAX_TOKENS = 64
ASK: list[Message] = [{"role": "user", "content": "What is the weather in Paris?"}]

Item = str | ToolCallDelta | Completion


def _provider(base_url: str, *, by_tool: frozenset[str] = frozenset()) -> AnthropicProvider:
    client = build_client(api_key=MOCK_API_KEY, base_url=base_url, timeout=5, connect_timeout=1)
    return AnthropicProvider(
        client, default_max_tokens=DEFAULT_MAX_TOKENS, structured_by_tool=by_tool
    )


def _request(
    model: str, sample: dict[str, Any], *, max_tokens: int | None = None
) -> CompletionRequest:
    """A request made with a sample, as the intake hands it over: its messages (or a minimal
    question), and its other fields as options (`stop` always a list)."""
    options = dict(sample)
    messages: list[Message] = options.pop("messages", ASK)
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    return CompletionRequest(model, messages, max_tokens=max_tokens, options=options)


async def _both(
    mock: MockAnthropic, request: CompletionRequest, *, by_tool: frozenset[str] = frozenset()
) -> tuple[Completion, list[Item]]:
    """The request answered whole, then streamed."""
    provider = _provider(mock.base_url, by_tool=by_tool)
    try:
        whole = await provider.complete(request)
        streamed = [item async for item in provider.stream(request)]
    finally:
        await provider.aclose()
    return whole, streamed


async def _refused(
    mock: MockAnthropic, request: CompletionRequest, *, by_tool: frozenset[str] = frozenset()
) -> list[str]:
    """The messages of the BadRequests the call raises, whole and streamed."""
    provider = _provider(mock.base_url, by_tool=by_tool)
    messages = []
    try:
        with pytest.raises(BadRequest) as whole:
            await provider.complete(request)
        messages.append(whole.value.message)
        with pytest.raises(BadRequest) as streamed:
            _ = [item async for item in provider.stream(request)]
        messages.append(streamed.value.message)
    finally:
        await provider.aclose()
    return messages


def _call(arguments: str) -> ToolCall:
    return {
        "id": "toolu_mock_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


def _model(prefix: str, row: str) -> str:
    return f"{prefix}-" + "".join(c if c.isalnum() else "-" for c in row)


def test_every_translated_or_recorded_row_has_its_check():
    assert sorted(EXPECTED) == sorted(CHECKED)
    assert {"tools", TOOL_TURNS, IMAGES, "user"} <= set(CHECKED)


@pytest.mark.parametrize("row", CHECKED)
async def test_each_row_arrives_as_anthropic_expects(mock_anthropic: MockAnthropic, row: str):
    model = _model("fidelity", row)
    whole, streamed = await _both(mock_anthropic, _request(model, SAMPLES[row]))
    sent, sent_streamed = mock_anthropic.calls_for(model)
    EXPECTED[row](sent.body)
    EXPECTED[row](sent_streamed.body)
    assert sent_streamed.body == {**sent.body, "stream": True}
    final = streamed[-1]
    assert isinstance(final, Completion)
    if row == "tool_choice":  # a forced call: the model calls the tool, as the API's does
        for answer in (whole, final):
            assert answer.finish_reason == "tool_calls"
            assert [c["function"]["name"] for c in answer.tool_calls] == ["get_weather"]
    else:
        assert final == whole and whole.finish_reason == "stop"


async def test_the_checks_fail_on_a_request_without_the_row(mock_anthropic: MockAnthropic):
    """Each check proves its row: the body of a plain request fails every one of them."""
    provider = _provider(mock_anthropic.base_url)
    try:
        await provider.complete(_request("fidelity-plain", {}))
    finally:
        await provider.aclose()
    [plain] = mock_anthropic.calls_for("fidelity-plain")
    for row, check in EXPECTED.items():
        try:
            check(plain.body)
        except AssertionError as failed:
            assert row in str(failed)  # the message says which row is missing
        else:
            pytest.fail(f"the check of {row} passed a request without it")


async def test_a_tool_call_is_read_as_openai_tool_calls(mock_anthropic: MockAnthropic):
    whole, streamed = await _both(mock_anthropic, _request("tool-call-read", SAMPLES["tools"]))
    assert whole.tool_calls == (_call('{"city":"Paris"}'),)
    assert list(whole.tool_calls[0]) == ["id", "type", "function"]
    assert (whole.text, whole.finish_reason) == ("", "tool_calls")
    assert whole.usage_reported and whole.reasoning_tokens == 0
    assert streamed[:-1] == [
        ToolCallDelta(index=0, id="toolu_mock_1", name="get_weather", arguments=""),
        ToolCallDelta(index=0, arguments='{"city": '),
        ToolCallDelta(index=0, arguments='"Paris"}'),
    ]
    final = streamed[-1]
    assert isinstance(final, Completion)
    assert final.tool_calls == (_call('{"city": "Paris"}'),)
    assert (final.text, final.finish_reason) == ("", "tool_calls")
    assert (final.input_tokens, final.output_tokens) == (whole.input_tokens, whole.output_tokens)


async def test_a_tool_call_goes_round_and_its_result_is_answered(
    mock_anthropic: MockAnthropic,
):
    """The call the model made goes back with its result (the mock, like the API, refuses a
    tool_result that answers no tool_use of the turn before), and the model answers it."""
    provider = _provider(mock_anthropic.base_url)
    try:
        called = await provider.complete(_request("tool-call-round", SAMPLES["tools"]))
        conversation: list[Message] = [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": list(called.tool_calls)},
            {"role": "tool", "tool_call_id": "toolu_mock_1", "content": "sunny, 21 C"},
        ]
        request = _request("tool-call-round", {**SAMPLES["tools"], "messages": conversation})
        answered = await provider.complete(request)
        streamed = [item async for item in provider.stream(request)]
    finally:
        await provider.aclose()
    assert (answered.text, answered.finish_reason) == ("tool said: sunny, 21 C", "stop")
    assert answered.tool_calls == ()
    assert "".join(i for i in streamed if isinstance(i, str)) == answered.text
    assert streamed[-1] == answered
    sent = mock_anthropic.calls_for("tool-call-round")[1].body["messages"]
    assert sent[1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_mock_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_mock_1", "content": "sunny, 21 C"}
            ],
        },
    ]


async def test_consecutive_tool_turns_share_one_user_turn(mock_anthropic: MockAnthropic):
    calls: list[ToolCall] = [
        {
            "id": f"call_{city}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        for city in ("Paris", "Oslo")
    ]
    conversation: list[Message] = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_Paris", "content": "sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_Oslo",
            "content": [{"type": "text", "text": "snow"}],
        },
        {"role": "user", "content": "And so?"},
    ]
    request = _request("tool-call-two", {"tools": [WEATHER_TOOL], "messages": conversation})
    whole, _ = await _both(mock_anthropic, request)
    sent = mock_anthropic.calls_for("tool-call-two")[0].body["messages"]
    assert sent[1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "call_Paris",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_Oslo",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_Paris", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_Oslo", "content": "snow"},
            ],
        },
        {"role": "user", "content": "And so?"},
    ]
    # The last user turn has no tool result: the model calls the tool again.
    assert whole.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        (
            {"tool_choice": "required", "parallel_tool_calls": False},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
        (
            {**SAMPLES["tool_choice"], "parallel_tool_calls": False},
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
    ],
    ids=["none", "required", "required-one-call", "named-one-call", "none-one-call"],
)
async def test_tool_choices(
    mock_anthropic: MockAnthropic, sample: dict[str, Any], expected: dict[str, Any]
):
    model = "fidelity-choice-" + json.dumps(expected, sort_keys=True)
    await _both(mock_anthropic, _request(model, {"tools": [WEATHER_TOOL], **sample}))
    for call in mock_anthropic.calls_for(model):
        assert call.body["tool_choice"] == expected


async def test_a_tool_without_parameters_takes_an_empty_object(mock_anthropic: MockAnthropic):
    bare = {"type": "function", "function": {"name": "now"}}
    whole, _ = await _both(mock_anthropic, _request("tool-call-bare", {"tools": [bare]}))
    assert whole.tool_calls[0]["function"]["name"] == "now"
    for call in mock_anthropic.calls_for("tool-call-bare"):
        assert call.body["tools"] == [
            {"name": "now", "input_schema": {"type": "object", "properties": {}}}
        ]


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ({"type": "json_object"}, {"type": "object"}),
        (SAMPLES["response_format"]["response_format"], CITY_SCHEMA),
    ],
    ids=["json_object", "json_schema"],
)
async def test_json_output(
    mock_anthropic: MockAnthropic, response_format: dict[str, Any], schema: dict[str, Any]
):
    model = f"json-city-{response_format['type']}"
    whole, streamed = await _both(
        mock_anthropic, _request(model, {"response_format": response_format})
    )
    assert json.loads(whole.text) == {"city": "Paris", "population": 2100000}
    assert streamed[-1] == whole
    for call in mock_anthropic.calls_for(model):
        assert call.body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


# -- structured output by forced tool, for a model without the native kind ----------------------

FORCED_CHOICE = {"type": "tool", "name": "json_output", "disable_parallel_tool_use": True}


def _forced_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "json_output",
        "description": (
            "Give your answer by calling this tool once: its input is the whole answer, as "
            "JSON of this schema."
        ),
        "input_schema": schema,
    }


async def test_structured_output_by_forced_tool(mock_anthropic: MockAnthropic):
    """A model without native structured output is made to call a tool whose input schema is
    the answer's; the call's input comes back as the answer's text, not as a tool call."""
    model = "old-model-json-schema"
    request = _request(model, SAMPLES["response_format"])
    whole, streamed = await _both(mock_anthropic, request, by_tool=frozenset({model}))
    for call in mock_anthropic.calls_for(model):
        assert call.body["tools"] == [_forced_tool(CITY_SCHEMA)]
        assert call.body["tool_choice"] == FORCED_CHOICE
        assert "output_config" not in call.body
    assert whole.text == '{"city":"Paris","population":2100000}'
    assert (whole.finish_reason, whole.tool_calls) == ("stop", ())
    # Streamed, the call's input arrives as text deltas (as the mock cuts it), no tool call.
    assert streamed[:-1] == ['{"city": ', '"Paris", "population": 2100000}']
    final = streamed[-1]
    assert isinstance(final, Completion)
    assert final.text == '{"city": "Paris", "population": 2100000}'
    assert (final.finish_reason, final.tool_calls) == ("stop", ())
    assert (final.input_tokens, final.output_tokens) == (whole.input_tokens, whole.output_tokens)


async def test_json_object_by_forced_tool_asks_for_any_object(mock_anthropic: MockAnthropic):
    model = "old-model-json-object"
    request = _request(model, {"response_format": {"type": "json_object"}})
    whole, streamed = await _both(mock_anthropic, request, by_tool=frozenset({model}))
    for call in mock_anthropic.calls_for(model):
        schema = {"type": "object", "additionalProperties": True}
        assert call.body["tools"] == [_forced_tool(schema)]
        assert call.body["tool_choice"] == FORCED_CHOICE
    # (the mock's instance of a schema without properties is the empty object)
    assert (whole.text, whole.finish_reason, whole.tool_calls) == ("{}", "stop", ())
    assert "".join(i for i in streamed if isinstance(i, str)) == "{}"
    assert not any(isinstance(i, ToolCallDelta) for i in streamed)
    assert streamed[-1] == whole


async def test_a_model_with_native_structured_output_keeps_output_config(
    mock_anthropic: MockAnthropic,
):
    """The forced tool is for the models named so only: another keeps output_config.format."""
    model = "json-city-native"
    request = _request(model, SAMPLES["response_format"])
    whole, _ = await _both(mock_anthropic, request, by_tool=frozenset({"old-model"}))
    for call in mock_anthropic.calls_for(model):
        assert call.body["output_config"] == {
            "format": {"type": "json_schema", "schema": CITY_SCHEMA}
        }
        assert "tools" not in call.body and "tool_choice" not in call.body
    assert json.loads(whole.text) == {"city": "Paris", "population": 2100000}


async def test_tools_the_model_may_not_call_go_with_the_forced_tool(
    mock_anthropic: MockAnthropic,
):
    """With tool_choice none the request's own tools are only context (a conversation's past
    calls name them): they are sent beside the forced tool, which alone can be called."""
    model = "old-model-tools-none"
    sample = {**SAMPLES["response_format"], "tools": [WEATHER_TOOL], "tool_choice": "none"}
    whole, _ = await _both(mock_anthropic, _request(model, sample), by_tool=frozenset({model}))
    for call in mock_anthropic.calls_for(model):
        weather = call.body["tools"][0]
        assert [weather["name"], call.body["tools"][1]] == [
            "get_weather",
            _forced_tool(CITY_SCHEMA),
        ]
        assert call.body["tool_choice"] == FORCED_CHOICE
    assert (whole.text, whole.tool_calls) == ('{"city":"Paris","population":2100000}', ())


CLASHING_TOOL = {"type": "function", "function": {"name": "json_output", "parameters": {}}}


@pytest.mark.parametrize(
    ("sample", "words"),
    [
        (
            {"tools": [CLASHING_TOOL], "tool_choice": "none"},
            ["a tool named 'json_output'", "rename yours"],
        ),
        ({"tools": [WEATHER_TOOL]}, ["response_format and tools cannot be combined"]),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": "required"},
            ["response_format and tools cannot be combined", "tool_choice none"],
        ),
        (
            {"reasoning_effort": "low"},
            ["response_format and reasoning_effort cannot be combined", "extended thinking"],
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "list", "schema": {"type": "array"}},
                }
            },
            ["schema's type must be object"],
        ),
    ],
    ids=["tool-name-clash", "tools", "tools-required", "reasoning", "not-an-object"],
)
async def test_what_cannot_go_with_the_forced_tool_is_refused(
    mock_anthropic: MockAnthropic, sample: dict[str, Any], words: list[str]
):
    model = f"old-model-refused-{uuid.uuid4().hex[:8]}"
    request = _request(model, {**SAMPLES["response_format"], **sample})
    for message in await _refused(mock_anthropic, request, by_tool=frozenset({model})):
        assert "anthropic" in message
        for word in words:
            assert word in message
    assert mock_anthropic.calls_for(model) == []


async def test_the_same_combinations_are_sent_to_a_native_model(mock_anthropic: MockAnthropic):
    """The refusals are the forced tool's: a model with native structured output takes tools
    and reasoning beside response_format."""
    model = "native-model-tools-and-reasoning"
    sample = {
        **SAMPLES["response_format"],
        "tools": [WEATHER_TOOL],
        "reasoning_effort": "low",
    }
    whole, _ = await _both(mock_anthropic, _request(model, sample), by_tool=frozenset({"old"}))
    assert whole.finish_reason == "stop"
    for call in mock_anthropic.calls_for(model):
        assert call.body["output_config"]["format"]["schema"] == CITY_SCHEMA
        assert call.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_an_https_image_is_sent_by_url(mock_anthropic: MockAnthropic):
    url = "https://example.com/cat.png"
    messages: list[Message] = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    ]
    await _both(mock_anthropic, _request("fidelity-image-url", {"messages": messages}))
    for call in mock_anthropic.calls_for("fidelity-image-url"):
        assert call.body["messages"] == [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": url}}]}
        ]


async def test_thinking_is_not_the_answer(mock_anthropic: MockAnthropic):
    request = _request("thinking", {"reasoning_effort": "medium"})
    whole, streamed = await _both(mock_anthropic, request)
    texts = [item for item in streamed if isinstance(item, str)]
    assert whole.text == "echo: What is the weather in Paris?" == "".join(texts)
    assert not any("think" in text for text in texts)
    assert streamed[-1] == whole and whole.finish_reason == "stop"
    assert whole.reasoning_tokens == 0  # Anthropic does not count them apart
    # The thinking is output all the same, and counted so.
    assert whole.output_tokens == len(whole.text.split()) + 3  # "let me think"


@pytest.mark.parametrize(
    ("effort", "max_tokens", "budget", "sent_max_tokens"),
    [
        ("low", None, 1024, 1024 + DEFAULT_MAX_TOKENS),
        ("minimal", 1024, 1024, 2048),
        ("high", 100, 16384, 16484),
        ("medium", 5000, 4096, 5000),
        ("none", None, None, DEFAULT_MAX_TOKENS),
    ],
)
async def test_max_tokens_is_raised_above_the_thinking_budget(
    mock_anthropic: MockAnthropic,
    effort: str,
    max_tokens: int | None,
    budget: int | None,
    sent_max_tokens: int,
):
    """Anthropic refuses a max_tokens not above the thinking budget (so does the mock): such a
    max_tokens gets the budget on top, and the answer keeps what the request allowed it."""
    model = f"fidelity-budget-{effort}-{max_tokens}"
    request = _request(model, {"reasoning_effort": effort}, max_tokens=max_tokens)
    whole, streamed = await _both(mock_anthropic, request)
    assert whole.finish_reason == "stop" and streamed[-1] == whole
    for call in mock_anthropic.calls_for(model):
        assert call.body["max_tokens"] == sent_max_tokens
        if budget is None:
            assert "thinking" not in call.body
        else:
            assert call.body["thinking"] == {"type": "enabled", "budget_tokens": budget}


@pytest.mark.parametrize("row", REFUSED)
async def test_a_refused_option_reaching_the_adapter_is_refused(
    mock_anthropic: MockAnthropic, row: str
):
    model = _model("fidelity-refused", row)
    for message in await _refused(mock_anthropic, _request(model, SAMPLES[row])):
        assert row in message and "anthropic" in message
    assert mock_anthropic.calls_for(model) == []


async def test_an_option_outside_the_matrix_is_refused(mock_anthropic: MockAnthropic):
    request = _request("fidelity-unknown", {"n": 2, "stop": ["END"]})
    assert await _refused(mock_anthropic, request) == ["anthropic does not accept n"] * 2
    assert mock_anthropic.calls_for("fidelity-unknown") == []


@pytest.mark.parametrize("arguments", ["{not json", '["Paris"]', ""])
async def test_tool_call_arguments_that_are_not_a_json_object_are_refused(
    mock_anthropic: MockAnthropic, arguments: str
):
    conversation: list[Message] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_bad",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_bad", "content": "sunny"},
    ]
    model = f"fidelity-bad-arguments-{len(arguments)}"
    request = _request(model, {"tools": [WEATHER_TOOL], "messages": conversation})
    for message in await _refused(mock_anthropic, request):
        assert "call_bad" in message and "JSON object" in message
    assert mock_anthropic.calls_for(model) == []


@pytest.mark.parametrize("url", ["data:image/bmp;base64,Qk0=", "http://example.com/cat.png"])
async def test_an_image_anthropic_cannot_take_is_refused(mock_anthropic: MockAnthropic, url: str):
    messages: list[Message] = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    ]
    model = f"fidelity-bad-image-{url[:4]}"
    for message in await _refused(mock_anthropic, _request(model, {"messages": messages})):
        assert "image" in message
    assert mock_anthropic.calls_for(model) == []
