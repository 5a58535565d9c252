"""Which answers of a limited caller's requests for work carry the RateLimit headers, on the
route and on the fast path alike: its policies (`RateLimit-Policy`) on an error met before
the request is admitted, once its key is known; what its admission says (`RateLimit` too) on
an error met after it, as on its success. A caller without limits gets neither."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.db.base import utcnow
from app.engine.ledger import Account, Standing, period_start
from app.services.limits.governor import policy_headers, rate_headers
from tests.conftest import Api

POLICY = '"key-rpm";q=1000;w=60'
PROMPT = {"prompt_text": "hi", "prompt_type": "text", "model": "gpt-4o-mini"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _limited_key(api: Api, **key: Any) -> dict[str, str]:
    """The headers of a new key (with what `key` says) limited to 1,000 requests a minute."""
    admin = await api.new_user(is_admin=True)
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    user = await api.client.post("/ai/admin/users", json={"email": email}, headers=admin)
    body = {"user_id": user.json()["id"], **key}
    created = (await api.client.post("/ai/admin/keys", json=body, headers=admin)).json()
    limits = await api.client.put(
        f"/ai/admin/limits/key/{created['id']}", json={"rpm": 1000}, headers=admin
    )
    assert limits.status_code == 200, limits.text
    return {"Authorization": f"Bearer {created['key']}"}


def _policies_only(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["RateLimit-Policy"] == POLICY
    assert "RateLimit" not in response.headers


def _admission(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["RateLimit-Policy"] == POLICY
    assert response.headers["RateLimit"].startswith('"key-rpm";r=99')  # (a few used)


def test_the_policies_alone_are_an_admissions_policies():
    accounts = (
        Account("key", uuid.uuid4(), rpm=60, tpm=10_000),
        Account("user", uuid.uuid4(), max_in_flight=3, budget_usd=Decimal(25), default=True),
        Account("team", uuid.uuid4(), budget_usd=Decimal("0.5"), budget_period="week"),
    )
    standings = [
        Standing(
            account,
            requests=1,
            tokens=10,
            in_flight=0,
            window_reset=30.0,
            reserved_usd=Decimal(0),
            spent_usd=Decimal(0),
            period_start=period_start(utcnow(), account.budget_period),
        )
        for account in accounts
    ]
    policies = rate_headers(standings)["RateLimit-Policy"]
    assert policy_headers(accounts) == {"RateLimit-Policy": policies}
    assert '"team-budget";q=50;w=604800;qu="usd-cents"' in policies
    assert policy_headers(()) == {}


async def test_errors_before_admission_carry_the_policies(api: Api, routed: list[list[str]]):
    headers = await _limited_key(api)
    for _ in range(2):  # a new key (the route), then a known one (the fast path first)
        for path, body, status in [
            ("/ai/prompts/", {"prompt_type": "text", "model": 3}, 422),
            ("/v1/chat/completions", {"model": "gpt-4o-mini"}, 400),
            ("/ai/prompts/", PROMPT | {"model": "gpt-4o-mni"}, 422),
            ("/v1/chat/completions", CHAT | {"model": "gpt-4o-mni"}, 404),
            ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ""}, 400),
            ("/v1/embeddings", {"model": "gpt-4o-mini", "input": "hi"}, 400),
        ]:
            _policies_only(await api.client.post(path, json=body, headers=headers), status)
        # A body that is not JSON is refused before the route reads the key: no headers.
        json_type = {"Content-Type": "application/json"}
        garbled = await api.client.post("/ai/prompts/", content=b"{", headers=headers | json_type)
        assert garbled.status_code == 422 and "RateLimit-Policy" not in garbled.headers
        _admission(await api.client.post("/v1/chat/completions", json=CHAT, headers=headers), 200)
    # Once the key was known (after the first), the fast paths handed each invalid request to
    # its route (which called the service again for the unknown models), and took the valid.
    assert routed == [["submit"] * 2, ["chat"] * 2]


async def test_a_model_the_key_may_not_use_carries_the_policies(api: Api):
    headers = await _limited_key(api, allowed_models=["gpt-4o"])
    for _ in range(2):
        chat = await api.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        _policies_only(chat, 403)
        _policies_only(await api.client.post("/ai/prompts/", json=PROMPT, headers=headers), 403)


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_failure_after_admission_carries_the_admission(
    api: Api, routed: list[list[str]], stream: bool
):
    headers = await _limited_key(api)
    body = CHAT | {"model": "openai/error-401", "stream": stream}
    for _ in range(2):  # the route, then the fast path
        response = await api.client.post("/v1/chat/completions", json=body, headers=headers)
        _admission(response, 502)
        assert response.json()["error"]["code"] == "authentication_failed"
    assert routed == [[], ["chat"]]
    embeddings = await api.client.post(
        "/v1/embeddings", json={"model": "openai/error-401", "input": "hi"}, headers=headers
    )
    _admission(embeddings, 502)


async def test_a_failed_insert_after_admission_carries_the_admission(
    api: Api, routed: list[list[str]], monkeypatch: pytest.MonkeyPatch
):
    headers = await _limited_key(api)
    # Made known to the process first, so that the next ones take the fast paths; with an
    # Idempotency-Key, they take the routes.
    _admission(await api.client.post("/ai/prompts/", json=PROMPT, headers=headers), 202)
    _admission(await api.client.post("/v1/chat/completions", json=CHAT, headers=headers), 200)

    async def lost(*_: Any, **__: Any) -> Any:
        raise ConnectionError("the database went away")

    recorder = api.app.state.services.recorder
    monkeypatch.setattr(recorder, "create_prompt", lost)
    monkeypatch.setattr(recorder, "create_claimed", lost)
    for extra in ({}, {"Idempotency-Key": uuid.uuid4().hex}):
        for path, body in [("/ai/prompts/", PROMPT), ("/v1/chat/completions", CHAT)]:
            response = await api.client.post(path, json=body, headers=headers | extra)
            _admission(response, 503)
    # The routes took the first request (a new key) and those with an Idempotency-Key.
    assert routed == [["submit"] * 2, ["chat"]]


async def test_a_replay_carries_the_policies(api: Api):
    key = await _limited_key(api)
    for path, body, status in [("/ai/prompts/", PROMPT, 202), ("/v1/chat/completions", CHAT, 200)]:
        headers = key | {"Idempotency-Key": uuid.uuid4().hex}
        _admission(await api.client.post(path, json=body, headers=headers), status)
        replay = await api.client.post(path, json=body, headers=headers)
        assert replay.headers["Idempotent-Replayed"] == "true"
        _policies_only(replay, status)  # (not admitted again)
        reused = await api.client.post(path, json=body | {"model": "gpt-4o"}, headers=headers)
        _policies_only(reused, 422 if status == 202 else 400)


async def test_a_caller_without_limits_gets_no_rate_headers(api: Api):
    headers = await api.new_user()
    for path, body, status in [
        ("/ai/prompts/", {"prompt_type": "text"}, 422),
        ("/ai/prompts/", PROMPT, 202),
        ("/v1/chat/completions", CHAT | {"model": "openai/error-401"}, 502),
        ("/v1/chat/completions", CHAT | {"model": "gpt-4o-mni"}, 404),
    ]:
        for _ in range(2):  # the route, then the fast path
            response = await api.client.post(path, json=body, headers=headers)
            assert response.status_code == status, response.text
            assert "RateLimit-Policy" not in response.headers
            assert "RateLimit" not in response.headers
