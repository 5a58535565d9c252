"""/ai/prompt-types: admins define versioned policies; everyone reads them; history stays."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.prompt_types.helpers import define, put_type, unique
from tests.prompts.test_validation import assert_problem

POLICY = {
    "description": "Summaries for a named audience.",
    "system_instruction": "You write short summaries.",
    "template": "Summarise for {audience} in {tone} words:\n{prompt_text}",
    "default_model": "gpt-4o-mini",
    "fallbacks": ["openai/backup-model"],
    "max_prompt_chars": 5000,
    "max_output_tokens": 256,
    "timeout_seconds": 30,
}


async def test_put_creates_versions_and_keeps_history(api: Api):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()

    first = await put_type(api, admin, name, **POLICY)
    assert first.status_code == 201, first.text
    v1 = first.json()
    assert v1["name"] == name and v1["version"] == 1 and v1["retired"] is False
    assert v1["variables"] == ["audience", "tone"]
    assert {k: v1[k] for k in POLICY} == POLICY
    assert v1["created_by"] and v1["created_at"]

    second = await put_type(api, admin, name, **{**POLICY, "system_instruction": "Be brief."})
    assert second.status_code == 200, second.text
    assert second.json()["version"] == 2

    # The same policy again changes nothing: PUT is idempotent.
    again = await put_type(api, admin, name, **{**POLICY, "system_instruction": "Be brief."})
    assert again.status_code == 200 and again.json()["version"] == 2

    # Any user reads them.
    current = await api.client.get(f"/ai/prompt-types/{name}", headers=user)
    assert current.status_code == 200
    assert current.json()["version"] == 2 and current.json()["system_instruction"] == "Be brief."
    versions = await api.client.get(f"/ai/prompt-types/{name}/versions", headers=user)
    assert versions.status_code == 200
    assert [(v["version"], v["system_instruction"]) for v in versions.json()] == [
        (1, "You write short summaries."),
        (2, "Be brief."),
    ]
    listed = await api.client.get("/ai/prompt-types", headers=user)
    assert listed.status_code == 200
    [mine] = [t for t in listed.json()["items"] if t["name"] == name]
    assert mine["version"] == 2


async def test_a_field_left_out_is_no_longer_enforced(api: Api):
    admin = await api.new_user(is_admin=True)
    name = unique()
    await define(api, admin, name, **POLICY)
    v2 = await define(api, admin, name, default_model="gpt-4o-mini")
    assert v2["version"] == 2 and v2["template"] is None and v2["max_output_tokens"] is None
    assert v2["variables"] == [] and v2["fallbacks"] is None


async def test_only_admins_write(api: Api):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()
    assert_problem(await put_type(api, user, name, **POLICY), 403, "admin_required")
    assert_problem(await api.client.get(f"/ai/prompt-types/{name}", headers=user), 404, "not_found")
    await define(api, admin, name, **POLICY)
    assert_problem(await put_type(api, user, name, default_model="local"), 403, "admin_required")
    assert_problem(
        await api.client.delete(f"/ai/prompt-types/{name}", headers=user), 403, "admin_required"
    )
    assert (await api.client.get(f"/ai/prompt-types/{name}", headers=user)).json()["version"] == 1
    assert_problem(await api.client.get("/ai/prompt-types"), 401, "missing_api_key")


@pytest.mark.parametrize("field", ["default_model", "fallbacks"])
async def test_models_must_resolve(api: Api, field: str):
    admin = await api.new_user(is_admin=True)
    value = "gpt-4o-mni" if field == "default_model" else ["gpt-4o-mini", "gpt-4o-mni"]
    body = assert_problem(
        await put_type(api, admin, unique(), **{field: value}), 422, "unknown_model"
    )
    assert "gpt-4o-mini" in body["close_matches"]


@pytest.mark.parametrize(
    "template",
    [
        "no prompt text here",
        "{prompt_text} {audience.__class__}",
        "{prompt_text} {items[0]}",
        "{prompt_text} {}",
        "{prompt_text} {0}",
        "{prompt_text} {audience!r}",
        "{prompt_text} {audience:>10}",
        "{prompt_text} {unclosed",
        "{prompt_text} stray }",
    ],
)
async def test_bad_template_is_422(api: Api, template: str):
    admin = await api.new_user(is_admin=True)
    name = unique()
    body = assert_problem(
        await put_type(api, admin, name, template=template), 422, "invalid_template"
    )
    assert body["detail"].startswith("template:")
    assert_problem(
        await api.client.get(f"/ai/prompt-types/{name}", headers=admin), 404, "not_found"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"max_prompt_chars": 0},
        {"max_output_tokens": -1},
        {"timeout_seconds": 0},
        {"timeout_seconds": 601},
        {"fallbacks": ["local"] * 6},
        {"surprise": 1},
        {"max_output_tokens": "512"},
        {"timeout_seconds": True},
        {"fallbacks": ["local", "local"]},
    ],
)
async def test_invalid_definitions_are_422(api: Api, change: dict[str, object]):
    admin = await api.new_user(is_admin=True)
    assert_problem(await put_type(api, admin, unique(), **change), 422, "validation_error")


@pytest.mark.parametrize("name", ["with space", "-leading", "x" * 65, "ünï"])
async def test_type_names_are_checked(api: Api, name: str):
    admin = await api.new_user(is_admin=True)
    assert_problem(await put_type(api, admin, name, **POLICY), 422, "validation_error")


async def test_retire_keeps_history_and_a_put_revives(api: Api):
    admin, user = await api.new_user(is_admin=True), await api.new_user()
    name = unique()
    await define(api, admin, name, **POLICY)

    retired = await api.client.delete(f"/ai/prompt-types/{name}", headers=admin)
    assert retired.status_code == 200, retired.text
    assert retired.json()["version"] == 2 and retired.json()["retired"] is True

    assert_problem(
        await api.client.get(f"/ai/prompt-types/{name}", headers=user), 404, "prompt_type_retired"
    )
    listed = (await api.client.get("/ai/prompt-types", headers=user)).json()["items"]
    assert name not in {t["name"] for t in listed}
    assert_problem(
        await api.client.delete(f"/ai/prompt-types/{name}", headers=admin),
        404,
        "prompt_type_retired",
    )
    versions = (await api.client.get(f"/ai/prompt-types/{name}/versions", headers=user)).json()
    assert [(v["version"], v["retired"]) for v in versions] == [(1, False), (2, True)]

    revived = await put_type(api, admin, name, **POLICY)
    assert revived.status_code == 200 and revived.json()["version"] == 3
    current = await api.client.get(f"/ai/prompt-types/{name}", headers=user)
    assert current.json()["version"] == 3 and current.json()["retired"] is False


async def test_unknown_type_is_404(api: Api):
    user = await api.new_user()
    for path in (f"/ai/prompt-types/{unique()}", f"/ai/prompt-types/{unique()}/versions"):
        assert_problem(await api.client.get(path, headers=user), 404, "not_found")
    admin = await api.new_user(is_admin=True)
    assert_problem(
        await api.client.delete(f"/ai/prompt-types/{unique()}", headers=admin), 404, "not_found"
    )


async def test_openapi_documents_the_routes(api: Api):
    spec = (await api.client.get("/openapi.json")).json()
    paths = spec["paths"]
    operations = [
        paths["/ai/prompt-types"]["get"],
        paths["/ai/prompt-types/{name}"]["get"],
        paths["/ai/prompt-types/{name}"]["put"],
        paths["/ai/prompt-types/{name}"]["delete"],
        paths["/ai/prompt-types/{name}/versions"]["get"],
    ]
    for operation in operations:
        assert operation["summary"] and operation["description"]
        assert operation["tags"] == ["prompt-types"] and "401" in operation["responses"]
    assert {"201", "403", "409", "422"} <= set(paths["/ai/prompt-types/{name}"]["put"]["responses"])
    definition = spec["components"]["schemas"]["PromptTypeDefinition"]
    assert definition["additionalProperties"] is False
    assert all(field.get("description") for field in definition["properties"].values())
