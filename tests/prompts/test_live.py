"""Following a prompt without polling: `GET /ai/prompts/{id}/events` (server-sent events) and
`Prefer: wait=N` on submit, in embedded mode and through a Celery worker (Redis pub/sub)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from tests.conftest import Api
from tests.prompts.test_cancel import _user
from tests.prompts.test_validation import assert_problem
from tests.records import new_prompt


def _events(body: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of a text/event-stream body; comment lines skipped."""
    parsed = []
    for block in body.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


def _model(behaviour: str) -> str:
    return f"openai/{behaviour}-live-{uuid.uuid4().hex[:8]}"


async def test_events_follow_a_prompt_to_its_final_state(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model=_model("slow-400"), prompt_text="watch me")
    started = time.monotonic()
    response = await api.client.get(f"/ai/prompts/{created['id']}/events", headers=headers)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses[0] in ("pending", "running") and statuses[-1] == "completed"
    assert statuses == list(dict.fromkeys(statuses))  # each change once, in order
    name, final = events[-1]
    assert name == "final" and final["id"] == created["id"]
    assert final["status"] == "completed" and final["response"]["response_text"]
    assert elapsed < 5  # it ended with the prompt, not at a keep-alive


async def test_events_of_a_finished_prompt_end_at_once(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model=_model("ok"))
    await api.wait_final(headers, created["id"])
    response = await api.client.get(f"/ai/prompts/{created['id']}/events", headers=headers)
    assert [name for name, _ in _events(response.text)] == ["status", "final"]


async def test_events_of_someone_elses_prompt_are_404(api: Api):
    owner = await api.new_user()
    stranger = await api.new_user()
    created = await api.submit(owner, model=_model("ok"))
    response = await api.client.get(f"/ai/prompts/{created['id']}/events", headers=stranger)
    assert_problem(response, 404, "not_found")
    missing = await api.client.get(f"/ai/prompts/{uuid.uuid4()}/events", headers=owner)
    assert_problem(missing, 404, "not_found")


async def test_prefer_wait_answers_the_finished_prompt(api: Api):
    headers = await api.new_user()
    body = {"model": _model("slow-200"), "prompt_type": "text", "prompt_text": "quick one"}
    response = await api.client.post(
        "/ai/prompts/", json=body, headers={**headers, "Prefer": "wait=10"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=10"
    done = response.json()
    assert done["status"] == "completed" and done["response"]["response_text"]
    assert response.headers["Location"] == f"/ai/prompts/{done['id']}"


async def test_prefer_wait_gives_up_with_a_202_when_the_prompt_is_slower(api: Api):
    headers = await api.new_user()
    body = {"model": _model("slow-3000"), "prompt_type": "text", "prompt_text": "slow one"}
    started = time.monotonic()
    response = await api.client.post(
        "/ai/prompts/", json=body, headers={**headers, "Prefer": "respond-async, wait=1"}
    )
    waited = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("pending", "running")
    assert 0.9 <= waited < 2.5


async def test_an_unreadable_or_huge_wait_is_ignored_or_capped(api: Api):
    headers = await api.new_user()
    body = {"model": _model("ok"), "prompt_type": "text", "prompt_text": "hi"}
    ignored = await api.client.post(
        "/ai/prompts/", json=body, headers={**headers, "Prefer": "wait=soon"}
    )
    assert ignored.status_code == 202 and "Preference-Applied" not in ignored.headers
    capped = await api.client.post(
        "/ai/prompts/", json=body, headers={**headers, "Prefer": "wait=100000"}
    )
    assert capped.status_code == 200
    assert capped.headers["Preference-Applied"] == "wait=60"


async def test_events_carry_the_text_as_it_is_generated(api: Api):
    """A prompt followed before its call starts is streamed from the provider, and its text
    reaches the follower piece by piece, before the final state."""
    owner_id, headers = await _user(api)
    prompt = new_prompt(f"drip-30-live-{uuid.uuid4().hex[:8]}", user_id=owner_id)
    prompt.prompt_text = "one two three four five"
    await api.app.state.services.recorder.create_prompt(prompt)  # recorded, not yet dispatched

    follower = asyncio.create_task(
        api.client.get(f"/ai/prompts/{prompt.id}/events", headers=headers)
    )
    deadline = time.monotonic() + 10
    while not await api.app.state.services.bus.watched(prompt.id):
        assert time.monotonic() < deadline, "the stream never subscribed"
        await asyncio.sleep(0.02)
    await api.app.state.services.dispatcher.dispatch(prompt.id)
    response = await asyncio.wait_for(follower, 20)

    events = _events(response.text)
    deltas = [data["text"] for name, data in events if name == "delta"]
    name, final = events[-1]
    assert name == "final" and final["status"] == "completed"
    assert len(deltas) > 1
    assert "".join(deltas) == final["response"]["response_text"] == "echo: one two three four five"
