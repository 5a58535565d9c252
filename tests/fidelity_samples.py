"""A sample value of each row of the translation matrix (app/providers/fidelity.py), as a
client sends it to /v1/chat/completions, and the conversation pieces the message rows need.

The adapters' tests and tests/openai_compat/test_fidelity.py use the same samples, so each
cell is proved with one value: what the vendor's mock received for it
(`tests/mocks/*_expect.py`) and what the SDK parsed back."""

from __future__ import annotations

from typing import Any

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}

# A 1x1 transparent PNG.
PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg=="
)
PNG_DATA_URL = f"data:image/png;base64,{PNG_BASE64}"

# Row name → the request fields that use it (merged into the request body).
SAMPLES: dict[str, dict[str, Any]] = {
    "tools": {"tools": [WEATHER_TOOL]},
    "tool_choice": {
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "parallel_tool_calls": {"tools": [WEATHER_TOOL], "parallel_tool_calls": False},
    "messages[].tool_calls / role tool": {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc123", "content": "sunny, 21 C"},
        ],
    },
    "response_format": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        }
    },
    "stop": {"stop": ["\n\n", "END"]},
    "top_p": {"top_p": 0.5},
    "seed": {"seed": 42},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "presence_penalty": {"presence_penalty": -0.5},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"logprobs": True, "top_logprobs": 2},
    "logit_bias": {"logit_bias": {"1000": -100}},
    "reasoning_effort": {"reasoning_effort": "low"},
    "messages[].content[].image_url": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
                ],
            }
        ]
    },
    "n": {"n": 2},
    "user": {"user": "end-user-42"},
}
