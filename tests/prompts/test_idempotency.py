"""`Idempotency-Key` on `POST /ai/prompts/`: a retried request gets the prompt the first one
created; no second row, no second provider call."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from app.db.base import utcnow
from app.db.models import IdempotencyKey, PromptRequest
from app.engine.sweeper import Sweeper
from tests.conftest import Api
from tests.mocks.openai_server import MockOpenAI


def _body(upstream: str, **fields: Any) -> dict[str, Any]:
    return {"model": f"openai/{upstream}", "prompt_type": "text", "prompt_text": "hi", **fields}


async def _post(
    api: Api, headers: dict[str, str], key: str | bytes | None, body: dict[str, Any]
) -> httpx.Response:
    sent: dict[str, str | bytes] = dict(headers)
    if key is not None:
        sent["Idempotency-Key"] = key
    return await api.client.post("/ai/prompts/", json=body, headers=sent)


async def _rows(api: Api, model: str) -> int:
    async with api.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(PromptRequest).where(PromptRequest.model == model)
        )
    return int(count or 0)


async def _key_row(api: Api, prompt_id: str) -> IdempotencyKey | None:
    async with api.sessions() as session:
        row: IdempotencyKey | None = await session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.prompt_id == uuid.UUID(prompt_id))
        )
    return row


async def _age(api: Api, prompt_id: str) -> None:
    """Make the key that created this prompt expired."""
    async with api.sessions() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.prompt_id == uuid.UUID(prompt_id))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()


def _upstream() -> str:
    return f"idem-{uuid.uuid4().hex[:10]}"


async def test_same_key_same_body_replays_the_first_prompt(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    upstream, key = _upstream(), str(uuid.uuid4())
    body = _body(upstream, temperature=0.5, metadata={"team": "a"})

    first = await _post(api, headers, key, body)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    created = first.json()
    await api.wait_final(headers, created["id"])

    # The same request again, its JSON written differently (field order, spacing).
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    second = await api.client.post(
        "/ai/prompts/",
        content=reordered,
        headers={**headers, "Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert second.status_code == 202, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    replayed = second.json()
    assert replayed["id"] == created["id"]
    assert replayed.keys() == created.keys()
    assert replayed["status"] == "completed"  # the prompt as it stands now

    await asyncio.sleep(0.2)  # a second execution, if there were one, would have started
    assert await _rows(api, body["model"]) == 1
    assert len(mock_openai.calls_for(upstream)) == 1

    row = await _key_row(api, created["id"])
    assert row is not None and row.key == key
    ttl = row.expires_at - row.created_at
    assert ttl == timedelta(seconds=api.app.state.settings.idempotency_key_ttl_seconds)


async def test_same_key_with_a_different_body_is_a_422(api: Api):
    headers = await api.new_user()
    upstream, key = _upstream(), str(uuid.uuid4())
    first = await _post(api, headers, key, _body(upstream))
    assert first.status_code == 202, first.text

    other = await _post(api, headers, key, _body(upstream, prompt_text="something else"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    problem = other.json()
    assert problem["code"] == "idempotency_key_reused"
    assert "different request" in problem["detail"]

    page = (await api.client.get("/ai/prompts/", headers=headers)).json()
    assert [p["id"] for p in page["items"]] == [first.json()["id"]]
    assert page["items"][0]["prompt_text"] == "hi"


async def test_keys_are_per_user(api: Api):
    alice, bob = await api.new_user(), await api.new_user()
    body, key = _body(_upstream()), str(uuid.uuid4())
    mine = await _post(api, alice, key, body)
    theirs = await _post(api, bob, key, body)
    assert mine.status_code == theirs.status_code == 202
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    # Bob's request did not reach Alice's prompt, nor the other way round.
    peek = await api.client.get(f"/ai/prompts/{mine.json()['id']}", headers=bob)
    assert peek.status_code == 404


async def test_concurrent_duplicates_create_one_prompt(api: Api, mock_openai: MockOpenAI):
    headers = await api.new_user()
    upstream, key = _upstream(), str(uuid.uuid4())
    body = _body(upstream)

    responses = await asyncio.gather(*(_post(api, headers, key, body) for _ in range(20)))

    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1, ids
    in_flight = [r for r in responses if r.status_code == 409]
    for r in in_flight:
        assert r.json()["code"] == "idempotency_key_in_flight"
        assert r.headers["retry-after"] == "1"
    assert len(in_flight) + sum(r.status_code == 202 for r in responses) == 20
    assert len(in_flight) < 10, [r.status_code for r in responses]
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1 + len(in_flight)

    [prompt_id] = ids
    done = await api.wait_final(headers, prompt_id)
    assert done["status"] == "completed"
    await asyncio.sleep(0.2)
    assert await _rows(api, body["model"]) == 1
    assert len(mock_openai.calls_for(upstream)) == 1


async def test_an_expired_key_creates_a_new_prompt(api: Api):
    headers = await api.new_user()
    body, key = _body(_upstream()), str(uuid.uuid4())
    first = (await _post(api, headers, key, body)).json()
    await _age(api, first["id"])

    again = await _post(api, headers, key, body)
    assert again.status_code == 202, again.text
    assert "idempotent-replayed" not in again.headers
    second = again.json()
    assert second["id"] != first["id"]
    # The expired row was replaced: the key now belongs to the new prompt.
    assert await _key_row(api, first["id"]) is None
    assert await _key_row(api, second["id"]) is not None

    replay = await _post(api, headers, key, body)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == second["id"]


async def test_an_expired_key_may_come_back_with_another_body(api: Api):
    headers = await api.new_user()
    upstream, key = _upstream(), str(uuid.uuid4())
    first = (await _post(api, headers, key, _body(upstream))).json()
    await _age(api, first["id"])
    other = await _post(api, headers, key, _body(upstream, prompt_text="new"))
    assert other.status_code == 202, other.text
    assert other.json()["id"] != first["id"]


async def test_malformed_keys_are_refused(api: Api):
    headers = await api.new_user()
    body = _body(_upstream())
    for key in ("x" * 256, "clé-✓".encode(), ""):
        response = await _post(api, headers, key, body)
        assert response.status_code == 422, (key, response.text)
        assert response.json()["code"] == "invalid_idempotency_key"
    page = (await api.client.get("/ai/prompts/", headers=headers)).json()
    assert page["items"] == []

    longest = await _post(api, headers, "k" * 255, body)
    assert longest.status_code == 202, longest.text


async def test_a_refused_request_does_not_take_the_key(api: Api):
    headers = await api.new_user()
    key = str(uuid.uuid4())
    refused = await _post(api, headers, key, {**_body(_upstream()), "model": "no-such-model"})
    assert refused.status_code == 422 and refused.json()["code"] == "unknown_model"
    accepted = await _post(api, headers, key, _body(_upstream()))
    assert accepted.status_code == 202, accepted.text
    assert "idempotent-replayed" not in accepted.headers


class _NoRoom:
    """A dispatcher that takes nothing, so the sweep below only recovers and purges."""

    room = 0

    async def dispatch(self, prompt_id: uuid.UUID) -> bool:
        raise AssertionError("nothing is dispatched")


async def test_the_sweeper_purges_expired_keys(api: Api):
    headers = await api.new_user()
    upstream = _upstream()
    expired = [(await _post(api, headers, f"old-{i}", _body(upstream))).json() for i in range(3)]
    live = (await _post(api, headers, "live", _body(upstream))).json()
    for prompt in expired:
        await _age(api, prompt["id"])

    sweeper = Sweeper(
        api.app.state.services.recorder,
        _NoRoom(),  # type: ignore[arg-type]
        interval_seconds=60,
        redispatch_after_seconds=60,
        max_attempts=3,
    )
    await sweeper.sweep_once()

    for prompt in expired:
        assert await _key_row(api, prompt["id"]) is None
        # Only the key goes: the prompt stays.
        response = await api.client.get(f"/ai/prompts/{prompt['id']}", headers=headers)
        assert response.status_code == 200
    assert await _key_row(api, live["id"]) is not None
