"""Per-user caps: prompts waiting to run (MAX_PENDING_PER_USER, a 429
`too_many_pending_prompts` past it, on the fast path as on the route), and streams held open
(MAX_STREAMS_PER_USER: a 429 `too_many_streams` for one more `/events` stream, and a
`Prefer: wait` that is answered at once instead of waiting)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.db.models import PromptRequest
from app.services.caps import REFRESH_SECONDS
from app.services.intake import Intake
from app.services.prompts.service import PromptService
from tests.conftest import (
    PROMPT_ROUTES,
    Api,
    calls_from,
    count_calls,
    make_settings,
    migrate,
    running_api,
)
from tests.mocks.openai_server import MockOpenAI
from tests.prompts.test_validation import assert_problem

CAP = 3


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # no Content-Length: the fast path leaves the request to the route


async def test_pending_prompts_are_capped_per_user_on_both_paths(
    fresh_database: str, mock_openai: MockOpenAI, monkeypatch: pytest.MonkeyPatch
):
    await migrate(fresh_database)
    # One slot, taken by a call that never answers: everything after it stays pending.
    settings = make_settings(
        fresh_database,
        mock_openai,
        runner_concurrency=1,
        max_pending_per_user=CAP,
        local_model_enabled=False,
    )
    route_calls = calls_from(
        monkeypatch, PromptService, "submit", lambda *_, **__: 1, caller=PROMPT_ROUTES
    )
    checks = count_calls(monkeypatch, Intake, "admit", lambda *_, **__: 1)
    async with running_api(settings) as api:
        user, other = await api.new_user(), await api.new_user()
        # Another user's call holds the runner's one slot: the user's prompts stay pending.
        hang = f"openai/hang-cap-{uuid.uuid4().hex[:6]}"
        running = await api.submit(other, model=hang)
        pending = [await api.submit(user, model="gpt-4o-mini") for _ in range(CAP)]
        # Past the count's refresh: the next decision at the cap reads the database.
        await asyncio.sleep(REFRESH_SECONDS + 0.1)

        body = {"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "one more"}
        encoded = json.dumps(body).encode()
        headers = user | {"Content-Type": "application/json"}
        assert (await api.client.get("/ai/prompts/", headers=user)).status_code == 200
        routes, checked = len(route_calls), len(checks)
        fast = await api.client.post("/ai/prompts/", content=encoded, headers=headers)
        # The fast path took it (a key it knows, a plain body), found the cap, and left the
        # refusal to the route: checked twice, routed once.
        assert (len(checks) - checked, len(route_calls) - routes) == (2, 1)
        routed = await api.client.post("/ai/prompts/", content=_chunked(encoded), headers=headers)
        assert (len(checks) - checked, len(route_calls) - routes) == (3, 2)
        for response in (fast, routed):
            problem = assert_problem(response, 429, "too_many_pending_prompts")
            assert problem["limit"] == CAP and response.headers["Retry-After"] == "1"
        listed = (await api.client.get("/ai/prompts/?limit=100", headers=user)).json()["items"]
        assert len(listed) == CAP  # nothing more was recorded

        # Another user is not affected, and the user may submit again once one is no longer
        # waiting (here: cancelled), after at most a refresh.
        await api.submit(other, model="gpt-4o-mini")
        cancelled = await api.client.post(f"/ai/prompts/{pending[0]['id']}/cancel", headers=user)
        assert cancelled.status_code == 200
        await asyncio.sleep(REFRESH_SECONDS + 0.1)
        again = await api.client.post("/ai/prompts/", content=encoded, headers=headers)
        assert again.status_code == 202, again.text
        for prompt in pending[1:]:
            await api.client.post(f"/ai/prompts/{prompt['id']}/cancel", headers=user)
        await api.client.post(f"/ai/prompts/{running['id']}/cancel", headers=other)


async def test_event_streams_are_capped_per_user(api: Api):
    limit = api.app.state.settings.max_streams_per_user
    user, other = await api.new_user(), await api.new_user()
    hang = f"openai/hang-streams-{uuid.uuid4().hex[:6]}"
    prompt = await api.submit(user, model=hang)
    url = f"/ai/prompts/{prompt['id']}/events"

    async def follow() -> Any:
        return await api.client.get(url, headers=user)

    async with api.sessions() as session:
        row = await session.get(PromptRequest, uuid.UUID(prompt["id"]))
    assert row is not None
    streams = [asyncio.create_task(follow()) for _ in range(limit)]
    try:
        for _ in range(100):  # until the server holds every one of them open
            if api.app.state.services.streams.held(row.user_id) == limit:
                break
            await asyncio.sleep(0.05)
        assert not any(task.done() for task in streams)
        refused = await api.client.get(url, headers=user)
        assert_problem(refused, 429, "too_many_streams")
        # A wait is a held stream too: past the cap it is answered at once, not honoured.
        waited = await api.client.post(
            "/ai/prompts/",
            json={"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "no wait"},
            headers=user | {"Prefer": "wait=10"},
        )
        assert waited.status_code == 202 and "Preference-Applied" not in waited.headers
        # Someone else's streams are theirs.
        mine = await api.submit(other, model="gpt-4o-mini")
        theirs = await api.client.get(f"/ai/prompts/{mine['id']}/events", headers=other)
        assert theirs.status_code == 200
    finally:
        await api.client.post(f"/ai/prompts/{prompt['id']}/cancel", headers=user)
        ended = await asyncio.wait_for(asyncio.gather(*streams), 10)
    assert all(response.status_code == 200 for response in ended)
    # Every slot was given back when its stream ended.
    again = await api.client.get(url, headers=user)
    assert again.status_code == 200
