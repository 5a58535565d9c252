"""What the Gemini mock (tests/mocks/gemini_server.py) must have received for each row of the
translation matrix (app/providers/fidelity.py) that the "gemini" column translates or records,
for a request made with that row's sample (tests/fidelity_samples.py).

`EXPECTED[row name](body)` takes the JSON body the mock recorded (`RecordedCall.body`) and
raises AssertionError, saying what is wrong, unless the translated field is there with the
sample's value (for a `recorded` row: unless the value was NOT sent). The checks depend on the
body alone, so they serve the adapter's tests and the end-to-end tests through the gateway
alike; they look only at what the row is about (a gateway may add other messages or fields).

Field names are Google's REST JSON names (camelCase). Inside some objects (`inlineData`,
`functionDeclarations`, `thinkingConfig`) the SDK writes the proto's snake_case names
(`mime_type`, `parameters_json_schema`, `thinking_budget`), which Google accepts as well: a
field is found under either spelling, but never under both.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

from app.providers.fidelity import IMAGES, TOOL_TURNS
from tests.fidelity_samples import CITY_SCHEMA, PNG_BASE64, SAMPLES, WEATHER_TOOL

Body = dict[str, Any]

_MISSING = object()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _field(obj: Any, name: str, where: str) -> Any:
    """`obj[name]` (camelCase) or its snake_case spelling; AssertionError if neither is there
    or both are."""
    assert isinstance(obj, dict), f"{where} is not an object: {obj!r}"
    found = [obj[key] for key in dict.fromkeys((name, _snake(name))) if key in obj]
    assert found, f"{where}.{name} was not sent (got the keys {sorted(obj)})"
    assert len(found) == 1, f"{where} has both {name} and {_snake(name)}"
    return found[0]


def _generation(body: Body, name: str, value: Any) -> None:
    config = _field(body, "generationConfig", "the request")
    sent = _field(config, name, "generationConfig")
    assert sent == value, f"generationConfig.{name} is {sent!r}, expected {value!r}"


def _function_declarations(body: Body) -> list[Any]:
    tools = _field(body, "tools", "the request")
    assert isinstance(tools, list), f"tools is not a list: {tools!r}"
    declarations: list[Any] = []
    for index, tool in enumerate(tools):
        declarations += _field(tool, "functionDeclarations", f"tools[{index}]")
    return declarations


def _weather_declared(body: Body) -> None:
    """The sample's one function, declared with its schema as parametersJsonSchema."""
    function = WEATHER_TOOL["function"]
    declarations = _function_declarations(body)
    assert len(declarations) == 1, f"expected one functionDeclaration, got {declarations!r}"
    [declaration] = declarations
    name = _field(declaration, "name", "functionDeclarations[0]")
    assert name == function["name"], f"functionDeclarations[0].name is {name!r}"
    description = _field(declaration, "description", "functionDeclarations[0]")
    assert description == function["description"], (
        f"functionDeclarations[0].description is {description!r}"
    )
    schema = _field(declaration, "parametersJsonSchema", "functionDeclarations[0]")
    assert schema == function["parameters"], (
        f"functionDeclarations[0].parametersJsonSchema is {schema!r}, expected "
        f"{function['parameters']!r}"
    )
    assert "parameters" not in declaration, (
        "the schema was sent as parameters (Google's OpenAPI subset), not parametersJsonSchema"
    )
    assert "strict" not in declaration, "strict was sent: Gemini has no such field"


def _tools(body: Body) -> None:
    _weather_declared(body)


def _tool_choice(body: Body) -> None:
    _weather_declared(body)
    config = _field(
        _field(body, "toolConfig", "the request"), "functionCallingConfig", "toolConfig"
    )
    mode = _field(config, "mode", "toolConfig.functionCallingConfig")
    assert mode == "ANY", f"functionCallingConfig.mode is {mode!r}, expected 'ANY'"
    names = _field(config, "allowedFunctionNames", "toolConfig.functionCallingConfig")
    assert names == ["get_weather"], (
        f"functionCallingConfig.allowedFunctionNames is {names!r}, expected ['get_weather']"
    )


def _parts(body: Body) -> list[tuple[str, dict[str, Any]]]:
    """(role, part) of every part of the contents, in order."""
    found = []
    for index, content in enumerate(_field(body, "contents", "the request")):
        role = content.get("role", "user")
        for part in _field(content, "parts", f"contents[{index}]"):
            found.append((role, part))
    return found


def _tool_turns(body: Body) -> None:
    """The assistant's call as a model functionCall part (the call's id, its arguments as an
    object), then the tool's answer as a user functionResponse part named after it."""
    sample = SAMPLES[TOOL_TURNS]["messages"]
    [call] = sample[1]["tool_calls"]
    contents = _field(body, "contents", "the request")
    calls = [
        (i, c)
        for i, c in enumerate(contents)
        if any("functionCall" in p or "function_call" in p for p in c.get("parts") or [])
    ]
    assert len(calls) == 1, f"expected one content with a functionCall, got {contents!r}"
    [(at, model_turn)] = calls
    assert model_turn.get("role") == "model", (
        f"the functionCall is in a {model_turn.get('role')!r} turn"
    )
    [part] = model_turn["parts"]
    function_call = _field(part, "functionCall", f"contents[{at}].parts[0]")
    expected_call = {
        "id": call["id"],
        "name": call["function"]["name"],
        "args": json.loads(call["function"]["arguments"]),
    }
    assert function_call == expected_call, (
        f"functionCall is {function_call!r}, expected {expected_call!r}"
    )
    assert at >= 1 and contents[at - 1].get("role") == "user", (
        "the user's question does not come before the functionCall"
    )
    assert _field(contents[at - 1], "parts", f"contents[{at - 1}]") == [
        {"text": sample[0]["content"]}
    ], f"the question before the call is {contents[at - 1]!r}"
    assert len(contents) > at + 1, "no content follows the functionCall"
    answer = contents[at + 1]
    assert answer.get("role") == "user", f"the tool's answer is in a {answer.get('role')!r} turn"
    [part] = _field(answer, "parts", f"contents[{at + 1}]")
    response = _field(part, "functionResponse", f"contents[{at + 1}].parts[0]")
    expected_response = {
        "id": sample[2]["tool_call_id"],
        "name": call["function"]["name"],
        "response": {"result": sample[2]["content"]},
    }
    assert response == expected_response, (
        f"functionResponse is {response!r}, expected {expected_response!r}"
    )


def _response_format(body: Body) -> None:
    _generation(body, "responseMimeType", "application/json")
    _generation(body, "responseJsonSchema", CITY_SCHEMA)
    config = body["generationConfig"]
    assert "responseSchema" not in config and "response_schema" not in config, (
        "the schema was sent as responseSchema (Google's OpenAPI subset), not responseJsonSchema"
    )


def _reasoning_effort(body: Body) -> None:
    """The sample's "low" is a budget of 1024 thinking tokens."""
    config = _field(body, "generationConfig", "the request")
    thinking = _field(config, "thinkingConfig", "generationConfig")
    budget = _field(thinking, "thinkingBudget", "generationConfig.thinkingConfig")
    assert budget == 1024, f"thinkingConfig.thinkingBudget is {budget!r}, expected 1024"
    assert SAMPLES["reasoning_effort"]["reasoning_effort"] == "low"


def _decoded(data: Any) -> bytes:
    """Base64 as Google reads it: the standard alphabet or the URL-safe one (the SDK's)."""
    assert isinstance(data, str), f"inlineData.data is not a string: {data!r}"
    try:
        return base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
    except ValueError:
        raise AssertionError(f"inlineData.data is not base64: {data[:60]!r}") from None


def _images(body: Body) -> None:
    """The sample's text part, then the PNG as an inlineData part, in the last user turn."""
    [message] = SAMPLES[IMAGES]["messages"]
    text = message["content"][0]["text"]
    users = [c for c in _field(body, "contents", "the request") if c.get("role") == "user"]
    assert users, "no user content was sent"
    parts = _field(users[-1], "parts", "the last user content")
    assert len(parts) == 2, f"expected a text part and an inlineData part, got {parts!r}"
    assert parts[0] == {"text": text}, f"the first part is {parts[0]!r}, expected the text"
    blob = _field(parts[1], "inlineData", "the second part")
    mime_type = _field(blob, "mimeType", "inlineData")
    assert mime_type == "image/png", f"inlineData.mimeType is {mime_type!r}"
    data = _decoded(_field(blob, "data", "inlineData"))
    assert data == base64.b64decode(PNG_BASE64), "inlineData.data is not the sample PNG"


def _top_logprobs(body: Body) -> None:
    """Gemini's `logprobs` only counts with `responseLogprobs`: both are sent."""
    _generation(body, "responseLogprobs", True)
    _generation(body, "logprobs", SAMPLES["top_logprobs"]["top_logprobs"])


def _user(body: Body) -> None:
    """Recorded, not sent: the end user's id appears nowhere in the body."""
    value = SAMPLES["user"]["user"]
    assert value not in json.dumps(body), f"the user id {value!r} was sent to Gemini"
    assert "user" not in body and "labels" not in body, "a user field was sent to Gemini"


EXPECTED: dict[str, Callable[[Body], None]] = {
    "tools": _tools,
    "tool_choice": _tool_choice,
    TOOL_TURNS: _tool_turns,
    "response_format": _response_format,
    "stop": lambda body: _generation(body, "stopSequences", SAMPLES["stop"]["stop"]),
    "top_p": lambda body: _generation(body, "topP", SAMPLES["top_p"]["top_p"]),
    "seed": lambda body: _generation(body, "seed", SAMPLES["seed"]["seed"]),
    "frequency_penalty": lambda body: _generation(
        body, "frequencyPenalty", SAMPLES["frequency_penalty"]["frequency_penalty"]
    ),
    "presence_penalty": lambda body: _generation(
        body, "presencePenalty", SAMPLES["presence_penalty"]["presence_penalty"]
    ),
    "logprobs": lambda body: _generation(body, "responseLogprobs", True),
    "top_logprobs": _top_logprobs,
    "reasoning_effort": _reasoning_effort,
    IMAGES: _images,
    "n": lambda body: _generation(body, "candidateCount", SAMPLES["n"]["n"]),
    "user": _user,
}
