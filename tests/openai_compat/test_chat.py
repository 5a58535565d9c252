"""/v1/chat/completions through the official `openai` SDK, on every provider: the SDK's parsed
objects, and the prompt the call left in /ai/prompts (`X-Prompt-Id`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.openai_compat.conftest import V1

PROVIDERS = [
    ("openai", "gpt-4.1-nano"),
    ("gemini", "gemini-2.5-flash"),
    ("anthropic", "claude-haiku-4-5"),
]


def _mock(request: pytest.FixtureRequest, provider: str) -> Any:
    return request.getfixturevalue(f"mock_{provider}")


def _assert_recorded(v1: V1, prompt: dict[str, Any], model: str, provider: str) -> None:
    """A completed chat prompt, priced like any other."""
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["prompt_type"] == "chat"
    assert prompt["model"] == model and prompt["provider"] == provider
    answer = prompt["response"]
    assert answer["input_tokens"] > 0 and answer["output_tokens"] > 0
    assert answer["usage_estimated"] is False
    assert answer["duration_ms"] >= 0
    entry = v1.api.app.state.services.models.catalogue.get(model)
    expected = (
        entry.input * answer["input_tokens"] + entry.output * answer["output_tokens"]
    ) / 10**6
    assert Decimal(answer["cost_usd"]) == expected
    assert [a["outcome"] for a in prompt["attempts"]] == ["success"]


@pytest.mark.parametrize(("provider", "model"), PROVIDERS)
async def test_a_completion_on_each_provider(
    v1: V1, request: pytest.FixtureRequest, provider: str, model: str
):
    key, headers = await v1.user()
    text = f"Hello {provider} ✓ {time.monotonic_ns()}"
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "An earlier question"},
        {"role": "assistant", "content": "An earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": text}]},
    ]
    before = len(_mock(request, provider).calls)
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=50, metadata={"team": "docs"}
        )
    completion = raw.parse()
    prompt_id = raw.headers["x-prompt-id"]

    assert completion.id == f"chatcmpl-{uuid.UUID(prompt_id).hex}"
    assert completion.object == "chat.completion"
    assert completion.model == model
    [choice] = completion.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == f"echo: {text}"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    prompt = await v1.prompt(headers, prompt_id)
    _assert_recorded(v1, prompt, model, provider)
    assert prompt["prompt_text"] == text  # the last user message, so that lists read well
    assert prompt["metadata"] == {"team": "docs"}
    assert prompt["parameters"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "An earlier question"},
        {"role": "assistant", "content": "An earlier answer"},
        {"role": "user", "content": text},
    ]
    answer = prompt["response"]
    assert answer["response_text"] == choice.message.content
    assert answer["input_tokens"] == usage.prompt_tokens
    assert answer["output_tokens"] == usage.completion_tokens
    assert answer["first_token_ms"] is None  # not streamed

    # The whole conversation reached the vendor, turns in order.
    [call] = _mock(request, provider).calls[before:]
    sent = str(call.body)
    for piece in ("Be brief.", "An earlier question", "An earlier answer", text):
        assert piece in sent
    assert sent.index("An earlier question") < sent.index("An earlier answer") < sent.index(text)


async def test_the_prompt_is_listed_like_any_other(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "developer", "content": "Terse."},
                {"role": "user", "content": "hi"},
            ],
            extra_body={"prompt_type": "support"},
            user="end-user-7",
        )
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    [item] = page["items"]
    assert item["status"] == "completed" and item["prompt_type"] == "support"
    assert item["prompt_text"] == "hi"
    prompt = await v1.prompt(headers, item["id"])
    # `developer` is OpenAI's newer name for the system turn.
    assert prompt["parameters"]["messages"][0] == {"role": "system", "content": "Terse."}
    assert prompt["parameters"]["user"] == "end-user-7"


async def test_max_completion_tokens_truncates(v1: V1, mock_openai: Any):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "one two three four five"}],
            max_completion_tokens=2,
            temperature=0.3,
        )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "echo: one"
    body = mock_openai.calls[-1].body
    assert body["max_tokens"] == 2 and body["temperature"] == 0.3


async def test_the_model_list(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        page = await client.models.list()
    models = [m async for m in page]
    available = v1.api.app.state.services.models.available()
    assert [m.id for m in models] == [e.name for e in available]
    assert {"gpt-4o-mini", "gemini-2.5-flash", "claude-haiku-4-5"} <= {m.id for m in models}
    by_id = {m.id: m for m in models}
    assert by_id["claude-haiku-4-5"].owned_by == "anthropic"
    assert all(m.object == "model" and m.created > 0 for m in models)
    async with v1.client(key) as client:
        assert await client.models.retrieve("gpt-4o-mini") == by_id["gpt-4o-mini"]
        with pytest.raises(openai.NotFoundError) as raised:
            await client.models.retrieve("gpt-5-nonexistent")
    assert raised.value.code == "model_not_found"


async def test_a_client_that_gives_up_cancels_the_call(v1: V1, mock_openai: Any):
    key, headers = await v1.user()
    model = f"hang-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(
                model=f"openai/{model}", messages=[{"role": "user", "content": "hi"}], timeout=0.5
            )
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    [item] = page["items"]
    for _ in range(250):
        prompt = await v1.prompt(headers, item["id"])
        if prompt["status"] != "running":
            break
        await asyncio.sleep(0.02)
    assert prompt["status"] == "cancelled" and prompt["response"] is None
    [attempt] = prompt["attempts"]
    assert attempt["outcome"] == "cancelled"
    assert attempt["input_tokens"] is None  # not streamed: nothing is known of its usage
    assert len(mock_openai.calls_for(model)) == 1
