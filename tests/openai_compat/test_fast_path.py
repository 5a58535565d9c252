"""The fast path of /v1/chat/completions (app/openai_compat/fast_path.py) answers exactly as
the route does, and hands the route everything it does not take, body included.

Which of the two served a call is not visible to a client by design; these tests tell them
apart by the route module's calls of `ChatService.start`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.services.chat.service import ChatService
from tests.conftest import CHAT_ROUTES, calls_from
from tests.openai_compat.conftest import V1

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello fast path"}],
    "max_tokens": 20,
}
TOOL: dict[str, Any] = {"type": "function", "function": {"name": "lookup"}}


@pytest.fixture
def route_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models of the chats that the route started (not replayed)."""
    return calls_from(
        monkeypatch,
        ChatService,
        "start",
        lambda _service, _user, data, **_: data.model,
        caller=CHAT_ROUTES,
        unless=lambda run: run.replayed,
    )


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # no Content-Length: the fast path leaves a chunked body to the route


async def _post(v1: V1, key: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{v1.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            **kwargs,
        )


async def test_the_fast_path_answers_and_records_as_the_route_does(v1: V1, route_calls: list[str]):
    key, headers = await v1.user()
    encoded = httpx.Request("POST", "/", json=BODY).content
    await _post(v1, key, content=encoded)  # the key is now known to this process
    route_calls.clear()

    fast = await _post(v1, key, content=encoded)
    assert route_calls == []
    routed = await _post(v1, key, content=_chunked(encoded))
    assert route_calls == ["gpt-4o-mini"]

    for response in (fast, routed):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
    assert set(fast.headers) == set(routed.headers)
    one, other = fast.json(), routed.json()
    assert one["id"] != other["id"] and one["created"] <= other["created"]
    for varying in ("id", "created"):
        del one[varying], other[varying]
    assert one == other
    assert one["choices"][0]["message"]["content"] == "echo: hello fast path"

    prompts = []
    for response in (fast, routed):
        got = await v1.api.client.get(
            f"/ai/prompts/{response.headers['x-prompt-id']}", headers=headers
        )
        prompt = got.json()
        prompts.append(
            {
                k: prompt[k]
                for k in ("status", "model", "provider", "prompt_type", "prompt_text", "parameters")
            }
            | {"attempts": [a["outcome"] for a in prompt["attempts"]]}
        )
    assert prompts[0] == prompts[1]
    assert prompts[0]["status"] == "completed" and prompts[0]["attempts"] == ["success"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "gpt-4o-mini"}, 400, "validation_error"),
        (BODY | {"model": "gpt-4o-mni"}, 404, "model_not_found"),
        (BODY | {"tools": [{"type": "function"}]}, 400, "validation_error"),
        (BODY | {"model": "local", "tools": [TOOL]}, 400, "unsupported_parameter"),
        (BODY | {"messages": [{"role": "system", "content": "x"}]}, 400, "invalid_messages"),
    ],
)
async def test_what_the_fast_path_refuses_the_route_answers(
    v1: V1, route_calls: list[str], body: dict[str, Any], status: int, code: str
):
    """The body the fast path read and turned down reaches the route whole: the usual error,
    in OpenAI's shape, and nothing recorded."""
    key, headers = await v1.user()
    await _post(v1, key, json=BODY)  # the key is now known to this process
    route_calls.clear()
    before = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()["items"]

    response = await _post(v1, key, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    after = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()["items"]
    assert after == before
    if code != "validation_error":  # (an invalid body fails before the handler runs)
        assert route_calls == [body["model"]]


async def test_an_idempotency_key_goes_to_the_route(v1: V1, route_calls: list[str]):
    key, _ = await v1.user()
    await _post(v1, key, json=BODY)
    route_calls.clear()
    async with httpx.AsyncClient(timeout=30) as http:
        first, again = [
            await http.post(
                f"{v1.base_url}/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "fast-1"},
            )
            for _ in range(2)
        ]
    assert route_calls == ["gpt-4o-mini"]  # the second one replays
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
