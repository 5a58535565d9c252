"""A defined prompt type shapes the prompts that name it; history never changes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Api
from tests.mocks.openai_server import MockOpenAI
from tests.prompt_types.helpers import define, unique
from tests.prompts.test_validation import assert_problem

TEMPLATE = "Summarise for {audience}:\n{prompt_text}"


def upstream() -> str:
    """An upstream model name of the test's own, so the mock's calls for it are this test's."""
    return f"pt-{uuid.uuid4().hex[:10]}"


async def post(api: Api, headers: dict[str, str], **body: Any) -> Any:
    return await api.client.post("/ai/prompts/", json=body, headers=headers)


async def test_type_supplies_model_instruction_and_template(api: Api, mock_openai: MockOpenAI):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name, model = unique(), upstream()
    await define(
        api,
        admin,
        name,
        system_instruction="You write for busy people.",
        template=TEMPLATE,
        default_model=f"openai/{model}",
        max_output_tokens=300,
        timeout_seconds=20,
    )
    created = await api.submit(
        user,
        prompt_type=name,
        prompt_text="The quarterly report text.",
        variables={"audience": "the board"},
        system_prompt="Use British spelling.",
    )
    rendered = "Summarise for the board:\nThe quarterly report text."
    assert created["model"] == f"openai/{model}" and created["prompt_type_version"] == 1
    assert created["prompt_text"] == rendered

    done = await api.wait_final(user, created["id"])
    assert done["status"] == "completed", done["error"]
    assert done["prompt_type_version"] == 1
    assert done["parameters"] == {
        "system_prompt": "You write for busy people.\n\nUse British spelling.",
        "max_tokens": 300,
        "timeout_seconds": 20,
        "template_input": {
            "prompt_text": "The quarterly report text.",
            "variables": {"audience": "the board"},
        },
    }
    [call] = mock_openai.calls_for(model)
    assert call.body["messages"] == [
        {"role": "system", "content": "You write for busy people.\n\nUse British spelling."},
        {"role": "user", "content": rendered},
    ]
    assert call.body["max_tokens"] == 300


async def test_a_new_version_applies_to_new_prompts_only(api: Api, mock_openai: MockOpenAI):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name, model = unique(), upstream()
    await define(api, admin, name, system_instruction="First.", default_model=f"openai/{model}")
    first = await api.submit(user, prompt_type=name, prompt_text="one")
    await api.wait_final(user, first["id"])

    v2 = await define(
        api, admin, name, system_instruction="Second.", default_model=f"openai/{model}"
    )
    assert v2["version"] == 2
    second = await api.submit(user, prompt_type=name, prompt_text="two")
    assert second["prompt_type_version"] == 2
    done = await api.wait_final(user, second["id"])
    assert done["parameters"]["system_prompt"] == "Second."

    again = (await api.client.get(f"/ai/prompts/{first['id']}", headers=user)).json()
    assert again["prompt_type_version"] == 1 and again["parameters"]["system_prompt"] == "First."
    systems = [c.body["messages"][0]["content"] for c in mock_openai.calls_for(model)]
    assert systems == ["First.", "Second."]
    listed = await api.client.get("/ai/prompts/", params={"prompt_type": name}, headers=user)
    assert [p["prompt_type_version"] for p in listed.json()["items"]] == [2, 1]


async def test_request_values_win_within_the_type_limits(api: Api, mock_openai: MockOpenAI):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name, own = unique(), upstream()
    await define(
        api,
        admin,
        name,
        default_model="gpt-4o-mini",
        fallbacks=["openai/type-fallback"],
        max_output_tokens=300,
        timeout_seconds=20,
    )
    created = await api.submit(
        user,
        prompt_type=name,
        model=f"openai/{own}",
        max_tokens=100,
        timeout_seconds=5,
        fallbacks=[],
    )
    done = await api.wait_final(user, created["id"])
    assert done["model"] == f"openai/{own}" and done["prompt_type_version"] == 1
    assert done["parameters"] == {"max_tokens": 100, "timeout_seconds": 5}
    assert mock_openai.calls_for(own)[0].body["max_tokens"] == 100

    # Without fallbacks of its own, the request gets the type's.
    created = await api.submit(user, prompt_type=name, model=f"openai/{own}")
    detail = (await api.client.get(f"/ai/prompts/{created['id']}", headers=user)).json()
    assert detail["parameters"]["fallbacks"] == ["openai/type-fallback"]


@pytest.mark.parametrize(
    ("body", "code", "extra"),
    [
        ({"prompt_text": "x" * 101}, "prompt_too_large", {"limit": 100}),
        ({"max_tokens": 301}, "max_tokens_too_large", {"limit": 300}),
        ({"timeout_seconds": 20.5}, "timeout_too_large", {"limit": 20}),
        ({"variables": {}}, "missing_template_variable", {"missing": ["audience"]}),
        (
            {"variables": {"audience": "a", "mood": "b"}},
            "unknown_template_variable",
            {"unknown": ["mood"]},
        ),
    ],
)
async def test_type_limits_are_422(
    api: Api, body: dict[str, Any], code: str, extra: dict[str, Any]
):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()
    await define(
        api,
        admin,
        name,
        template=TEMPLATE,
        default_model="gpt-4o-mini",
        max_prompt_chars=100,
        max_output_tokens=300,
        timeout_seconds=20,
    )
    request = {"prompt_type": name, "prompt_text": "hi", "variables": {"audience": "a"}, **body}
    problem = assert_problem(await post(api, user, **request), 422, code)
    assert problem.items() >= extra.items()
    if code in ("prompt_too_large", "max_tokens_too_large", "timeout_too_large"):
        assert name in problem["detail"] and problem["prompt_type"] == name
    if code == "missing_template_variable":
        assert "'audience'" in problem["detail"]


async def test_prompt_limit_counts_the_rendered_text(api: Api):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()
    await define(
        api, admin, name, template=TEMPLATE, default_model="gpt-4o-mini", max_prompt_chars=50
    )
    problem = assert_problem(
        await post(
            api, user, prompt_type=name, prompt_text="short", variables={"audience": "x" * 40}
        ),
        422,
        "prompt_too_large",
    )
    assert problem["limit"] == 50 and "rendered" in problem["detail"]
    ok = await post(api, user, prompt_type=name, prompt_text="short", variables={"audience": "x"})
    assert ok.status_code == 202, ok.text


async def test_model_is_required_without_a_default(api: Api):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()
    await define(api, admin, name, system_instruction="Be kind.")
    problem = assert_problem(
        await post(api, user, prompt_type=name, prompt_text="hi"), 422, "model_required"
    )
    assert name in problem["detail"]
    # An undefined type has no default either.
    assert_problem(
        await post(api, user, prompt_type=unique("undefined"), prompt_text="hi"),
        422,
        "model_required",
    )


async def test_undefined_type_keeps_todays_behaviour(api: Api, mock_openai: MockOpenAI):
    user = await api.new_user()
    model = upstream()
    created = await api.submit(
        user, model=f"openai/{model}", prompt_type=unique("free"), system_prompt="Own."
    )
    done = await api.wait_final(user, created["id"])
    assert done["prompt_type_version"] is None and done["parameters"] == {"system_prompt": "Own."}
    assert mock_openai.calls_for(model)[0].body["messages"][1]["content"] == "hello"
    problem = assert_problem(
        await post(
            api,
            user,
            model="gpt-4o-mini",
            prompt_type=unique("free"),
            prompt_text="hi",
            variables={"audience": "a"},
        ),
        422,
        "unknown_template_variable",
    )
    assert problem["unknown"] == ["audience"]


async def test_retired_type_is_refused_until_defined_again(api: Api):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()
    await define(api, admin, name, default_model="gpt-4o-mini")
    retired = await api.client.delete(f"/ai/prompt-types/{name}", headers=admin)
    assert retired.status_code == 200
    problem = assert_problem(
        await post(api, user, prompt_type=name, prompt_text="hi", model="gpt-4o-mini"),
        422,
        "prompt_type_retired",
    )
    assert problem["prompt_type_version"] == 2
    await define(api, admin, name, default_model="gpt-4o-mini")
    created = await api.submit(user, prompt_type=name)
    assert created["prompt_type_version"] == 3


@pytest.mark.parametrize(
    "variables",
    [
        {"prompt_text": "x"},
        {"not an identifier": "x"},
        {"a": "x" * 10_001},
        {f"v{i}": "x" for i in range(51)},
        {"a": 1},
    ],
)
async def test_invalid_variables_are_422(api: Api, variables: dict[str, Any]):
    user = await api.new_user()
    problem = assert_problem(
        await post(
            api,
            user,
            model="gpt-4o-mini",
            prompt_type="text",
            prompt_text="hi",
            variables=variables,
        ),
        422,
        "validation_error",
    )
    assert "variables" in problem["detail"]
