"""GET /ai/prompts/: the user's own prompts, newest first, cursor pages, filters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from tests.conftest import Api
from tests.prompts.test_validation import assert_problem


async def _submit_many(api: Api, headers: dict[str, str], count: int, **body: str) -> list[str]:
    ids = []
    for i in range(count):
        created = await api.submit(headers, model="gpt-4o-mini", prompt_text=f"p{i}", **body)
        ids.append(created["id"])
    return ids


async def test_pages_walk_every_prompt_once_newest_first(api: Api):
    headers = await api.new_user()
    ids = await _submit_many(api, headers, 5)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await api.client.get("/ai/prompts/", params=params, headers=headers)
        assert response.status_code == 200
        page = response.json()
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_other_users_prompts_are_invisible(api: Api):
    alice, bob = await api.new_user(), await api.new_user()
    [alice_prompt] = await _submit_many(api, alice, 1)
    bob_list = (await api.client.get("/ai/prompts/", headers=bob)).json()
    assert alice_prompt not in [item["id"] for item in bob_list["items"]]

    as_bob = await api.client.get(f"/ai/prompts/{alice_prompt}", headers=bob)
    missing = await api.client.get(f"/ai/prompts/{uuid.uuid4()}", headers=bob)
    assert_problem(as_bob, 404, "not_found")
    assert as_bob.json() == missing.json()


async def test_filters(api: Api):
    headers = await api.new_user()
    [failed] = await _submit_many(api, headers, 1)
    ok = await api.submit(headers, model="openai/filter-ok", prompt_type="code")
    bad = await api.submit(headers, model="openai/error-500", prompt_type="report")
    await api.wait_final(headers, ok["id"])
    await api.wait_final(headers, bad["id"])
    await api.wait_final(headers, failed)

    async def ids(**params: str) -> set[str]:
        response = await api.client.get("/ai/prompts/", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return {item["id"] for item in response.json()["items"]}

    assert await ids(status="failed") == {bad["id"]}
    assert await ids(model="openai/filter-ok") == {ok["id"]}
    assert await ids(prompt_type="report") == {bad["id"]}
    assert await ids(prompt_type="code", status="completed") == {ok["id"]}

    await asyncio.sleep(0.01)
    now = datetime.now(UTC).isoformat()
    assert await ids(created_after=now) == set()
    assert await ids(created_before=now) == {failed, ok["id"], bad["id"]}
    naive_future = "2999-01-01T00:00:00"
    assert await ids(created_before=naive_future) == {failed, ok["id"], bad["id"]}


async def test_bad_list_parameters_are_422(api: Api):
    headers = await api.new_user()
    for params, code in [
        ({"limit": 101}, "validation_error"),
        ({"limit": 0}, "validation_error"),
        ({"status": "done"}, "validation_error"),
        ({"created_after": "yesterday"}, "validation_error"),
        ({"cursor": "not-a-cursor!"}, "invalid_cursor"),
    ]:
        response = await api.client.get("/ai/prompts/", params=params, headers=headers)
        assert_problem(response, 422, code)
