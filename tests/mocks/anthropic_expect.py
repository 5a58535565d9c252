"""What the Anthropic mock must have received for each row of the translation matrix
(app/providers/fidelity.py) that the "anthropic" column translates or records.

`EXPECTED[row name]` takes the JSON body the mock recorded (`RecordedCall.body`) for a request
made with that row's sample (tests/fidelity_samples.py) merged into a minimal request, and raises
AssertionError saying what is missing or wrong. It reads nothing but that body, so the same
checks serve the adapter's tests (tests/providers/test_anthropic_fidelity.py) and the ones that
go through the gateway with the `openai` SDK. (A `recorded` row's check would assert that the
value was not sent; the anthropic column has none: `user` is translated.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from app.providers.fidelity import IMAGES, TOOL_TURNS
from tests.fidelity_samples import PNG_BASE64, SAMPLES

Check = Callable[[dict[str, Any]], None]
# OpenAI's reasoning efforts as Anthropic's thinking budgets.
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_MISSING = "<not sent>"


def _field(body: dict[str, Any], name: str, expected: Any, row: str) -> None:
    actual = body.get(name, _MISSING)
    if actual != expected:
        raise AssertionError(
            f"{row}: the mock should have received {name}={expected!r}, and got {actual!r}"
        )


def _tool(openai_tool: dict[str, Any]) -> dict[str, Any]:
    """A sample's function tool as Anthropic's tool."""
    function = openai_tool["function"]
    return {
        "name": function["name"],
        "description": function["description"],
        "input_schema": function["parameters"],
        "strict": function["strict"],
    }


def _tools(row: str) -> list[dict[str, Any]]:
    return [_tool(tool) for tool in SAMPLES[row]["tools"]]


def tools(body: dict[str, Any]) -> None:
    _field(body, "tools", _tools("tools"), "tools")


def tool_choice(body: dict[str, Any]) -> None:
    name = SAMPLES["tool_choice"]["tool_choice"]["function"]["name"]
    _field(body, "tools", _tools("tool_choice"), "tool_choice")
    _field(body, "tool_choice", {"type": "tool", "name": name}, "tool_choice")


def parallel_tool_calls(body: dict[str, Any]) -> None:
    _field(body, "tools", _tools("parallel_tool_calls"), "parallel_tool_calls")
    expected = {"type": "auto", "disable_parallel_tool_use": True}
    _field(body, "tool_choice", expected, "parallel_tool_calls")


def tool_turns(body: dict[str, Any]) -> None:
    """The assistant's tool call is a `tool_use` block, and the tool's answer a `tool_result`
    block of the user turn right after it."""
    messages = SAMPLES[TOOL_TURNS]["messages"]
    [call] = next(m for m in messages if m.get("tool_calls"))["tool_calls"]
    answer = next(m for m in messages if m["role"] == "tool")
    tool_use = {
        "type": "tool_use",
        "id": call["id"],
        "name": call["function"]["name"],
        "input": json.loads(call["function"]["arguments"]),
    }
    result = {"type": "tool_result", "tool_use_id": call["id"], "content": answer["content"]}
    turns = body.get("messages", [])
    calling = [i for i, turn in enumerate(turns) if turn.get("content") == [tool_use]]
    if not calling or turns[calling[0]].get("role") != "assistant":
        raise AssertionError(
            f"{TOOL_TURNS}: no assistant turn whose content is {[tool_use]!r} in {turns!r}"
        )
    after = turns[calling[0] + 1] if calling[0] + 1 < len(turns) else None
    if after != {"role": "user", "content": [result]}:
        raise AssertionError(
            f"{TOOL_TURNS}: the turn after the tool call should be "
            f"{ {'role': 'user', 'content': [result]}!r}, and was {after!r}"
        )
    _field(body, "tools", _tools(TOOL_TURNS), TOOL_TURNS)


def response_format(body: dict[str, Any]) -> None:
    schema = SAMPLES["response_format"]["response_format"]["json_schema"]["schema"]
    expected = {"format": {"type": "json_schema", "schema": schema}}
    _field(body, "output_config", expected, "response_format")


def stop(body: dict[str, Any]) -> None:
    _field(body, "stop_sequences", SAMPLES["stop"]["stop"], "stop")


def reasoning_effort(body: dict[str, Any]) -> None:
    """A budget of thinking tokens, which max_tokens must exceed (Anthropic refuses it else)."""
    budget = THINKING_BUDGETS[SAMPLES["reasoning_effort"]["reasoning_effort"]]
    _field(body, "thinking", {"type": "enabled", "budget_tokens": budget}, "reasoning_effort")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens <= budget:
        raise AssertionError(
            f"reasoning_effort: max_tokens must be above the thinking budget {budget}, "
            f"and was {max_tokens!r}"
        )


def images(body: dict[str, Any]) -> None:
    [message] = SAMPLES[IMAGES]["messages"]
    [text, _] = message["content"]
    expected = [
        {"type": "text", "text": text["text"]},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64},
        },
    ]
    users = [turn for turn in body.get("messages", []) if turn.get("role") == "user"]
    last = users[-1].get("content") if users else _MISSING
    if last != expected:
        raise AssertionError(
            f"{IMAGES}: the last user turn should be {expected!r}, and was {last!r}"
        )


def user(body: dict[str, Any]) -> None:
    _field(body, "metadata", {"user_id": SAMPLES["user"]["user"]}, "user")


EXPECTED: dict[str, Check] = {
    "tools": tools,
    "tool_choice": tool_choice,
    "parallel_tool_calls": parallel_tool_calls,
    TOOL_TURNS: tool_turns,
    "response_format": response_format,
    "stop": stop,
    "reasoning_effort": reasoning_effort,
    IMAGES: images,
    "user": user,
}
