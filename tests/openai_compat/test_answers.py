"""What /v1 answers beyond text, through the official `openai` SDK: usage details, refusals,
logprobs, the legacy `functions`, tool calls replayed, and the leniency of `drop_params`.
(The tool loop and structured output on every provider: test_clients.py; every field of
the translation matrix: test_fidelity.py.)"""

from __future__ import annotations

import json
import uuid

import openai
import pytest

from app.services.auth import service as auth_service
from tests.fidelity_samples import WEATHER_TOOL
from tests.mocks.anthropic_server import MockAnthropic
from tests.mocks.openai_server import MockOpenAI
from tests.openai_compat.conftest import V1

ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_reasoning_and_cached_tokens_are_reported_and_recorded(v1: V1, provider: str):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"{provider}/reasoning-3", messages=[{"role": "user", "content": "a b c d e"}]
        )
        streamed = await client.chat.completions.create(
            model=f"{provider}/reasoning-3",
            messages=[{"role": "user", "content": "a b c d e"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in streamed]
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    last = chunks[-1].usage
    assert last is not None and last.completion_tokens_details is not None
    assert last.completion_tokens_details.reasoning_tokens == 3
    assert last.completion_tokens > 0  # a streamed call's tokens are counted too
    prompt = await v1.prompt(headers, raw.headers["X-Prompt-Id"])
    assert prompt["response"]["reasoning_tokens"] == 3
    assert prompt["attempts"][-1]["reasoning_tokens"] == 3


async def test_a_refusal_is_answered_as_openai_does(v1: V1):
    key, headers = await v1.user()
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="openai/refuses", messages=ASK
        )
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="openai/refuses", messages=ASK, stream=True
            )
        ]
    message = raw.parse().choices[0].message
    assert message.content is None
    assert message.refusal == "I can't help with that."
    refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
    assert refusal == "I can't help with that."
    prompt = await v1.prompt(headers, raw.headers["X-Prompt-Id"])
    assert prompt["response"]["refusal"] == "I can't help with that."


async def test_logprobs_come_back_whole_and_streamed(v1: V1):
    key, _ = await v1.user()
    async with v1.client(key) as client:
        completion = await client.chat.completions.create(
            model="openai/logprobs-demo",
            messages=[{"role": "user", "content": "one two"}],
            logprobs=True,
            top_logprobs=2,
        )
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="openai/logprobs-demo",
                messages=[{"role": "user", "content": "one two"}],
                logprobs=True,
                top_logprobs=2,
                stream=True,
            )
        ]
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == ["echo:", "one", "two"]
    assert len(logprobs.content[0].top_logprobs) == 2
    assert completion.choices[0].message.content == "echo: one two"
    del chunks  # (the stream's text is what matters to a client; its logprobs are the vendor's)


async def test_gemini_logprobs_come_back_in_openai_shape(v1: V1):
    """Gemini's logprobsResult (chosenCandidates, topCandidates) as OpenAI's logprobs, parsed
    by the SDK: the mock's tokens ("echo:", " one", " two"), each at -0.25, each with the
    two top candidates asked for (the token itself, then "<token>~1" at -1.25)."""
    key, _ = await v1.user()
    async with v1.client(key) as client:
        completion = await client.chat.completions.create(
            model="gemini/logprobs-demo",
            messages=[{"role": "user", "content": "one two"}],
            logprobs=True,
            top_logprobs=2,
        )
    choice = completion.choices[0]
    assert choice.message.content == "echo: one two"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert [(t.token, t.logprob, t.bytes) for t in content] == [
        (token, -0.25, list(token.encode())) for token in ("echo:", " one", " two")
    ]
    assert [[(a.token, a.logprob) for a in t.top_logprobs] for t in content] == [
        [(token, -0.25), (f"{token}~1", -1.25)] for token in ("echo:", " one", " two")
    ]


async def test_the_legacy_functions_get_a_function_call(v1: V1):
    key, _ = await v1.user()
    functions = [WEATHER_TOOL["function"]]
    async with v1.client(key) as client:
        completion = await client.chat.completions.create(
            model="openai/tool-call", messages=ASK, functions=functions, function_call="auto"
        )
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="openai/tool-call", messages=ASK, functions=functions, stream=True
            )
        ]
        choice = completion.choices[0]
        assert choice.finish_reason == "function_call"
        call = choice.message.function_call
        assert call is not None and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Paris"}
        assert choice.message.tool_calls is None
        pieces = [c.choices[0].delta.function_call for c in chunks if c.choices]
        named = [p for p in pieces if p is not None and p.name]
        assert [p.name for p in named] == ["get_weather"]
        arguments = "".join(p.arguments or "" for p in pieces if p is not None)
        assert json.loads(arguments) == {"city": "Paris"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "function_call"
        # The loop's second step, in the legacy shape: the function's result answered.
        answer = await client.chat.completions.create(
            model="openai/tool-call",
            messages=[
                *ASK,
                {"role": "assistant", "content": None, "function_call": call.model_dump()},
                {"role": "function", "name": "get_weather", "content": "sunny"},
            ],
            functions=functions,
        )
    assert answer.choices[0].message.content == "tool said: sunny"


async def test_a_replayed_tool_call_is_the_same_answer(v1: V1, mock_openai: MockOpenAI):
    key, _ = await v1.user()
    upstream = f"tool-call-{uuid.uuid4().hex[:8]}"
    whole = {"Idempotency-Key": f"agent-step-{uuid.uuid4()}"}
    streamed = {"Idempotency-Key": f"agent-step-{uuid.uuid4()}"}
    async with v1.client(key) as client:
        first, again = [
            await client.chat.completions.create(
                model=f"openai/{upstream}", messages=ASK, tools=[WEATHER_TOOL], extra_headers=whole
            )
            for _ in range(2)
        ]
        streams = [
            [
                c
                async for c in await client.chat.completions.create(
                    model=f"openai/{upstream}",
                    messages=ASK,
                    tools=[WEATHER_TOOL],
                    extra_headers=streamed,
                    stream=True,
                )
            ]
            for _ in range(2)
        ]
    assert len(mock_openai.calls_for(upstream)) == 2  # one each: the second of each replays
    assert again.choices[0].message.tool_calls == first.choices[0].message.tool_calls
    assert again.choices[0].finish_reason == "tool_calls"
    live, replayed = streams
    # The replay sends each call in one piece: the same call, the same finish.
    deltas = [c.choices[0].delta.tool_calls for c in replayed if c.choices]
    [[piece]] = [d for d in deltas if d]
    assert piece.index == 0 and piece.id == "call_mock_1" and piece.function is not None
    assert piece.function.name == "get_weather"
    assert json.loads(piece.function.arguments or "") == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in replayed if c.choices][-1] == "tool_calls"
    assert [c.choices[0].finish_reason for c in live if c.choices][-1] == "tool_calls"


async def test_drop_params_leaves_out_what_the_provider_cannot_honour(
    v1: V1, mock_anthropic: MockAnthropic
):
    key, headers = await v1.user()
    upstream = f"drop-{uuid.uuid4().hex[:8]}"
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=f"anthropic/{upstream}", messages=ASK, seed=7, top_p=0.5
            )
        raw = await client.chat.completions.with_raw_response.create(
            model=f"anthropic/{upstream}",
            messages=ASK,
            seed=7,
            top_p=0.5,
            stop=["END"],
            extra_body={"drop_params": True},
        )
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "top_p"
    assert raw.parse().choices[0].message.content
    assert raw.headers["X-Dropped-Params"] == "top_p, seed"
    [call] = mock_anthropic.calls_for(upstream)
    assert "seed" not in call.body and "top_p" not in call.body
    assert call.body["stop_sequences"] == ["END"]  # what it can honour is still sent
    prompt = await v1.prompt(headers, raw.headers["X-Prompt-Id"])
    assert prompt["parameters"]["dropped_params"] == {f"anthropic/{upstream}": ["top_p", "seed"]}
    assert prompt["parameters"]["seed"] == 7  # the request is kept whole


async def test_drop_params_as_the_servers_default(
    v1: V1, mock_anthropic: MockAnthropic, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(v1.api.app.state.services.intake, "drop_params", True)
    key, _ = await v1.user()
    upstream = f"drop-{uuid.uuid4().hex[:8]}"
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"anthropic/{upstream}", messages=ASK, seed=7
        )
        # Image parts and tool turns are never left out: another model is the answer.
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="local",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/a.png"},
                            },
                        ],
                    }
                ],
            )
    assert raw.headers["X-Dropped-Params"] == "seed"
    assert "seed" not in mock_anthropic.calls_for(upstream)[0].body
    assert refused.value.param == "messages[].content[].image_url"


async def test_drop_params_as_the_keys_setting_on_the_routes_and_the_fast_paths(
    v1: V1, mock_anthropic: MockAnthropic
):
    """A key set to drop (`python -m app set-key PREFIX --drop-params on`) leaves out what the
    provider cannot honour, on /v1 and /ai/prompts alike, for a request that does not say;
    a request's own `drop_params: false` still refuses."""
    key, headers = await v1.user()
    async with v1.api.sessions.begin() as session:
        await auth_service.set_key_drop_params(session, prefix=key[:11], drop_params=True)
    upstream = f"key-drop-{uuid.uuid4().hex[:8]}"
    async with v1.client(key) as client:
        # The first request is the key's first: the route verifies it; the next ones take
        # the fast path (a key verified recently), which must read the same setting.
        raws = [
            await client.chat.completions.with_raw_response.create(
                model=f"anthropic/{upstream}", messages=ASK, seed=7
            )
            for _ in range(2)
        ]
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=f"anthropic/{upstream}",
                messages=ASK,
                seed=7,
                extra_body={"drop_params": False},
            )
    assert [raw.headers["X-Dropped-Params"] for raw in raws] == ["seed", "seed"]
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "seed"
    assert len(mock_anthropic.calls_for(upstream)) == 2
    assert all("seed" not in call.body for call in mock_anthropic.calls_for(upstream))

    # /ai/prompts: the bundled model has no tools; the key's prompt is taken without them.
    submitted = await v1.api.submit(
        headers, prompt_text="Say hi", model="local", max_tokens=4, tools=[WEATHER_TOOL]
    )
    prompt = await v1.api.wait_final(headers, submitted["id"], timeout=60)
    assert prompt["status"] == "completed", prompt
    assert prompt["parameters"]["dropped_params"] == {"local": ["tools"]}
    async with v1.api.sessions.begin() as session:
        await auth_service.set_key_drop_params(session, prefix=key[:11], drop_params=None)
