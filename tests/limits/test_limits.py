"""Rate limits and budgets through the routes a client calls, on every backend (SQLite and
PostgreSQL embedded, Celery): the admin sets them, a request past one gets a 429 with
`Retry-After` and the RateLimit headers (OpenAI's shape under /v1), on the route and on the
fast path alike, and every way a prompt ends gives back what it held."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from app.db.models import LimitUsage, Reservation
from tests.conftest import Api


async def _user_with_key(
    api: Api, admin: dict[str, str], **key: Any
) -> tuple[str, str, dict[str, str]]:
    """(user id, key id, headers) of a new user and key."""
    user = await api.call(
        admin, "POST", "/ai/admin/users", 201, email=f"{uuid.uuid4().hex[:10]}@example.com"
    )
    created = await api.call(admin, "POST", "/ai/admin/keys", 201, user_id=user["id"], **key)
    return user["id"], created["id"], {"Authorization": f"Bearer {created['key']}"}


async def _usage(api: Api, scope: str, subject: str) -> LimitUsage | None:
    async with api.sessions() as session:
        return await session.get(LimitUsage, (scope, uuid.UUID(subject)))


async def _held(api: Api, prompt_id: str) -> int:
    async with api.sessions() as session:
        rows = await session.scalars(
            select(Reservation).where(Reservation.prompt_id == uuid.UUID(prompt_id))
        )
        return len(list(rows))


async def _until(probe: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _fresh_minute(margin: float = 6.0) -> None:
    """Start a per-minute test early enough in a minute that it ends within it."""
    second = time.time() % 60
    if second > 60 - margin:
        await asyncio.sleep(60 - second + 0.2)


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_requests_per_minute_on_both_endpoints_and_the_fast_path(
    api: Api, routed: list[list[str]]
):
    admin = await api.new_user(is_admin=True)
    _, key_id, headers = await _user_with_key(api, admin)
    limit = await api.call(admin, "PUT", f"/ai/admin/limits/key/{key_id}", 200, rpm=4)
    assert limit["rpm"] == 4 and limit["scope"] == "key" and limit["subject_id"] == key_id
    await _fresh_minute()
    seen = []
    # The first of each endpoint goes through its route (the key is new to the process), the
    # others through the fast path (the key is known by then).
    for path, body in [
        ("/ai/prompts/", {"prompt_text": "hello", "prompt_type": "text", "model": "gpt-4o-mini"}),
        ("/v1/chat/completions", _chat()),
        ("/ai/prompts/", {"prompt_text": "hello", "prompt_type": "text", "model": "gpt-4o-mini"}),
        ("/v1/chat/completions", _chat(stream=True)),
    ]:
        response = await api.client.post(path, json=body, headers=headers)
        assert response.status_code in (200, 202), response.text
        assert response.headers["RateLimit-Policy"] == '"key-rpm";q=4;w=60'
        seen.append(response.headers["RateLimit"])
    assert [s.split(";")[1] for s in seen] == ["r=3", "r=2", "r=1", "r=0"]
    # Only the first went through a route: the others, headers and all, were the fast path's.
    assert routed == [["submit"], []]

    refused = await api.client.post(
        "/ai/prompts/",
        json={"prompt_text": "x", "prompt_type": "text", "model": "gpt-4o-mini"},
        headers=headers,
    )
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "rate_limited" and problem["limit"] == 4
    assert problem["scope"] == "key" and "4 requests per minute" in problem["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit"].startswith('"key-rpm";r=0;t=')

    openai = await api.client.post("/v1/chat/completions", json=_chat(), headers=headers)
    assert openai.status_code == 429
    error = openai.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "Retry-After" in openai.headers and "RateLimit-Policy" in openai.headers
    usage = await _usage(api, "key", key_id)
    assert usage is not None and usage.window_requests == 4  # refusals charged nothing
    # The fast path refused them too, and handed them to the routes, which answered.
    assert routed == [["submit", "submit"], ["chat"]]


async def test_budget_reserves_settles_and_refuses(api: Api):
    admin = await api.new_user(is_admin=True)
    user_id, _, headers = await _user_with_key(api, admin)
    # gpt-4o-mini: $0.15 / $0.60 per million. "hi" with max_tokens 1000 reserves
    # (2 + 4) x 0.15e-6 + 1000 x 0.6e-6 = $0.0006009; the budget has room for two of them.
    await api.call(
        admin, "PUT", f"/ai/admin/limits/user/{user_id}", 200,
        budget_usd="0.0013", budget_period="day",
    )  # fmt: skip
    first = await api.client.post(
        "/v1/chat/completions", json=_chat(max_tokens=1000), headers=headers
    )
    assert first.status_code == 200, first.text
    assert '"user-budget";q=0;w=86400;qu="usd-cents"' in first.headers["RateLimit-Policy"]
    prompt_id = first.headers["X-Prompt-Id"]
    await _until(lambda: _no_reservations(api, prompt_id))
    usage = await _usage(api, "user", user_id)
    assert usage is not None and usage.reserved_usd == 0 and usage.in_flight == 0
    detail = await api.call(headers, "GET", f"/ai/prompts/{prompt_id}", 200)
    spent = Decimal(detail["response"]["cost_usd"])
    assert spent > 0 and usage.spent_usd == spent  # settled to the real cost

    # A prompt that hangs holds its reservation: with its fallback it may run on gpt-4o-mini,
    # so it reserves that model's most for "hello", (5 + 4) x 0.15e-6 + 1000 x 0.6e-6 =
    # $0.00060135; then a request of max_tokens 1200 ($0.0007209) has no room left.
    hanging = await api.submit(
        headers, model="openai/hang-budget", fallbacks=["gpt-4o-mini"], max_tokens=1000
    )
    assert await _held(api, hanging["id"]) == 1
    big = await api.client.post(
        "/v1/chat/completions", json=_chat(max_tokens=1200), headers=headers
    )
    assert big.status_code == 429
    assert big.json()["error"]["code"] == "insufficient_quota"
    assert big.json()["error"]["type"] == "insufficient_quota"
    problem = await api.client.post(
        "/ai/prompts/",
        json={
            "prompt_text": "hi",
            "prompt_type": "text",
            "model": "gpt-4o-mini",
            "max_tokens": 1200,
        },
        headers=headers,
    )
    assert problem.status_code == 429 and problem.json()["code"] == "budget_exceeded"
    assert int(problem.headers["Retry-After"]) <= 86_400
    assert problem.json()["budget_usd"] == "0.0013"
    assert Decimal(problem.json()["reserved_usd"]) == Decimal("0.00060135")

    budgets = await api.call(headers, "GET", "/ai/usage/budgets", 200)
    (mine,) = [b for b in budgets["items"] if b["subject_id"] == user_id]
    assert mine["period"] == "day" and Decimal(mine["spent_usd"]) == spent
    assert mine["in_flight"] == 1
    # Only its user (and an admin) sees it.
    _, _, outsider = await _user_with_key(api, admin)
    theirs = await api.call(outsider, "GET", "/ai/usage/budgets", 200)
    assert all(b["subject_id"] != user_id for b in theirs["items"])
    everyone = await api.call(admin, "GET", "/ai/usage/budgets", 200)
    assert [b["budget_usd"] for b in everyone["items"] if b["subject_id"] == user_id] == ["0.0013"]

    # Cancelling the hanging prompt gives its place back.
    await _cancel(api, headers, hanging["id"])
    await _until(lambda: _no_reservations(api, hanging["id"]))
    usage = await _usage(api, "user", user_id)
    assert usage is not None and usage.in_flight == 0 and usage.reserved_usd == 0
    again = await api.client.post(
        "/v1/chat/completions", json=_chat(max_tokens=1200), headers=headers
    )
    assert again.status_code == 200, again.text


async def _cancel(api: Api, headers: dict[str, str], prompt_id: str) -> None:
    """Cancel (at once here, or by its runner in a worker: 200 or 202)."""
    response = await api.client.post(f"/ai/prompts/{prompt_id}/cancel", headers=headers)
    assert response.status_code in (200, 202), response.text


async def _no_reservations(api: Api, prompt_id: str) -> bool:
    return await _held(api, prompt_id) == 0


async def test_prompts_in_flight_and_a_failed_prompt_releases(api: Api):
    admin = await api.new_user(is_admin=True)
    _, key_id, headers = await _user_with_key(api, admin)
    await api.call(admin, "PUT", f"/ai/admin/limits/key/{key_id}", 200, max_in_flight=1)
    hanging = await api.submit(headers, model="openai/hang-in-flight")
    refused = await api.client.post("/v1/chat/completions", json=_chat(), headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["RateLimit"] == '"key-in-flight";r=0'
    await _cancel(api, headers, hanging["id"])
    await _until(lambda: _no_reservations(api, hanging["id"]))

    failing = await api.submit(headers, model="openai/error-400-in-flight")
    final = await api.wait_final(headers, failing["id"])
    assert final["status"] == "failed"
    await _until(lambda: _no_reservations(api, failing["id"]))
    ok = await api.client.post("/v1/chat/completions", json=_chat(), headers=headers)
    assert ok.status_code == 200, ok.text
    embeddings = await api.client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"}, headers=headers
    )
    assert embeddings.status_code == 200, embeddings.text
    assert embeddings.headers["RateLimit"] == '"key-in-flight";r=0'
    usage = await _usage(api, "key", key_id)
    await _until(lambda: _in_flight_is(api, key_id, 0))
    assert usage is not None


async def _in_flight_is(api: Api, key_id: str, n: int) -> bool:
    usage = await _usage(api, "key", key_id)
    return usage is not None and usage.in_flight == n


async def test_team_limits_and_tokens_per_minute(api: Api):
    admin = await api.new_user(is_admin=True)
    team = await api.call(admin, "POST", "/ai/admin/teams", 201, name=f"t-{uuid.uuid4().hex[:8]}")
    user_id, _, _ = await _user_with_key(api, admin)
    await api.call(
        admin, "PUT", f"/ai/admin/teams/{team['id']}/members/{user_id}", 200, role="member"
    )
    created = await api.call(
        admin, "POST", "/ai/admin/keys", 201, user_id=user_id, team_id=team["id"]
    )
    headers = {"Authorization": f"Bearer {created['key']}"}
    await api.call(admin, "PUT", f"/ai/admin/limits/team/{team['id']}", 200, tpm=300)
    await _fresh_minute()
    # "hi" counts 1 token of prompt, and its max_tokens.
    ok = await api.client.post("/v1/chat/completions", json=_chat(max_tokens=199), headers=headers)
    assert ok.status_code == 200 and ok.headers["RateLimit"].startswith('"team-tpm";r=100;')
    refused = await api.client.post(
        "/v1/chat/completions", json=_chat(max_tokens=100), headers=headers
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "300 tokens per minute" in refused.json()["error"]["message"]


async def test_bad_limits_and_who_may_set_them(api: Api):
    admin = await api.new_user(is_admin=True)
    user_id, key_id, headers = await _user_with_key(api, admin)
    for body in ({"rpm": -1}, {"rpm": 0}, {"budget_usd": "-3"}, {"budget_period": "year"},
                 {"tpm": 10**12}, {"warn_at": 2}, {"rpm": "many"}, {"burst": 3}):  # fmt: skip
        response = await api.client.put(f"/ai/admin/limits/key/{key_id}", json=body, headers=admin)
        assert response.status_code == 422, (body, response.text)
    missing = await api.client.put(
        f"/ai/admin/limits/team/{uuid.uuid4()}", json={"rpm": 1}, headers=admin
    )
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_team"
    wrong = await api.client.put(f"/ai/admin/limits/org/{user_id}", json={"rpm": 1}, headers=admin)
    assert wrong.status_code == 422
    forbidden = await api.client.put(
        f"/ai/admin/limits/user/{user_id}", json={"rpm": 1}, headers=headers
    )
    assert forbidden.status_code == 403
    none = await api.client.delete(f"/ai/admin/limits/user/{user_id}", headers=admin)
    assert none.status_code == 404 and none.json()["code"] == "no_limits"

    big = await api.call(admin, "PUT", f"/ai/admin/limits/key/{key_id}", 200, tpm=10**10)
    assert big["tpm"] == 10**10  # (more than 32 bits)
    await api.call(admin, "PUT", f"/ai/admin/limits/user/{user_id}", 200, rpm=5, budget_usd="2.50")
    await api.call(admin, "PUT", f"/ai/admin/limits/user/{user_id}", 200, rpm=6)
    await api.call(admin, "DELETE", f"/ai/admin/limits/user/{user_id}", 204)
    audit = await api.call(
        admin, "GET", f"/ai/admin/audit?target_type=user_limits&target_id={user_id}", 200
    )
    entries = [(e["action"], e["before"], e["after"]) for e in reversed(audit["items"])]
    assert [e[0] for e in entries] == ["limits.set", "limits.set", "limits.clear"]
    assert entries[0][1] is None and entries[0][2]["budget_usd"] == "2.50"
    assert entries[1][1]["rpm"] == 5 and entries[1][2] == entries[1][2] | {
        "rpm": 6,
        "budget_usd": None,
    }
    assert entries[2][2] is None
    listed = await api.call(admin, "GET", "/ai/admin/limits", 200)
    assert all(item["subject_id"] != user_id for item in listed["items"])


async def test_a_request_larger_than_a_whole_limit_is_refused_not_told_to_wait(api: Api):
    """Waiting would never let it through: a client must not be told to retry it."""
    admin = await api.new_user(is_admin=True)
    user_id, _, headers = await _user_with_key(api, admin)
    # gpt-4o-mini: "hi" with max_tokens 400 counts 401 tokens and may cost more than
    # 400 x 0.6e-6 = $0.00024 (see the budget test).
    await api.call(
        admin, "PUT", f"/ai/admin/limits/user/{user_id}", 200,
        tpm=500, budget_usd="0.0002", budget_period="day",
    )  # fmt: skip
    tokens = await api.client.post(
        "/v1/chat/completions", json=_chat(max_tokens=600), headers=headers
    )
    assert tokens.status_code == 400, tokens.text
    error = tokens.json()["error"]
    assert error["code"] == "request_exceeds_limit"
    assert error["type"] == "invalid_request_error"
    assert "500 tokens per minute" in error["message"] and "Retry-After" not in tokens.headers
    assert '"user-tpm";q=500' in tokens.headers["RateLimit-Policy"]
    money = await api.client.post(
        "/ai/prompts/",
        json={
            "prompt_text": "hi",
            "prompt_type": "text",
            "model": "gpt-4o-mini",
            "max_tokens": 499,
        },
        headers=headers,
    )
    assert money.status_code == 422, money.text
    problem = money.json()
    assert problem["code"] == "request_exceeds_limit" and problem["limit_name"] == "budget"
    assert problem["budget_usd"] == "0.0002" and Decimal(problem["cost_usd"]) > Decimal("0.0002")
    assert "whole budget of $0.0002 per day" in problem["detail"]
    # Nothing was recorded or charged; a request that fits is served.
    listed = await api.call(headers, "GET", "/ai/prompts/", 200)
    assert listed["items"] == []
    usage = await _usage(api, "user", user_id)
    assert usage is None or (usage.window_requests == 0 and usage.in_flight == 0)
    ok = await api.client.post("/v1/chat/completions", json=_chat(max_tokens=100), headers=headers)
    assert ok.status_code == 200, ok.text
