"""The Gemini column of the translation matrix (app/providers/fidelity.py), through the real
`google-genai` SDK against the wire-level mock: every translated or recorded row with its
sample (tests/fidelity_samples.py), checked on the body the mock received
(tests/mocks/gemini_expect.py); tool calls and results, reasoning tokens; and the images
module (data: URLs, and the guarded, bounded fetch of an image by URL)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from google.genai import types

from app.kit.outbound import OutboundPolicy
from app.providers import fidelity
from app.providers.base import (
    BadRequest,
    Choice,
    ChoiceText,
    Completion,
    CompletionRequest,
    Delta,
    MalformedResponse,
    Message,
    ToolCallDelta,
)
from app.providers.gemini import RECORDED, TRANSLATED, GeminiProvider, _completion, build_client
from app.providers.images import (
    MAX_IMAGE_BYTES,
    ImageFetcher,
    InvalidImage,
    parse_data_url,
)
from tests.fidelity_samples import PNG_BASE64, PNG_DATA_URL, SAMPLES, WEATHER_TOOL
from tests.mocks.gemini_expect import EXPECTED
from tests.mocks.gemini_server import MOCK_API_KEY, MockGemini
from tests.mocks.server import BackgroundServer

PNG = base64.b64decode(PNG_BASE64)
GEMINI_ROWS = [
    row.name for row in fidelity.ROWS if row.cells["gemini"].how in ("translated", "recorded")
]
REFUSED_OPTIONS = [
    name
    for name in fidelity.OPTION_FIELDS
    if fidelity.BY_NAME[name].cells["gemini"].how == "refused"
]
QUESTION: list[Message] = [{"role": "user", "content": "Weather in Paris?"}]
TOOL_TURNS: list[Message] = SAMPLES[fidelity.TOOL_TURNS]["messages"]


@pytest.fixture
async def provider(mock_gemini: MockGemini) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(
        build_client(
            api_key=MOCK_API_KEY, base_url=mock_gemini.base_url, timeout=5, connect_timeout=1
        )
    )
    yield provider
    await provider.aclose()


def _sample(row: str, model: str) -> CompletionRequest:
    """A request with the row's sample: its messages if it has some, its fields as options
    (as the adapter receives them; `user` too, which it must not send)."""
    sample = SAMPLES[row]
    options = {name: value for name, value in sample.items() if name != "messages"}
    return CompletionRequest(model, sample.get("messages", QUESTION), options=options)


async def _stream(provider: GeminiProvider, request: CompletionRequest) -> list[Delta | Completion]:
    return [item async for item in provider.stream(request)]


def test_the_adapter_translates_exactly_the_matrix_column():
    column = {row.name: row.cells["gemini"].how for row in fidelity.ROWS}
    options = set(fidelity.OPTION_FIELDS)
    assert {n for n in options if column[n] == "translated"} == TRANSLATED
    assert {n for n in options if column[n] == "recorded"} == RECORDED
    assert set(EXPECTED) == set(GEMINI_ROWS)


@pytest.mark.parametrize("row", GEMINI_ROWS)
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_each_row_reaches_the_wire_as_the_matrix_says(
    provider: GeminiProvider, mock_gemini: MockGemini, row: str, streamed: bool
):
    model = f"fidelity-{GEMINI_ROWS.index(row)}-{'stream' if streamed else 'complete'}"
    request = _sample(row, model)
    if streamed:
        final = (await _stream(provider, request))[-1]
    else:
        final = await provider.complete(request)
    assert isinstance(final, Completion) and final.finish_reason == "stop"
    [call] = mock_gemini.calls_for(model)
    EXPECTED[row](call.body)


def test_the_expectations_fail_on_a_body_without_the_translation():
    for row, expect in EXPECTED.items():
        if row == "user":
            with pytest.raises(AssertionError, match="end-user-42"):
                expect({"contents": [], "labels": {"user": "end-user-42"}})
            continue
        with pytest.raises(AssertionError):
            expect({"contents": [{"role": "user", "parts": [{"text": "ping"}]}]})


async def test_json_schema_answer(provider: GeminiProvider):
    result = await provider.complete(_sample("response_format", "json-city"))
    assert json.loads(result.text) == {"city": "Paris", "population": 2100000}


async def test_json_object_is_the_mime_type_alone(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    options = {"response_format": {"type": "json_object"}}
    await provider.complete(CompletionRequest("fidelity-json-object", QUESTION, options=options))
    [call] = mock_gemini.calls_for("fidelity-json-object")
    assert call.body["generationConfig"] == {"responseMimeType": "application/json"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", {"mode": "NONE"}),
        ("auto", None),  # the default: nothing sent
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
    ids=["none", "auto", "required", "named"],
)
async def test_every_tool_choice(
    provider: GeminiProvider, mock_gemini: MockGemini, choice: Any, expected: Any
):
    model = f"fidelity-choice-{choice if isinstance(choice, str) else 'named'}"
    options = {"tools": [WEATHER_TOOL], "tool_choice": choice}
    await provider.complete(CompletionRequest(model, QUESTION, options=options))
    [call] = mock_gemini.calls_for(model)
    if expected is None:
        assert "toolConfig" not in call.body
    else:
        assert call.body["toolConfig"] == {"functionCallingConfig": expected}


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("none", 0), ("minimal", 0), ("low", 1024), ("medium", 8192), ("high", 24576)],
)
async def test_every_reasoning_effort(
    provider: GeminiProvider, mock_gemini: MockGemini, effort: str, budget: int
):
    model = f"fidelity-effort-{effort}"
    options = {"reasoning_effort": effort}
    await provider.complete(CompletionRequest(model, QUESTION, options=options))
    [call] = mock_gemini.calls_for(model)
    assert call.body["generationConfig"]["thinkingConfig"] in (
        {"thinkingBudget": budget},
        {"thinking_budget": budget},
    )


async def test_defaults_ask_for_nothing(provider: GeminiProvider, mock_gemini: MockGemini):
    options = {"tools": [], "stop": [], "top_p": 1, "parallel_tool_calls": True, "user": "u-1"}
    await provider.complete(CompletionRequest("fidelity-defaults", QUESTION, options=options))
    [call] = mock_gemini.calls_for("fidelity-defaults")
    assert call.body == {"contents": call.body["contents"], "generationConfig": {}}


# Tool calls and their results.


@pytest.mark.parametrize("model", ["tool-call", "tool-call-with-id"])
async def test_a_function_call_is_a_tool_call(provider: GeminiProvider, model: str):
    result = await provider.complete(_sample("tools", model))
    [call] = result.tool_calls
    if model == "tool-call-with-id":
        assert call["id"] == "fc_mock_1"
    else:
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert result.finish_reason == "tool_calls"
    assert result.text == ""
    assert result.usage_reported and result.output_tokens > 0


async def test_made_up_ids_differ(provider: GeminiProvider):
    first = await provider.complete(_sample("tools", "tool-call"))
    second = await provider.complete(_sample("tools", "tool-call"))
    assert first.tool_calls[0]["id"] != second.tool_calls[0]["id"]


@pytest.mark.parametrize("model", ["tool-call", "tool-call-with-id"])
async def test_a_streamed_function_call_is_one_delta(provider: GeminiProvider, model: str):
    *deltas, final = await _stream(provider, _sample("tools", model))
    assert isinstance(final, Completion)
    [delta] = deltas
    assert isinstance(delta, ToolCallDelta)
    assert (delta.index, delta.name, delta.arguments) == (0, "get_weather", '{"city":"Paris"}')
    assert delta.id == ("fc_mock_1" if model == "tool-call-with-id" else final.tool_calls[0]["id"])
    assert final.tool_calls == (
        {
            "id": delta.id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
    )
    assert (final.finish_reason, final.text) == ("tool_calls", "")


async def test_streamed_and_whole_tool_calls_agree_but_for_made_up_ids(provider: GeminiProvider):
    streamed = (await _stream(provider, _sample("tools", "tool-call-with-id")))[-1]
    assert streamed == await provider.complete(_sample("tools", "tool-call-with-id"))


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_a_tool_result_is_answered(
    provider: GeminiProvider, mock_gemini: MockGemini, streamed: bool
):
    model = f"tool-call-answered-{streamed}"
    request = _sample(fidelity.TOOL_TURNS, model)
    if streamed:
        *texts, final = await _stream(provider, request)
        assert "".join(str(t) for t in texts) == "tool said: sunny, 21 C"
    else:
        final = await provider.complete(request)
    assert isinstance(final, Completion)
    assert (final.text, final.finish_reason, final.tool_calls) == (
        "tool said: sunny, 21 C",
        "stop",
        (),
    )
    [call] = mock_gemini.calls_for(model)
    EXPECTED[fidelity.TOOL_TURNS](call.body)


async def test_consecutive_tool_results_are_one_content(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    calls = [
        {
            "id": f"call_{city}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        for city in ("Paris", "Rome")
    ]
    messages: list[Message] = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},  # type: ignore[typeddict-item]
        {"role": "tool", "tool_call_id": "call_Paris", "content": "sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_Rome",
            "content": [{"type": "text", "text": "rain"}],
        },
    ]
    options = {"tools": [WEATHER_TOOL]}
    result = await provider.complete(CompletionRequest("tool-call-two", messages, options=options))
    assert result.text == "tool said: sunny tool said: rain"
    [call] = mock_gemini.calls_for("tool-call-two")
    assert call.body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Let me look."},
                {
                    "functionCall": {
                        "id": "call_Paris",
                        "name": "get_weather",
                        "args": {"city": "Paris"},
                    }
                },
                {
                    "functionCall": {
                        "id": "call_Rome",
                        "name": "get_weather",
                        "args": {"city": "Rome"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "id": "call_Paris",
                        "name": "get_weather",
                        "response": {"result": "sunny"},
                    }
                },
                {
                    "functionResponse": {
                        "id": "call_Rome",
                        "name": "get_weather",
                        "response": {"result": "rain"},
                    }
                },
            ],
        },
    ]


def _with_arguments(arguments: str) -> list[Message]:
    assistant: Any = dict(TOOL_TURNS[1])
    assistant["tool_calls"] = [
        {
            **TOOL_TURNS[1]["tool_calls"][0],
            "function": {"name": "get_weather", "arguments": arguments},
        }
    ]
    return [TOOL_TURNS[0], assistant, TOOL_TURNS[2]]


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (_with_arguments("not json"), "are not a JSON object"),
        (_with_arguments('["Paris"]'), "are not a JSON object"),
        (
            [*TOOL_TURNS[:2], {"role": "tool", "tool_call_id": "call_other", "content": "x"}],
            "'call_other' answers no tool call",
        ),
        ([TOOL_TURNS[0], TOOL_TURNS[2]], "answers no tool call"),
    ],
    ids=["not-json", "not-an-object", "unknown-id", "no-call"],
)
async def test_tool_turns_gemini_cannot_be_given(
    provider: GeminiProvider, mock_gemini: MockGemini, messages: list[Message], says: str
):
    before = len(mock_gemini.calls)
    with pytest.raises(BadRequest, match=says):
        await provider.complete(CompletionRequest("fidelity-bad-turns", messages))
    with pytest.raises(BadRequest, match=says):
        await _stream(provider, CompletionRequest("fidelity-bad-turns", messages))
    assert len(mock_gemini.calls) == before  # refused before any call


async def test_only_a_user_turn_may_hold_an_image(
    provider: GeminiProvider, mock_gemini: MockGemini
):
    image: Any = {"type": "image_url", "image_url": {"url": PNG_DATA_URL}}
    messages: list[Message] = [{"role": "system", "content": [image]}, *QUESTION]
    with pytest.raises(BadRequest, match="messages\\[0\\]: a system turn can only hold text"):
        await provider.complete(CompletionRequest("fidelity-system-image", messages))
    assert not mock_gemini.calls_for("fidelity-system-image")


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_reasoning_tokens(provider: GeminiProvider, streamed: bool):
    request = CompletionRequest("reasoning-7", [{"role": "user", "content": "think hard"}])
    final = (await _stream(provider, request))[-1] if streamed else await provider.complete(request)
    assert isinstance(final, Completion)
    assert final.reasoning_tokens == 7
    assert final.output_tokens == 3 + 7  # "echo: think hard", and the thinking, as output


@pytest.mark.parametrize("name", REFUSED_OPTIONS)
async def test_a_refused_option_reaching_the_adapter_is_a_bad_request(
    provider: GeminiProvider, mock_gemini: MockGemini, name: str
):
    before = len(mock_gemini.calls)
    options = {name: SAMPLES[name][name]}
    with pytest.raises(BadRequest, match=name):
        await provider.complete(CompletionRequest("fidelity-refused", QUESTION, options=options))
    with pytest.raises(BadRequest, match=name):
        await _stream(provider, CompletionRequest("fidelity-refused", QUESTION, options=options))
    assert len(mock_gemini.calls) == before


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"seed": "forty-two"}, "options Gemini cannot take as given \\(seed\\)"),
        ({"tools": [{"type": "web_search"}]}, "tools\\[0\\]: Gemini takes only function tools"),
        ({"tool_choice": "sometimes"}, "tool_choice must be"),
        ({"response_format": {"type": "yaml"}}, "response_format.type must be"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort 'extreme' is not one of"),
    ],
)
async def test_an_option_value_gemini_cannot_take_is_a_bad_request(
    provider: GeminiProvider, options: dict[str, Any], says: str
):
    with pytest.raises(BadRequest, match=says):
        await provider.complete(CompletionRequest("fidelity-bad-value", QUESTION, options=options))


async def test_an_unknown_option_is_a_bad_request(provider: GeminiProvider):
    options = {"modalities": ["text", "audio"]}  # not a row of the matrix
    with pytest.raises(BadRequest, match="modalities is not supported by Gemini"):
        await provider.complete(CompletionRequest("fidelity-unknown", QUESTION, options=options))


# Log probabilities (logprobs, top_logprobs).

ONE_TWO: list[Message] = [{"role": "user", "content": "one two"}]


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _logprobs(top: int) -> dict[str, Any]:
    """OpenAI's logprobs object of the mock's "echo: one two" (one token a word, each at
    -0.25; its k top candidates: the token, then "<token>~1" at -1.25, ...)."""
    alternatives = {
        token: [_token(token, -0.25), _token(f"{token}~1", -1.25)][:top]
        for token in ("echo:", " one", " two")
    }
    return {
        "content": [
            _token(token, -0.25) | {"top_logprobs": others}
            for token, others in alternatives.items()
        ],
        "refusal": None,
    }


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("options", "top"),
    [({"logprobs": True}, 0), ({"logprobs": True, "top_logprobs": 2}, 2)],
    ids=["logprobs", "top_logprobs"],
)
async def test_logprobs_come_back_in_openai_shape(
    provider: GeminiProvider, options: dict[str, Any], top: int, streamed: bool
):
    request = CompletionRequest("fidelity-logprobs", ONE_TWO, options=options)
    if streamed:
        *deltas, final = await _stream(provider, request)
        assert deltas == ["echo:", " one", " two"]  # the text streams as before
    else:
        final = await provider.complete(request)
    assert isinstance(final, Completion)
    assert final.text == "echo: one two"
    assert final.logprobs == _logprobs(top)


async def test_no_logprobs_unless_asked(provider: GeminiProvider, mock_gemini: MockGemini):
    result = await provider.complete(CompletionRequest("fidelity-no-logprobs", ONE_TWO))
    assert result.logprobs is None
    [call] = mock_gemini.calls_for("fidelity-no-logprobs")
    assert "responseLogprobs" not in call.body["generationConfig"]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            {"logprobs": True, "top_logprobs": 21},
            "top_logprobs must be a whole number from 0 to 20",
        ),
        (
            {"logprobs": True, "top_logprobs": -1},
            "top_logprobs must be a whole number from 0 to 20",
        ),
        ({"logprobs": True, "top_logprobs": True}, "top_logprobs must be a whole number"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
        ({"logprobs": "yes"}, "logprobs must be true or false"),
    ],
    ids=["too-many", "negative", "a-bool", "without-logprobs", "not-a-bool"],
)
async def test_logprobs_gemini_cannot_take_are_a_bad_request(
    provider: GeminiProvider, mock_gemini: MockGemini, options: dict[str, Any], says: str
):
    before = len(mock_gemini.calls)
    with pytest.raises(BadRequest, match=says):
        await provider.complete(
            CompletionRequest("fidelity-bad-logprobs", ONE_TWO, options=options)
        )
    assert len(mock_gemini.calls) == before


# n > 1: candidateCount.


async def test_n_gives_more_choices(provider: GeminiProvider, mock_gemini: MockGemini):
    result = await provider.complete(
        CompletionRequest("fidelity-n-whole", ONE_TWO, options={"n": 2})
    )
    assert (result.text, result.finish_reason) == ("echo: one two", "stop")
    assert result.choices == (Choice("echo: one two #1", "stop"),)
    assert result.output_tokens == 3 + 4  # usageMetadata's count covers both candidates
    [call] = mock_gemini.calls_for("fidelity-n-whole")
    assert call.body["generationConfig"] == {"candidateCount": 2}


async def test_n_streamed_routes_each_candidate_to_its_choice(provider: GeminiProvider):
    request = CompletionRequest("fidelity-n-stream", ONE_TWO, options={"n": 3})
    *deltas, final = await _stream(provider, request)
    assert [d for d in deltas if isinstance(d, str)] == ["echo:", " one", " two"]
    assert [d for d in deltas if isinstance(d, ChoiceText)] == [
        ChoiceText(1, "echo:"),
        ChoiceText(2, "echo:"),
        ChoiceText(1, " one"),
        ChoiceText(2, " one"),
        ChoiceText(1, " two"),
        ChoiceText(2, " two"),
        ChoiceText(1, " #1"),
        ChoiceText(2, " #2"),
    ]
    assert isinstance(final, Completion)
    assert (final.text, final.finish_reason) == ("echo: one two", "stop")
    assert final.choices == (
        Choice("echo: one two #1", "stop"),
        Choice("echo: one two #2", "stop"),
    )
    assert final == await provider.complete(request)


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_n_with_logprobs_gives_each_choice_its_own(provider: GeminiProvider, streamed: bool):
    options = {"n": 2, "logprobs": True, "top_logprobs": 1}
    request = CompletionRequest("fidelity-n-logprobs", ONE_TWO, options=options)
    final = (await _stream(provider, request))[-1] if streamed else await provider.complete(request)
    assert isinstance(final, Completion)
    assert final.logprobs == _logprobs(1)
    [second] = final.choices
    extra = _token(" #1", -0.25) | {"top_logprobs": [_token(" #1", -0.25)]}
    assert second.logprobs == {"content": [*_logprobs(1)["content"], extra], "refusal": None}


@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
async def test_n_keeps_tool_call_ids_unique(provider: GeminiProvider, streamed: bool):
    """The mock gives every candidate's call the id fc_mock_1: the second gets another."""
    request = CompletionRequest(
        "tool-call-with-id", QUESTION, options={"tools": [WEATHER_TOOL], "n": 2}
    )
    if streamed:
        *deltas, final = await _stream(provider, request)
        assert [(d.choice, d.index, d.name) for d in deltas if isinstance(d, ToolCallDelta)] == [
            (0, 0, "get_weather"),
            (1, 0, "get_weather"),
        ]
    else:
        final = await provider.complete(request)
    assert isinstance(final, Completion)
    [first] = final.tool_calls
    [second] = final.choices
    [other] = second.tool_calls
    assert first["id"] == "fc_mock_1"
    assert re.fullmatch(r"call_[0-9a-f]{24}", other["id"])
    assert other["function"] == first["function"]
    assert (final.finish_reason, second.finish_reason) == ("tool_calls", "tool_calls")
    if streamed:
        assert [d.id for d in deltas if isinstance(d, ToolCallDelta)] == [first["id"], other["id"]]


@pytest.mark.parametrize("n", [0, -1, "2", 2.5])
async def test_an_n_gemini_cannot_take_is_a_bad_request(provider: GeminiProvider, n: Any):
    with pytest.raises(BadRequest, match="n must be a whole number of at least 1"):
        await provider.complete(CompletionRequest("fidelity-bad-n", ONE_TWO, options={"n": n}))


def _reply(*candidates: dict[str, Any]) -> types.GenerateContentResponse:
    return types.GenerateContentResponse.model_validate({"candidates": list(candidates)})


def _candidate(text: str, index: int | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "finish_reason": "STOP",
    }
    return candidate if index is None else candidate | {"index": index}


def test_candidates_are_read_in_the_order_of_their_index():
    """Google may list them in any order, and leaves out the index 0 (a default)."""
    reply = _reply(_candidate("second", 1), _candidate("third", 2), _candidate("first", None))
    result = _completion(CompletionRequest("m", ONE_TWO, options={"n": 3}), reply, provider="g")
    assert [result.text, *(c.text for c in result.choices)] == ["first", "second", "third"]


def test_a_missing_candidate_is_a_malformed_answer():
    reply = _reply(_candidate("first", 0), _candidate("third", 2))
    with pytest.raises(MalformedResponse, match="answered with candidates 0, 2"):
        _completion(CompletionRequest("m", ONE_TWO, options={"n": 3}), reply, provider="gemini")


# Images: data: URLs.


def _data_url(data: bytes, mime_type: str = "image/png") -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


def test_parse_data_url_accepts_the_sample_png():
    assert parse_data_url(PNG_DATA_URL) == ("image/png", PNG)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\xff\xd8\xff\xe0" + b"\0" * 16, "image/jpeg"),
        (b"GIF89a" + b"\0" * 16, "image/gif"),
        (b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8, "image/webp"),
    ],
)
def test_parse_data_url_knows_each_kind_by_its_bytes(data: bytes, kind: str):
    assert parse_data_url(_data_url(data, kind)) == (kind, data)
    # A mislabelled image is what its bytes say.
    assert parse_data_url(_data_url(data, "image/png")) == (kind, data)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://example.com/a.png", "not a data: URL"),
        ("data:image/png,iVBORw0KGgo=", "malformed"),
        ("data:image/png;base64", "malformed"),
        (_data_url(PNG, "text/plain"), "'text/plain' is not an image type"),
        (_data_url(PNG, "image/svg+xml"), "'image/svg\\+xml' is not a PNG, JPEG, GIF or WEBP"),
        ("data:image/png;base64,iVBOR*w0KGgo=", "base64 data does not decode"),
        ("data:image/png;base64,iVBORw0KGgo", "base64 data does not decode"),
        ("data:image/png;base64,", "holds no data"),
        (_data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "not a PNG, JPEG, GIF or WEBP"),
    ],
)
def test_parse_data_url_refuses(url: str, says: str):
    with pytest.raises(InvalidImage, match=says):
        parse_data_url(url)


def test_parse_data_url_refuses_more_than_the_limit():
    big = PNG + b"\0" * 2000
    with pytest.raises(InvalidImage, match="larger than 2000 bytes"):
        parse_data_url(_data_url(big), max_bytes=2000)
    assert parse_data_url(_data_url(big), max_bytes=len(big)) == ("image/png", big)
    assert MAX_IMAGE_BYTES == 20 * 1024 * 1024


def test_parse_data_url_refuses_a_huge_one_before_decoding():
    url = "data:image/png;base64," + "A" * (4 * (MAX_IMAGE_BYTES // 3) + 8)
    with pytest.raises(InvalidImage, match="larger than 20 MiB"):
        parse_data_url(url)


async def test_an_image_reaches_gemini_inline(provider: GeminiProvider, mock_gemini: MockGemini):
    result = await provider.complete(_sample(fidelity.IMAGES, "fidelity-image-echo"))
    assert result.text == "echo: What is in this image?"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:text/plain;base64,aGk=", "messages\\[0\\]: .*not an image type"),
        ("https://example.com/cat.png", "messages\\[0\\]: images by URL are not available"),
    ],
)
async def test_an_image_the_adapter_cannot_use_is_a_bad_request(
    provider: GeminiProvider, mock_gemini: MockGemini, url: str, says: str
):
    messages: list[Message] = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    ]
    before = len(mock_gemini.calls)
    with pytest.raises(BadRequest, match=says):
        await provider.complete(CompletionRequest("fidelity-bad-image", messages))
    assert len(mock_gemini.calls) == before


# Images: fetched by URL.


def _image_app() -> web.Application:
    async def png(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html>a page</html>", content_type="text/html")

    async def fake(_: web.Request) -> web.Response:
        return web.Response(body=b"<html>not a png</html>", content_type="image/png")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/pixel.png")

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound

    async def endless(request: web.Request) -> web.StreamResponse:
        """A PNG that never ends, with no Content-Length: the reader must stop on its own."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(PNG)
        while True:
            await response.write(b"\0" * 4096)

    async def declared_big(_: web.Request) -> web.Response:
        return web.Response(body=PNG + b"\0" * 5000, content_type="image/png")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    for path, handler in {
        "/pixel.png": png,
        "/page.html": html,
        "/fake.png": fake,
        "/moved.png": moved,
        "/missing.png": missing,
        "/endless.png": endless,
        "/big.png": declared_big,
        "/slow.png": slow,
    }.items():
        app.router.add_get(path, handler)
    return app


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = BackgroundServer("image-server")
    origin = server.start(_image_app())
    yield origin
    server.stop()


LOCAL = OutboundPolicy.parse("127.0.0.1")  # the test server is on loopback


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    fetcher = ImageFetcher(LOCAL, max_bytes=1000, timeout=2.0)
    yield fetcher
    await fetcher.aclose()


async def test_a_png_is_fetched(fetcher: ImageFetcher, image_server: str):
    assert await fetcher.fetch(f"{image_server}/pixel.png") == ("image/png", PNG)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "http://127.0.0.1/cat.png",
            "127.0.0.1 is in a range that may not be reached \\(loopback\\)",
        ),
        ("https://10.0.0.1/cat.png", "10.0.0.1 is in a range .* \\(private network\\)"),
        ("http://169.254.169.254/latest/meta-data/", "\\(cloud metadata\\)"),
        ("http://localhost/cat.png", "resolves to an address that may not be reached"),
        ("ftp://example.com/cat.png", "must start with http:// or https://"),
    ],
)
async def test_the_default_policy_refuses_internal_addresses(url: str, says: str):
    fetcher = ImageFetcher(OutboundPolicy())
    try:
        with pytest.raises(InvalidImage, match=f"may not be fetched: .*{says}"):
            await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def test_the_default_policy_refuses_the_local_server(image_server: str):
    fetcher = ImageFetcher(OutboundPolicy())
    try:
        with pytest.raises(InvalidImage, match="loopback"):
            await fetcher.fetch(f"{image_server}/pixel.png")
    finally:
        await fetcher.aclose()


async def test_metadata_stays_refused_whatever_the_allow_list_says():
    fetcher = ImageFetcher(OutboundPolicy.parse("169.254.0.0/16"))
    try:
        with pytest.raises(InvalidImage, match="cloud metadata"):
            await fetcher.fetch("http://169.254.169.254/latest/meta-data/")
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/page.html", "Content-Type 'text/html', not a PNG, JPEG, GIF or WEBP image"),
        ("/fake.png", "bytes are not a PNG, JPEG, GIF or WEBP image"),
        ("/moved.png", "HTTP 302 \\(redirects are not followed\\)"),
        ("/missing.png", "HTTP 404"),
        ("/big.png", "larger than 1000 bytes"),
    ],
)
async def test_what_is_not_an_image_is_refused(
    fetcher: ImageFetcher, image_server: str, path: str, says: str
):
    with pytest.raises(InvalidImage, match=says):
        await fetcher.fetch(image_server + path)


async def test_an_over_size_body_is_cut_off(fetcher: ImageFetcher, image_server: str):
    """The body never ends: only stopping at max_bytes ends the fetch, long before the
    deadline."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InvalidImage, match="larger than 1000 bytes"):
        await fetcher.fetch(f"{image_server}/endless.png")
    assert loop.time() - started < 1.5


async def test_a_slow_image_ends_at_the_deadline(image_server: str):
    fetcher = ImageFetcher(LOCAL, timeout=0.3)
    try:
        with pytest.raises(InvalidImage, match=r"within 0\.3 s"):
            await fetcher.fetch(f"{image_server}/slow.png")
    finally:
        await fetcher.aclose()


async def test_a_refused_connection_says_so_without_the_internals():
    fetcher = ImageFetcher(LOCAL)
    try:
        with pytest.raises(InvalidImage) as caught:
            await fetcher.fetch("http://127.0.0.1:9/cat.png")  # the discard port: closed
    finally:
        await fetcher.aclose()
    assert str(caught.value) == "the image could not be fetched: its host did not connect"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_the_adapter_sends_a_fetched_image_inline(
    mock_gemini: MockGemini, fetcher: ImageFetcher, image_server: str
):
    provider = GeminiProvider(
        build_client(
            api_key=MOCK_API_KEY, base_url=mock_gemini.base_url, timeout=5, connect_timeout=1
        ),
        images=fetcher,
    )
    messages: list[Message] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": f"{image_server}/pixel.png"}},
            ],
        }
    ]
    try:
        await provider.complete(CompletionRequest("fidelity-fetched", messages))
        with pytest.raises(BadRequest, match="messages\\[0\\]: the image URL answered HTTP 404"):
            bad: Any = json.loads(json.dumps(messages).replace("pixel.png", "missing.png"))
            await provider.complete(CompletionRequest("fidelity-fetched-404", bad))
    finally:
        await provider.aclose()
    assert fetcher._client is None  # the provider closed its fetcher
    [call] = mock_gemini.calls_for("fidelity-fetched")
    EXPECTED[fidelity.IMAGES](call.body)
    assert not mock_gemini.calls_for("fidelity-fetched-404")
