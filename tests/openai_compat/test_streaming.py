"""`stream: true` through the official `openai` SDK: chunks, usage, `[DONE]`, time to first
token; a failure after the first text; and a client that hangs up mid-stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import openai
import pytest

from tests.mocks.openai_server import MockOpenAI
from tests.openai_compat.conftest import V1
from tests.openai_compat.test_chat import PROVIDERS, _assert_recorded, _mock

HELLO: list[Any] = [{"role": "user", "content": "hello"}]


async def _wait_final(v1: V1, headers: dict[str, str], prompt_id: str) -> dict[str, Any]:
    for _ in range(500):
        prompt = await v1.prompt(headers, prompt_id)
        if prompt["status"] in ("completed", "failed", "cancelled"):
            return prompt
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} is still {prompt['status']}")


@pytest.mark.parametrize(("provider", "model"), PROVIDERS)
async def test_a_stream_on_each_provider(
    v1: V1, request: pytest.FixtureRequest, provider: str, model: str
):
    key, headers = await v1.user()
    text = f"Stream me, {provider}: one two three {time.monotonic_ns()}"
    before = len(_mock(request, provider).calls)
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["content-type"].startswith("text/event-stream")
        prompt_id = raw.headers["x-prompt-id"]
        chunks = [chunk async for chunk in raw.parse()]

    assert {c.id for c in chunks} == {f"chatcmpl-{uuid.UUID(prompt_id).hex}"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {model}
    *with_choices, last = chunks
    assert with_choices[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in with_choices]
    assert "".join(pieces) == f"echo: {text}"
    assert sum(1 for p in pieces if p) > 3  # piece by piece, not in one chunk
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert all(c.usage is None for c in with_choices)
    # include_usage: a last chunk with empty choices and the usage.
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens

    prompt = await v1.prompt(headers, prompt_id)
    _assert_recorded(v1, prompt, model, provider)
    answer = prompt["response"]
    assert answer["response_text"] == f"echo: {text}"
    assert answer["input_tokens"] == last.usage.prompt_tokens
    assert answer["output_tokens"] == last.usage.completion_tokens
    assert answer["first_token_ms"] is not None
    assert 0 <= answer["first_token_ms"] <= answer["duration_ms"]
    assert prompt["parameters"]["stream"] is True
    [call] = _mock(request, provider).calls[before:]
    assert call.body.get("stream") or "streamGenerateContent" in call.path  # streamed upstream


async def test_without_include_usage_there_is_no_usage_chunk(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert chunks and all(len(c.choices) == 1 and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hello"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_the_wire_ends_with_done(v1: V1):
    """What the SDK hides: `data:` events only, `[DONE]` last."""
    key, _ = await v1.user()
    async with v1.api.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    ) as response:
        assert response.status_code == 200
        body = (await response.aread()).decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


async def test_a_failure_after_the_first_text_ends_the_stream_with_an_error(
    v1: V1, mock_openai: MockOpenAI
):
    key, headers = await v1.user()
    model = f"break-2-{time.monotonic_ns()}"
    received: list[str] = []
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"openai/{model}",
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
        )
        with pytest.raises(openai.APIError) as raised:
            async for chunk in raw.parse():
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "echo: one"
    assert raised.value.code == "connection_error"
    # No retry once text reached the client: it would repeat or contradict it.
    assert len(mock_openai.calls_for(model)) == 1
    prompt = await v1.prompt(headers, raw.headers["x-prompt-id"])
    assert prompt["status"] == "failed" and prompt["error"]["code"] == "connection_error"
    [attempt] = prompt["attempts"]
    assert attempt["outcome"] == "error" and attempt["usage_estimated"] is True
    assert attempt["output_tokens"] > 0 and attempt["input_tokens"] > 0


async def test_a_client_that_hangs_up_cancels_the_call(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    # Two pieces of text, then the mock sends nothing more until its client goes away.
    model = f"stall-2-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"openai/{model}",
            messages=[{"role": "user", "content": "one two three four five"}],
            stream=True,
        )
        prompt_id = raw.headers["x-prompt-id"]
        stream = raw.parse()
        received = ""
        async for chunk in stream:
            received += chunk.choices[0].delta.content or ""
            if received == "echo: one":
                break
        assert (await v1.prompt(headers, prompt_id))["status"] == "running"
        await stream.close()  # hang up mid-stream

    prompt = await _wait_final(v1, headers, prompt_id)
    assert prompt["status"] == "cancelled"
    assert prompt["response"] is None and prompt["cancel_requested_at"]
    [attempt] = prompt["attempts"]
    assert attempt["outcome"] == "cancelled"
    # What was received so far, estimated: the mock never sent its usage.
    assert attempt["usage_estimated"] is True
    assert attempt["output_tokens"] == 3  # "echo: one": 9 characters, about 3 tokens
    assert attempt["input_tokens"] > 0
    # The upstream call was closed, not left running.
    for _ in range(200):
        if model in mock_openai.abandoned:
            break
        await asyncio.sleep(0.02)
    assert model in mock_openai.abandoned
    assert len(mock_openai.calls_for(model)) == 1


async def test_cancelling_through_ai_prompts_stops_a_stream(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    model = f"stall-1-{time.monotonic_ns()}"
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"openai/{model}", messages=HELLO, stream=True
        )
        prompt_id = raw.headers["x-prompt-id"]
        cancel = await v1.api.client.post(f"/ai/prompts/{prompt_id}/cancel", headers=headers)
        assert cancel.status_code in (200, 202), cancel.text
        with pytest.raises(openai.APIError) as raised:
            async for _ in raw.parse():
                pass
    assert raised.value.code == "prompt_cancelled"
    prompt = await _wait_final(v1, headers, prompt_id)
    assert prompt["status"] == "cancelled"
    assert [a["outcome"] for a in prompt["attempts"]] == ["cancelled"]
