"""Bad input gets a clear 4xx problem with a stable code: never a 500, never a stack trace."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api

VALID = {"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "hi"}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


async def test_unknown_model_lists_the_available_ones(api: Api):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/", json={**VALID, "model": "gpt-4o-mni"}, headers=headers
    )
    body = assert_problem(response, 422, "unknown_model")
    assert "gpt-4o-mini" in body["close_matches"]
    assert {"local", "gpt-4o-mini"} <= set(body["available_models"])
    assert "gpt-4o-mini" in body["detail"]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"prompt_text": ""}, "prompt_text"),
        ({"prompt_text": "   \n\t"}, "prompt_text"),
        ({"prompt_text": 123}, "prompt_text"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"prompt_type": "x" * 65}, "prompt_type"),
        ({"model": ""}, "model"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        # Numbers are numbers: no string or boolean stands in for one.
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 5.5}, "max_tokens"),
        ({"temperature": "0.5"}, "temperature"),
        ({"timeout_seconds": "30"}, "timeout_seconds"),
        ({"fallbacks": ["gpt-4o-mini", "gpt-4o-mini"]}, "fallbacks"),
        # A name the prompt-type API could define, nothing else.
        ({"prompt_type": "my type"}, "prompt_type"),
        ({"prompt_type": "a/b"}, "prompt_type"),
        ({"prompt_type": "-text"}, "prompt_type"),
    ],
)
async def test_invalid_fields_are_422(api: Api, change: dict[str, Any], where: str):
    headers = await api.new_user()
    response = await api.client.post("/ai/prompts/", json={**VALID, **change}, headers=headers)
    body = assert_problem(response, 422, "validation_error")
    assert where in body["detail"]
    assert body["errors"] and all("input" not in error for error in body["errors"])


@pytest.mark.parametrize("field", ["status", "user_id", "created_at", "id", "finished_at"])
async def test_server_fields_cannot_be_set(api: Api, field: str):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/", json={**VALID, field: "completed"}, headers=headers
    )
    body = assert_problem(response, 422, "validation_error")
    assert field in body["detail"]


async def test_missing_required_fields(api: Api):
    headers = await api.new_user()
    response = await api.client.post("/ai/prompts/", json={"model": "local"}, headers=headers)
    body = assert_problem(response, 422, "validation_error")
    missing = {tuple(e["loc"]) for e in body["errors"]}
    assert ("body", "prompt_type") in missing
    # The prompt itself: prompt_text, or a conversation (`messages`).
    response = await api.client.post(
        "/ai/prompts/", json={"model": "local", "prompt_type": "text"}, headers=headers
    )
    body = assert_problem(response, 422, "validation_error")
    assert "either prompt_text or messages" in response.text


async def test_malformed_json_is_422(api: Api):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/",
        content=b'{"model": "local",',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert_problem(response, 422, "validation_error")


async def test_prompt_over_the_limit_is_rejected(api: Api):
    headers = await api.new_user()
    limit = api.app.state.settings.max_prompt_chars
    response = await api.client.post(
        "/ai/prompts/", json={**VALID, "prompt_text": "x" * (limit + 1)}, headers=headers
    )
    body = assert_problem(response, 422, "prompt_too_large")
    assert body["limit"] == limit


async def test_body_over_the_byte_limit_is_413(api: Api):
    headers = await api.new_user()
    limit = api.app.state.settings.max_body_bytes
    response = await api.client.post(
        "/ai/prompts/",
        json={**VALID, "prompt_text": "x" * (limit + 10)},
        headers=headers,
    )
    assert_problem(response, 413, "payload_too_large")


async def test_malformed_id_is_422_and_unknown_route_is_problem(api: Api):
    headers = await api.new_user()
    assert_problem(
        await api.client.get("/ai/prompts/not-a-uuid", headers=headers), 422, "validation_error"
    )
    assert_problem(await api.client.get("/nowhere", headers=headers), 404, "not_found")
    assert_problem(
        await api.client.delete("/ai/prompts/", headers=headers), 405, "method_not_allowed"
    )


async def test_streamed_body_is_cut_off_at_the_limit(api: Api):
    """No Content-Length (chunked): the body is counted as it arrives and refused past the
    limit, without waiting for the rest."""
    headers = await api.new_user()
    limit = api.app.state.settings.max_body_bytes
    sent = 0

    async def chunks():
        nonlocal sent
        yield b'{"model": "local", "prompt_type": "text", "prompt_text": "'
        for _ in range(limit // 65536 + 50):
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    response = await api.client.post(
        "/ai/prompts/", content=chunks(), headers={**headers, "Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    assert sent <= limit + 2 * 65536  # it stopped reading soon after the limit


@pytest.mark.parametrize(
    "fallbacks", [["claude-haiku-4-5", "haiku"], ["gpt-4.1-nano", "openai/gpt-4.1-nano"]]
)
async def test_two_names_for_one_fallback_model_are_refused(api: Api, fallbacks: list[str]):
    headers = await api.new_user()
    response = await api.client.post(
        "/ai/prompts/", json={**VALID, "fallbacks": fallbacks}, headers=headers
    )
    body = assert_problem(response, 422, "duplicate_fallback")
    assert fallbacks[0] in body["detail"] and fallbacks[1] in body["detail"]
