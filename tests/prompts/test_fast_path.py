"""The fast path of `POST /ai/prompts/` (app/api/fast_paths.py) answers and records exactly as the
route does, and hands the route everything it does not take, body included.

Which of the two served a call is not visible to a client by design; these tests tell them
apart by the route module's calls of `PromptService.submit`. (/v1's fast path:
tests/openai_compat/test_fast_path.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.services.prompts.service import PromptService
from tests.conftest import PROMPT_ROUTES, Api, calls_from

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "prompt_type": "text",
    "prompt_text": "hello fast path",
    "max_tokens": 20,
    "metadata": {"team": "docs"},
}


@pytest.fixture
def route_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prompt texts of the submissions that the route handled."""
    return calls_from(
        monkeypatch,
        PromptService,
        "submit",
        lambda _service, _user, data, **_: data.prompt_text,
        caller=PROMPT_ROUTES,
    )


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # no Content-Length: the fast path leaves a chunked body to the route


async def _known_user(api: Api) -> dict[str, str]:
    """A new user whose key this process has verified (as a busy client's would be)."""
    headers = await api.new_user()
    assert (await api.client.get("/ai/prompts/", headers=headers)).status_code == 200
    return headers


async def test_the_fast_path_answers_and_records_as_the_route_does(
    api: Api, route_calls: list[str]
):
    headers = await _known_user(api) | {"Content-Type": "application/json"}
    encoded = json.dumps(BODY).encode()

    fast = await api.client.post("/ai/prompts/", content=encoded, headers=headers)
    assert route_calls == []
    routed = await api.client.post("/ai/prompts/", content=_chunked(encoded), headers=headers)
    assert route_calls == ["hello fast path"]

    for response in (fast, routed):
        assert response.status_code == 202, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["location"] == f"/ai/prompts/{response.json()['id']}"
    assert set(fast.headers) == set(routed.headers)
    one, other = fast.json(), routed.json()
    assert one["id"] != other["id"]
    for varying in ("id", "created_at", "status", "started_at", "finished_at"):
        del one[varying], other[varying]  # (the worker may have started either already)
    assert one == other
    assert one["metadata"] == {"team": "docs"} and one["prompt_text"] == "hello fast path"

    finals = [await api.wait_final(headers, response.json()["id"]) for response in (fast, routed)]
    for final in finals:
        assert final["status"] == "completed", final
        assert [a["outcome"] for a in final["attempts"]] == ["success"]
    assert finals[0]["response"]["response_text"] == finals[1]["response"]["response_text"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "gpt-4o-mini", "prompt_type": "text"}, "validation_error"),
        (BODY | {"model": "gpt-4o-mni"}, "unknown_model"),
        (BODY | {"prompt_text": "x" * 200_000}, "prompt_too_large"),
    ],
)
async def test_what_the_fast_path_refuses_the_route_answers(
    api: Api, route_calls: list[str], body: dict[str, Any], code: str
):
    """The body the fast path read and turned down reaches the route whole: the usual
    problem, and nothing recorded."""
    headers = await _known_user(api)
    response = await api.client.post("/ai/prompts/", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    listed = await api.client.get("/ai/prompts/", headers=headers)
    assert listed.json()["items"] == []
    if code != "validation_error":  # (an invalid body fails before the handler runs)
        assert route_calls == [body["prompt_text"]]


async def test_prefer_and_idempotency_key_go_to_the_route(api: Api, route_calls: list[str]):
    headers = await _known_user(api)
    waited = await api.client.post(
        "/ai/prompts/", json=BODY, headers=headers | {"Prefer": "wait=10"}
    )
    assert waited.status_code == 200, waited.text
    assert waited.headers["preference-applied"] == "wait=10"
    assert waited.json()["status"] == "completed"
    keyed = await api.client.post(
        "/ai/prompts/", json=BODY, headers=headers | {"Idempotency-Key": "fast-1"}
    )
    assert keyed.status_code == 202
    assert route_calls == ["hello fast path", "hello fast path"]


async def test_a_request_from_an_unknown_key_goes_to_the_route(api: Api):
    response = await api.client.post(
        "/ai/prompts/", json=BODY, headers={"Authorization": "Bearer pm_not-a-key"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"
    response = await api.client.post("/ai/prompts/", json=BODY)
    assert response.status_code == 401
    assert response.json()["code"] == "missing_api_key"
