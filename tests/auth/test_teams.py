"""Teams and roles, through the admin API and the routes a user would call: who sees which
prompt (their own; a team's as its owner or viewer; all as an admin), who may cancel it, keys
scoped to a team and to models, and the checks on what an admin gives."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Api


@dataclass
class Person:
    id: str
    headers: dict[str, str]


async def _person(
    api: Api, admin: dict[str, str], *, team: str | None = None, **key: Any
) -> Person:
    user = await api.call(
        admin, "POST", "/ai/admin/users", 201, email=f"{uuid.uuid4().hex[:10]}@example.com"
    )
    return Person(user["id"], await _key(api, admin, user["id"], team=team, **key))


async def _key(
    api: Api, admin: dict[str, str], user_id: str, *, team: str | None = None, **key: Any
) -> dict[str, str]:
    created = await api.call(
        admin, "POST", "/ai/admin/keys", 201, user_id=user_id, team_id=team, **key
    )
    assert created["team_id"] == team and created["key"].startswith("pm_")
    return {"Authorization": f"Bearer {created['key']}"}


async def _member(api: Api, admin: dict[str, str], team: str, user: str, role: str) -> None:
    member = await api.call(admin, "PUT", f"/ai/admin/teams/{team}/members/{user}", 200, role=role)
    assert member == {"user_id": user, "role": role, "created_at": member["created_at"]}


async def _team(api: Api, admin: dict[str, str]) -> str:
    name = f"team-{uuid.uuid4().hex[:8]}"
    team = await api.call(admin, "POST", "/ai/admin/teams", 201, name=name)
    assert team["name"] == name and team["members"] == []
    return str(team["id"])


async def _with_team(api: Api, admin: dict[str, str], team: str, role: str) -> Person:
    """A user with `role` in `team`, and a key of theirs (scoped to the team if they make
    prompts in it)."""
    user = await api.call(
        admin, "POST", "/ai/admin/users", 201, email=f"{uuid.uuid4().hex[:10]}@example.com"
    )
    await _member(api, admin, team, user["id"], role)
    scope = team if role in ("owner", "member") else None
    return Person(user["id"], await _key(api, admin, user["id"], team=scope))


def _ids(page: dict[str, Any]) -> set[str]:
    return {item["id"] for item in page["items"]}


async def _list(api: Api, person: Person, **params: str) -> set[str]:
    response = await api.client.get("/ai/prompts/", params=params, headers=person.headers)
    assert response.status_code == 200, response.text
    return _ids(response.json())


async def _status(api: Api, person: Person, prompt_id: str) -> int:
    return (await api.client.get(f"/ai/prompts/{prompt_id}", headers=person.headers)).status_code


async def test_roles_decide_who_sees_and_cancels_which_prompt(api: Api):
    admin = await api.new_user(is_admin=True)
    research, sales = await _team(api, admin), await _team(api, admin)
    owner = await _with_team(api, admin, research, "owner")
    member = await _with_team(api, admin, research, "member")
    viewer = await _with_team(api, admin, research, "viewer")
    seller = await _with_team(api, admin, sales, "member")
    outsider = await _person(api, admin)

    # Prompts that wait (a model that hangs): each stays cancellable.
    made = {}
    for name, person in {"member": member, "owner": owner, "seller": seller}.items():
        made[name] = await api.submit(person.headers, model="openai/hang-teams")
    made["own"] = await api.submit(member.headers, model="openai/hang-teams")
    assert made["member"]["team_id"] == research and made["member"]["user_id"] == member.id
    assert made["member"]["api_key_id"] is not None
    assert made["seller"]["team_id"] == sales
    outsiders = await api.submit(outsider.headers, model="openai/hang-teams")
    assert outsiders["team_id"] is None

    mine = {made["member"]["id"], made["own"]["id"]}
    team = mine | {made["owner"]["id"]}
    assert await _list(api, member) == mine  # a member: their own
    assert await _list(api, owner) == team  # an owner: the team's
    assert await _list(api, viewer) == team  # a viewer too
    assert await _list(api, viewer, team_id=sales) == set()  # not another team's
    assert await _list(api, owner, user_id=member.id) == mine
    assert await _list(api, outsider) == {outsiders["id"]}
    everything = await _list(api, Person("", admin), team_id=research)
    assert everything == team  # an admin: any team's

    seller_prompt = made["seller"]["id"]
    for person in (owner, member, viewer, outsider):
        assert await _status(api, person, seller_prompt) == 404  # as missing as a missing one
    assert await _status(api, Person("", admin), seller_prompt) == 200
    assert await _status(api, viewer, made["member"]["id"]) == 200
    assert await _status(api, member, made["owner"]["id"]) == 404  # a member: own only
    events = await api.client.get(f"/ai/prompts/{seller_prompt}/events", headers=viewer.headers)
    assert events.status_code == 404

    # A viewer only reads; an owner cancels the team's; nobody cancels another team's.
    refused = await api.client.post(
        f"/ai/prompts/{made['member']['id']}/cancel", headers=viewer.headers
    )
    assert refused.status_code == 403 and refused.json()["code"] == "role_forbidden"
    hidden = await api.client.post(f"/ai/prompts/{seller_prompt}/cancel", headers=owner.headers)
    assert hidden.status_code == 404
    for prompt in (made["member"], made["own"]):
        cancelled = await api.client.post(
            f"/ai/prompts/{prompt['id']}/cancel", headers=owner.headers
        )
        assert cancelled.status_code in (200, 202), cancelled.text
    for person, prompt in ((owner, made["owner"]), (seller, made["seller"])):
        done = await api.client.post(f"/ai/prompts/{prompt['id']}/cancel", headers=person.headers)
        assert done.status_code in (200, 202), done.text
    assert (
        await api.client.post(f"/ai/prompts/{outsiders['id']}/cancel", headers=outsider.headers)
    ).status_code in (200, 202)


async def test_a_key_limited_to_models_is_refused_others_on_every_path(api: Api):
    admin = await api.new_user(is_admin=True)
    limited = await _person(api, admin, allowed_models=["openai/allowed-model"])
    body = {"messages": [{"role": "user", "content": "hi"}]}

    # /v1 (the fast path takes the key once it is known: ask twice) and /ai/prompts.
    for _ in range(2):
        chat = await api.client.post(
            "/v1/chat/completions", json={"model": "openai/other", **body}, headers=limited.headers
        )
        assert chat.status_code == 403, chat.text
        error = chat.json()["error"]
        assert error["code"] == "model_not_allowed" and error["type"] == "permission_error"
        assert "openai/allowed-model" in error["message"]
        prompt = await api.client.post(
            "/ai/prompts/",
            json={"model": "openai/other", "prompt_text": "hi", "prompt_type": "text"},
            headers=limited.headers,
        )
        assert prompt.status_code == 403 and prompt.json()["code"] == "model_not_allowed"
    embeddings = await api.client.post(
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hi"},
        headers=limited.headers,
    )
    assert embeddings.status_code == 403
    allowed = await api.client.post(
        "/v1/chat/completions",
        json={"model": "openai/allowed-model", **body},
        headers=limited.headers,
    )
    assert allowed.status_code == 200, allowed.text
    page = (await api.client.get("/ai/prompts/", headers=limited.headers)).json()
    assert [item["model"] for item in page["items"]] == ["openai/allowed-model"]


async def test_what_an_admin_gives_is_checked(api: Api):
    admin = await api.new_user(is_admin=True)
    team = await _team(api, admin)
    viewer = await _with_team(api, admin, team, "viewer")
    outsider = await _person(api, admin)

    async def refused(status: int, code: str, **key: Any) -> None:
        response = await api.client.post("/ai/admin/keys", json=key, headers=admin)
        assert response.status_code == status, response.text
        assert response.json()["code"] == code

    await refused(422, "not_a_team_member", user_id=viewer.id, team_id=team)
    await refused(422, "not_a_team_member", user_id=outsider.id, team_id=team)
    await refused(404, "unknown_team", user_id=outsider.id, team_id=str(uuid.uuid4()))
    await refused(404, "unknown_user", user_id=str(uuid.uuid4()))
    await refused(422, "unknown_model", user_id=outsider.id, allowed_models=["no-such-model"])
    await refused(422, "invalid_expiry", user_id=outsider.id, expires_at="2020-01-01T00:00:00Z")
    await refused(422, "validation_error", user_id=outsider.id, surprise=True)

    role = await api.client.put(
        f"/ai/admin/teams/{team}/members/{outsider.id}", json={"role": "boss"}, headers=admin
    )
    assert role.status_code == 422
    taken = await api.client.post(
        "/ai/admin/teams",
        json={"name": (await api.call(admin, "GET", f"/ai/admin/teams/{team}", 200))["name"]},
        headers=admin,
    )
    assert taken.status_code == 409 and taken.json()["code"] == "team_taken"

    # Not an admin: 403 on every admin route, writes and reads alike.
    for method, path, body in (
        ("GET", "/ai/admin/teams", None),
        ("POST", "/ai/admin/teams", {"name": "x"}),
        ("GET", "/ai/admin/keys", None),
        ("POST", "/ai/admin/keys", {"user_id": viewer.id}),
        ("PUT", f"/ai/admin/teams/{team}/members/{viewer.id}", {"role": "owner"}),
    ):
        response = await api.client.request(method, path, json=body, headers=viewer.headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["code"] == "admin_required"


async def test_leaving_a_team_or_a_revocation_stops_the_key(api: Api):
    admin = await api.new_user(is_admin=True)
    team = await _team(api, admin)
    member = await _with_team(api, admin, team, "member")
    await api.call(admin, "DELETE", f"/ai/admin/teams/{team}/members/{member.id}", 204)
    response = await api.client.get("/ai/prompts/", headers=member.headers)
    assert response.status_code == 401 and response.json()["code"] == "key_team_left"

    other = await _person(api, admin, description="CI runner")
    assert (await api.client.get("/ai/prompts/", headers=other.headers)).status_code == 200
    [key] = (await api.call(admin, "GET", f"/ai/admin/keys?user_id={other.id}", 200))["items"]
    assert key["description"] == "CI runner" and "key" not in key
    revoked = await api.call(admin, "POST", f"/ai/admin/keys/{key['id']}/revoke", 200)
    assert revoked["revoked_at"] is not None
    # At once on this process, though the key was verified (and cached) a moment ago.
    response = await api.client.get("/ai/prompts/", headers=other.headers)
    assert response.status_code == 401 and response.json()["code"] == "revoked_api_key"


@pytest.mark.parametrize("role", ["owner", "member", "viewer"])
async def test_the_team_lists_its_members_and_roles(api: Api, role: str):
    admin = await api.new_user(is_admin=True)
    team = await _team(api, admin)
    person = await _with_team(api, admin, team, role)
    read = await api.call(admin, "GET", f"/ai/admin/teams/{team}", 200)
    assert [(m["user_id"], m["role"]) for m in read["members"]] == [(person.id, role)]
    listed = await api.call(admin, "GET", "/ai/admin/teams", 200)
    assert team in {t["id"] for t in listed["items"]}


async def test_every_administrative_change_is_in_the_audit_log_without_secrets(api: Api):
    admin = await api.new_user(is_admin=True)
    admin_email = (await api.client.get("/ai/admin/users", headers=admin)).json()["items"]
    team = await _team(api, admin)
    person = await _with_team(api, admin, team, "member")
    await _member(api, admin, team, person.id, "owner")  # a role changed
    [key] = (await api.call(admin, "GET", f"/ai/admin/keys?user_id={person.id}", 200))["items"]
    await api.call(admin, "POST", f"/ai/admin/keys/{key['id']}/revoke", 200)
    type_name = f"audited-{uuid.uuid4().hex[:8]}"
    defined = await api.client.put(
        f"/ai/prompt-types/{type_name}", json={"description": "v1"}, headers=admin
    )
    assert defined.status_code == 201, defined.text
    hook = await api.client.post(
        "/webhooks",
        json={"url": "https://example.com/audit", "events": ["prompt.completed"]},
        headers=person.headers,
    )
    # (the key was revoked: the user's own webhook is made with a fresh key of theirs)
    assert hook.status_code == 401
    fresh = await _key(api, admin, person.id)
    hook = await api.client.post(
        "/webhooks",
        json={"url": "https://example.com/audit", "events": ["prompt.completed"]},
        headers=fresh,
    )
    assert hook.status_code == 201, hook.text
    assert (await api.client.delete(f"/webhooks/{hook.json()['id']}", headers=fresh)).status_code
    assert hook.json()["secret"]

    async def entries(**params: str) -> list[dict[str, Any]]:
        response = await api.client.get("/ai/admin/audit", params=params, headers=admin)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    team_log = await entries(target_type="team", target_id=team)
    assert [e["action"] for e in team_log] == [
        "team.member.set",
        "team.member.set",
        "team.create",
    ]  # newest first
    assert team_log[0]["before"]["role"] == "member" and team_log[0]["after"]["role"] == "owner"
    assert team_log[1]["before"] is None
    emails = {u["email"] for u in admin_email}
    assert all(e["actor"] in emails for e in team_log)  # the admin who did it

    key_log = await entries(target_type="key", target_id=key["id"])
    assert [e["action"] for e in key_log] == ["key.revoke", "key.create"]
    assert key_log[0]["before"]["revoked_at"] is None and key_log[0]["after"]["revoked_at"]
    assert key_log[1]["after"]["team_id"] == team
    [typed] = await entries(target_type="prompt_type", target_id=type_name)
    assert typed["action"] == "prompt_type.define" and typed["after"]["description"] == "v1"
    hook_log = await entries(target_type="webhook", target_id=hook.json()["id"])
    assert [e["action"] for e in hook_log] == ["webhook.delete", "webhook.create"]
    assert hook_log[0]["actor_id"] == person.id

    # Never a secret: no key, key hash or webhook secret anywhere in the log.
    everything = (
        await api.client.get("/ai/admin/audit", params={"limit": 200}, headers=admin)
    ).text
    for secret in (
        fresh["Authorization"].removeprefix("Bearer "),
        person.headers["Authorization"].removeprefix("Bearer "),
        hook.json()["secret"],
    ):
        assert secret not in everything
    assert "key_hash" not in everything and "sealed_secret" not in everything

    # Pages, newest first, and only admins read it.
    first = (
        await api.client.get(
            "/ai/admin/audit", params={"target_id": team, "limit": 2}, headers=admin
        )
    ).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = (
        await api.client.get(
            "/ai/admin/audit",
            params={"target_id": team, "limit": 2, "cursor": first["next_cursor"]},
            headers=admin,
        )
    ).json()
    assert [e["action"] for e in rest["items"]] == ["team.create"] and rest["next_cursor"] is None
    refused = await api.client.get("/ai/admin/audit", headers=fresh)
    assert refused.status_code == 403 and refused.json()["code"] == "admin_required"
    bad = await api.client.get("/ai/admin/audit", params={"cursor": "nope"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
