"""A defined prompt type governs /v1/chat/completions as it governs /ai/prompts/: an admin's
ceilings, fallbacks, instruction and template hold whichever endpoint a client uses. Each
case runs on the fast path and, with an `Idempotency-Key`, through the route."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from tests.mocks.openai_server import MockOpenAI
from tests.openai_compat.conftest import V1
from tests.prompt_types.helpers import define, unique

ROUTES = ["fast path", "route"]


def _headers(route: str) -> dict[str, str]:
    """An Idempotency-Key sends the request to the route (fast_paths.py)."""
    return {"Idempotency-Key": str(uuid.uuid4())} if route == "route" else {}


def _upstream() -> str:
    return f"v1pt-{uuid.uuid4().hex[:10]}"


async def _admin(v1: V1) -> dict[str, str]:
    return await v1.api.new_user(is_admin=True)


@pytest.mark.parametrize("route", ROUTES)
async def test_the_types_instruction_template_and_ceilings_shape_the_chat(
    v1: V1, mock_openai: MockOpenAI, route: str
):
    name, model = unique(), _upstream()
    await define(
        v1.api,
        await _admin(v1),
        name,
        system_instruction="You write for busy people.",
        template="Summarise for {audience}:\n{prompt_text}",
        max_output_tokens=300,
        timeout_seconds=20,
    )
    key, headers = await v1.user()
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"openai/{model}",
            messages=[
                {"role": "system", "content": "Use British spelling."},
                {"role": "user", "content": "The quarterly report."},
            ],
            extra_body={"prompt_type": name, "variables": {"audience": "the board"}},
            extra_headers=_headers(route),
        )
    rendered = "Summarise for the board:\nThe quarterly report."
    assert raw.parse().choices[0].message.content == f"echo: {rendered}"
    [call] = mock_openai.calls_for(model)
    assert call.body["messages"] == [
        {"role": "system", "content": "You write for busy people."},
        {"role": "system", "content": "Use British spelling."},
        {"role": "user", "content": rendered},
    ]
    assert call.body["max_tokens"] == 300  # the type's ceiling, as the default

    prompt = (
        await v1.api.client.get(f"/ai/prompts/{raw.headers['x-prompt-id']}", headers=headers)
    ).json()
    assert prompt["status"] == "completed", prompt["error"]
    assert prompt["prompt_type"] == name and prompt["prompt_type_version"] == 1
    assert prompt["prompt_text"] == rendered
    parameters = prompt["parameters"]
    assert parameters["system_prompt"] == "You write for busy people."
    assert parameters["max_tokens"] == 300 and parameters["timeout_seconds"] == 20
    assert parameters["template_input"] == {
        "prompt_text": "The quarterly report.",
        "variables": {"audience": "the board"},
    }


@pytest.mark.parametrize("route", ROUTES)
async def test_the_types_fallbacks_rescue_a_chat(v1: V1, mock_openai: MockOpenAI, route: str):
    rescue = _upstream()
    name = unique()
    await define(v1.api, await _admin(v1), name, fallbacks=[f"backup/{rescue}"])
    key, headers = await v1.user()
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="openai/error-401",  # not retried: straight to the fallback
            messages=[{"role": "user", "content": "help"}],
            extra_body={"prompt_type": name},
            extra_headers=_headers(route),
        )
    assert raw.parse().choices[0].message.content == "echo: help"
    assert len(mock_openai.calls_for(rescue)) == 1
    prompt = (
        await v1.api.client.get(f"/ai/prompts/{raw.headers['x-prompt-id']}", headers=headers)
    ).json()
    assert prompt["parameters"]["fallbacks"] == [f"backup/{rescue}"]
    assert [a["outcome"] for a in prompt["attempts"]][-1] == "success"


REFUSALS: list[tuple[dict[str, Any], dict[str, Any], str, str]] = [
    # (the type's policy, the request's change, the error code, words in the message)
    ({"max_output_tokens": 100}, {"max_tokens": 101}, "max_tokens_too_large", "above the 100"),
    ({"max_prompt_chars": 10}, {}, "prompt_too_large", "the limit here is 10"),
    ({"template": "About {topic}: {prompt_text}"}, {}, "missing_template_variable", "topic"),
    ({}, {"variables": {"x": "y"}}, "unknown_template_variable", "no template"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("policy", "change", "code", "words"), REFUSALS)
async def test_a_chat_beyond_the_types_policy_is_refused_before_anything_runs(
    v1: V1,
    mock_openai: MockOpenAI,
    route: str,
    policy: dict[str, Any],
    change: dict[str, Any],
    code: str,
    words: str,
):
    name, model = unique(), _upstream()
    await define(v1.api, await _admin(v1), name, **policy)
    key, headers = await v1.user()
    variables = change.get("variables")
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model=f"openai/{model}",
                messages=[{"role": "user", "content": "A question of some length"}],
                max_tokens=change.get("max_tokens"),
                extra_body={"prompt_type": name, **({"variables": variables} if variables else {})},
                extra_headers=_headers(route),
            )
    assert raised.value.code == code and words in raised.value.message
    assert mock_openai.calls_for(model) == []
    page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
    assert page["items"] == []


@pytest.mark.parametrize("route", ROUTES)
async def test_a_retired_type_refuses_chats(v1: V1, route: str):
    admin, name = await _admin(v1), unique()
    await define(v1.api, admin, name, max_output_tokens=50)
    retired = await v1.api.client.delete(f"/ai/prompt-types/{name}", headers=admin)
    assert retired.status_code == 200, retired.text
    key, _ = await v1.user()
    async with v1.client(key) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hello"}],
                extra_body={"prompt_type": name},
                extra_headers=_headers(route),
            )
    assert raised.value.code == "prompt_type_retired"
    assert name in raised.value.message


async def test_an_undefined_type_is_a_free_label_as_before(v1: V1, mock_openai: MockOpenAI):
    model, name = _upstream(), unique()
    key, headers = await v1.user()
    async with v1.client(key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"openai/{model}",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt_type": name},
        )
    [call] = mock_openai.calls_for(model)
    assert call.body["messages"] == [{"role": "user", "content": "hello"}]
    assert "max_tokens" not in call.body
    prompt = (
        await v1.api.client.get(f"/ai/prompts/{raw.headers['x-prompt-id']}", headers=headers)
    ).json()
    assert prompt["prompt_type"] == name and prompt["prompt_type_version"] is None
