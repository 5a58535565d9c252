"""`Idempotency-Key` on /v1/chat/completions, through the official SDK: a retry gets the first
answer back (streamed or not) with no second prompt and no second provider call."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest

from tests.mocks.openai_server import MockOpenAI
from tests.openai_compat.conftest import V1


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def _count_prompts(v1: V1, headers: dict[str, str]) -> int:
    listed = await v1.api.client.get("/ai/prompts/?limit=100", headers=headers)
    return len(listed.json()["items"])


async def test_a_retry_gets_the_first_answer_and_nothing_runs_twice(
    v1: V1, mock_openai: MockOpenAI
):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        upstream = f"slow-300-idem-{uuid.uuid4().hex[:8]}"
        messages = [{"role": "user", "content": "once only"}]
        idem = _key()

        async def call() -> openai.types.chat.ChatCompletion:
            raw = await client.chat.completions.with_raw_response.create(
                model=f"openai/{upstream}", messages=messages, extra_headers=idem
            )
            return raw.parse(), raw.headers

        # The second arrives while the first is still running: it waits for the first's answer.
        (first, first_headers), (second, second_headers) = await asyncio.gather(call(), call())
        (third, third_headers) = await call()

        assert first.choices[0].message.content == "echo: once only"
        assert second.model_dump() == first.model_dump() == third.model_dump()
        replayed = [h.get("Idempotent-Replayed") for h in (first_headers, second_headers)]
        assert replayed.count("true") == 1  # one of the two ran, the other was a replay
        assert third_headers["Idempotent-Replayed"] == "true"
        assert len({h["X-Prompt-Id"] for h in (first_headers, second_headers, third_headers)}) == 1
        assert len(mock_openai.calls_for(upstream)) == 1
        assert await _count_prompts(v1, headers) == 1


async def test_a_streamed_retry_replays_the_text(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        upstream = f"idem-stream-{uuid.uuid4().hex[:8]}"
        request = {
            "model": f"openai/{upstream}",
            "messages": [{"role": "user", "content": "stream me twice"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "extra_headers": _key(),
        }

        async def text() -> tuple[str, int | None]:
            parts, usage = [], None
            async for chunk in await client.chat.completions.create(**request):
                parts.extend(c.delta.content or "" for c in chunk.choices)
                usage = chunk.usage.total_tokens if chunk.usage else usage
            return "".join(parts), usage

        first = await text()
        again = await text()
        assert first == again and first[0] == "echo: stream me twice" and first[1]
        assert len(mock_openai.calls_for(upstream)) == 1
        assert await _count_prompts(v1, headers) == 1


async def test_the_same_key_with_another_body_is_a_bad_request(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        idem = _key()
        model = f"openai/idem-{uuid.uuid4().hex[:8]}"
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "a"}], extra_headers=idem
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "b"}], extra_headers=idem
            )
        assert refused.value.code == "idempotency_key_reused"
        assert await _count_prompts(v1, headers) == 1
