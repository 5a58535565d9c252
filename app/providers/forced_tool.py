"""Structured output through a forced tool, for an Anthropic model without the native kind.

Such a model has no `output_config.format`, yet it calls tools with arguments of a schema. So
the gateway offers it one tool more, `FORCED_TOOL`, whose input schema is the answer's, and
makes it call that tool (`tool_choice` of type `tool`): the call's input is the answer, which
the adapter hands back as the answer's text, not as a tool call.

Two things do not go with that, and are refused rather than half-served: tools of the
request's own that the model may call (which could not be, since the model must call ours),
and extended thinking (`reasoning_effort`), which Anthropic does not allow with a forced tool.
A tool of the request's named `FORCED_TOOL` is refused too. This module imports no SDK: the
intake checks a request against it before anything is recorded (a 400), and the adapter
again before any call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FORCED_TOOL = "json_output"  # unlikely to be one of the request's own; refused if it is
FORCED_TOOL_DESCRIPTION = (
    "Give your answer by calling this tool once: its input is the whole answer, as JSON of "
    "this schema."
)


def conflict(options: Mapping[str, Any]) -> str | None:
    """Why a request with these options cannot have its structured output through the forced
    tool (their `response_format` aside), or None when it can."""
    tools = options.get("tools") or ()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and function.get("name") == FORCED_TOOL:
            return (
                f"the request has a tool named '{FORCED_TOOL}', the name of the tool the "
                "gateway forces to give this model's structured output: rename yours"
            )
    if tools and options.get("tool_choice") != "none":
        return (
            "response_format and tools cannot be combined for this model: it has no native "
            "structured output, so the gateway makes it call a tool of its own for the "
            "answer, and it could not call yours (leave one out, or set tool_choice none)"
        )
    if options.get("reasoning_effort") not in (None, "none"):
        return (
            "response_format and reasoning_effort cannot be combined for this model: it has "
            "no native structured output, and the forced tool call the gateway uses instead "
            "is not allowed with extended thinking"
        )
    return None
