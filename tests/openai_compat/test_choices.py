"""`n` > 1: several answers to one request, through the official `openai` SDK: whole and
streamed (the answers' chunks interleaved, each with its own finish), with tool calls, kept on
the prompt, replayed with an `Idempotency-Key`, and refused by name where the provider answers
once per request. (The matrix cells of `n`: test_fidelity.py.)"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Any

import openai

from tests.fidelity_samples import WEATHER_TOOL
from tests.mocks.anthropic_server import MockAnthropic
from tests.mocks.openai_server import MockOpenAI
from tests.openai_compat.conftest import V1

SAY = [{"role": "user", "content": "Say hi"}]


def _by_choice(chunks: list[Any]) -> tuple[dict[int, str], dict[int, str | None]]:
    """Each answer's streamed text, and its finish reason, by choice index."""
    texts: dict[int, str] = defaultdict(str)
    finishes: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                assert choice.index not in finishes, "an answer finished twice"
                finishes[choice.index] = choice.finish_reason
    return dict(texts), finishes


async def test_n_answers_come_back_whole_counted_and_kept(v1: V1, mock_openai: MockOpenAI):
    key, headers = await v1.user()
    upstream = f"choices-{uuid.uuid4().hex[:8]}"
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"openai/{upstream}", messages=SAY, n=3
        )
    completion = raw.parse()
    [call] = mock_openai.calls_for(upstream)
    assert call.body["n"] == 3  # forwarded
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert [c.message.content for c in completion.choices] == [
        "echo: Say hi",
        "echo: Say hi #1",
        "echo: Say hi #2",
    ]
    assert {c.finish_reason for c in completion.choices} == {"stop"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 + 2 * 4  # every answer's words
    prompt = await v1.prompt(headers, raw.headers["X-Prompt-Id"])
    response = prompt["response"]
    assert response["response_text"] == "echo: Say hi"
    assert response["output_tokens"] == 11
    assert response["choices"] == [
        {"text": "echo: Say hi #1", "finish_reason": "stop", "tool_calls": None, "refusal": None},
        {"text": "echo: Say hi #2", "finish_reason": "stop", "tool_calls": None, "refusal": None},
    ]
    assert prompt["parameters"]["n"] == 3


async def test_n_answers_stream_interleaved_each_to_its_finish(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="openai/streamed-choices",
                messages=SAY,
                n=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
    texts, finishes = _by_choice(chunks)
    assert texts == {0: "echo: Say hi", 1: "echo: Say hi #1"}
    assert finishes == {0: "stop", 1: "stop"}
    # Interleaved as they arrived: answer 1's first words come before answer 0 ends.
    order = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 3 + 4


async def test_n_answers_with_tool_calls_whole_and_streamed(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        whole = await client.chat.completions.create(
            model="openai/tool-call-choices", messages=SAY, tools=[WEATHER_TOOL], n=2
        )
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="openai/tool-call-choices",
                messages=SAY,
                tools=[WEATHER_TOOL],
                n=2,
                stream=True,
            )
        ]
    ids = [[call.id for call in c.message.tool_calls or []] for c in whole.choices]
    assert ids == [["call_mock_1"], ["call_mock_1_1"]]
    assert [c.finish_reason for c in whole.choices] == ["tool_calls", "tool_calls"]
    arguments: dict[int, str] = defaultdict(str)
    streamed_ids: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                assert piece.index == 0 and piece.function is not None
                if piece.id is not None:
                    streamed_ids[choice.index] = piece.id
                arguments[choice.index] += piece.function.arguments or ""
    assert streamed_ids == {0: "call_mock_1", 1: "call_mock_1_1"}
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Paris"},
    }
    assert _by_choice(chunks)[1] == {0: "tool_calls", 1: "tool_calls"}


async def test_a_replay_gives_every_answer_again(v1: V1, mock_openai: MockOpenAI):
    key, _ = await v1.user()
    upstream = f"replayed-choices-{uuid.uuid4().hex[:8]}"
    whole = {"Idempotency-Key": f"n-{uuid.uuid4()}"}
    streamed = {"Idempotency-Key": f"n-{uuid.uuid4()}"}
    async with v1.client(key) as client:
        first, again = [
            await client.chat.completions.create(
                model=f"openai/{upstream}", messages=SAY, n=2, extra_headers=whole
            )
            for _ in range(2)
        ]
        live, replayed = [
            [
                c
                async for c in await client.chat.completions.create(
                    model=f"openai/{upstream}",
                    messages=SAY,
                    n=2,
                    stream=True,
                    extra_headers=streamed,
                )
            ]
            for _ in range(2)
        ]
    assert len(mock_openai.calls_for(upstream)) == 2  # one each: the second of each replays
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]
    assert len(again.choices) == 2
    assert _by_choice(replayed) == _by_choice(live)


async def test_n_is_refused_by_name_where_the_provider_answers_once(
    v1: V1, mock_anthropic: MockAnthropic
):
    key, headers = await v1.user()
    upstream = f"once-{uuid.uuid4().hex[:8]}"
    async with v1.client(key) as client:
        try:
            await client.chat.completions.create(model=f"anthropic/{upstream}", messages=SAY, n=2)
        except openai.BadRequestError as exc:
            refused = exc
        else:
            raise AssertionError("n=2 was accepted for Anthropic")
        # n=1 asks for nothing: answered.
        one = await client.chat.completions.create(model=f"anthropic/{upstream}", messages=SAY, n=1)
    assert refused.code == "unsupported_parameter" and refused.param == "n"
    assert "anthropic" in refused.message
    assert len(one.choices) == 1
    assert len(mock_anthropic.calls_for(upstream)) == 1
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    assert len(page["items"]) == 1  # the refused request left no record


async def test_n_out_of_range_is_a_clear_400(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        for n in (0, 129):
            try:
                await client.chat.completions.create(model="openai/x", messages=SAY, n=n)
            except openai.BadRequestError as exc:
                assert exc.param == "n", exc.body
            else:
                raise AssertionError(f"n={n} was accepted")
