"""The HTTP edge, on the routes and the fast paths alike:

- every route answers at its path with and without the trailing slash, with no redirect,
  while `/openapi.json` and `Location` keep the declared form;
- a known path with another method is a 405 whose `Allow` names every method the path
  serves (under /v1 in OpenAI's shape; an unknown /v1 path stays a 404 `unknown_url`);
- a request head over MAX_HEADER_BYTES is a 431 problem. This is the app's own check, for any
  server and the in-process client; `python -m app serve` refuses it while reading it
  (tests/test_server_protocol.py).

Which of a fast path and its route answered is not visible to a client; as in
tests/prompts/test_fast_path.py, the tests tell them apart by the service that only the route
calls."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.conftest import Api
from tests.prompts.test_validation import assert_problem

PROMPT = {"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "hello edge"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello edge"}]}
JSON = {"Content-Type": "application/json"}
LIMIT = 16_384  # MAX_HEADER_BYTES of the suite's app (the default)


def other_form(path: str) -> str:
    """The path with its trailing slash removed, or with one added."""
    return path[:-1] if path.endswith("/") else path + "/"


async def _verified(api: Api, headers: dict[str, str] | None = None) -> dict[str, str]:
    """A user's headers (a new user's by default), just verified by this process, so that the
    fast paths take its requests (the suite's AUTH_CACHE_SECONDS is 0.5 s: call it again
    right before each request that the fast path should take)."""
    headers = headers or await api.new_user()
    assert (await api.client.get("/ai/prompts/", headers=headers)).status_code == 200
    return headers


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body  # no Content-Length: the fast paths leave a chunked body to the route


def _openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return error


def _allow(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers["allow"].split(",")}


# --- trailing slashes ------------------------------------------------------------------------


async def test_every_read_answers_the_same_at_both_forms_of_its_path(api: Api):
    """Each GET operation of /openapi.json, asked at its declared path and at the other form,
    answers the same, never with a redirect (it was a 307 to the declared form)."""
    headers = await api.new_user()
    admin = await api.new_user(is_admin=True)
    name = f"edge_{uuid.uuid4().hex[:8]}"
    defined = await api.client.put(f"/ai/prompt-types/{name}", json={}, headers=admin)
    assert defined.status_code == 201, defined.text
    prompt = await api.submit(headers, model="gpt-4o-mini")
    await api.wait_final(headers, prompt["id"])
    values = {
        "prompt_id": prompt["id"],
        "name": name,
        "model_id": "gpt-4o-mini",
        "webhook_id": str(uuid.uuid4()),  # (someone else's or none: the route's own 404)
        "team_id": str(uuid.uuid4()),  # (none: the route's own 404)
    }

    schema = (await api.client.get("/openapi.json")).json()
    asked = 0
    for declared, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        path = declared.format(**values)
        who = admin if declared.startswith("/ai/admin/") else headers  # (admins' reads)
        one = await api.client.get(path, headers=who)
        other = await api.client.get(other_form(path), headers=who)
        asked += 1
        assert one.status_code < 300 or one.status_code == 404, (path, one.text)
        assert other.status_code == one.status_code, (other_form(path), other.text)
        if one.headers["content-type"].startswith("text/event-stream"):
            assert [line for line in other.text.splitlines() if line.startswith("event:")] == [
                line for line in one.text.splitlines() if line.startswith("event:")
            ]
        else:
            assert other.json() == one.json(), other_form(path)
    assert asked >= 12


async def test_writes_answer_at_both_forms_and_location_keeps_the_declared_one(
    api: Api, routed: list[list[str]]
):
    headers = await api.new_user()
    encoded = json.dumps(PROMPT).encode()
    for path in ("/ai/prompts/", "/ai/prompts"):
        await _verified(api, headers)
        fast = await api.client.post(path, content=encoded, headers=headers | JSON)
        chunked = await api.client.post(path, content=_chunked(encoded), headers=headers | JSON)
        for response in (fast, chunked):
            assert response.status_code == 202, response.text
            assert response.headers["location"] == f"/ai/prompts/{response.json()['id']}"
    # The fast path took the plain request at both forms; the route the chunked ones.
    assert routed[0] == ["submit", "submit"]

    encoded = json.dumps(CHAT).encode()
    for path in ("/v1/chat/completions", "/v1/chat/completions/"):
        await _verified(api, headers)
        fast = await api.client.post(path, content=encoded, headers=headers | JSON)
        chunked = await api.client.post(path, content=_chunked(encoded), headers=headers | JSON)
        for response in (fast, chunked):
            assert response.status_code == 200, response.text
            assert response.json()["object"] == "chat.completion"
    assert routed[1] == ["chat", "chat"]

    prompt = await api.submit(headers, model="gpt-4o-mini")
    final = await api.wait_final(headers, prompt["id"])
    admin = await api.new_user(is_admin=True)
    name = f"edge_{uuid.uuid4().hex[:8]}"
    missing = uuid.uuid4()
    for method, path, body, who, status in (
        ("POST", f"/ai/prompts/{prompt['id']}/cancel", None, headers, 409),
        ("POST", "/webhooks", {"url": "ftp://example.com/x"}, headers, 422),
        ("PATCH", f"/webhooks/{missing}", {"enabled": False}, headers, 404),
        ("DELETE", f"/webhooks/{missing}", None, headers, 404),
        ("POST", f"/webhooks/deliveries/{missing}/redeliver", None, headers, 404),
        ("PUT", f"/ai/prompt-types/{name}", {"max_output_tokens": 64}, admin, 201),
        ("PUT", f"/ai/prompt-types/{name}/", {"max_output_tokens": 32}, admin, 200),
        ("DELETE", f"/ai/prompt-types/{name}/", None, admin, 200),
    ):
        one = await api.client.request(method, path, json=body, headers=who)
        assert one.status_code == status, (method, path, one.text)
        if status in (404, 409, 422):  # (answers that the same request gets again)
            other = await api.client.request(method, other_form(path), json=body, headers=who)
            assert (other.status_code, other.json()) == (status, one.json()), other.text
    assert final["status"] == "completed"


async def test_openapi_keeps_one_form_of_each_path(api: Api):
    paths = set((await api.client.get("/openapi.json")).json()["paths"])
    assert not {path for path in paths if other_form(path) in paths}
    assert {"/ai/prompts/", "/ai/models/", "/ai/prompt-types", "/webhooks"} <= paths
    assert "/v1/chat/completions" in paths and "/v1/chat/completions/" not in paths


async def test_a_path_no_route_has_in_either_form_is_a_404(api: Api):
    headers = await api.new_user()
    for path in ("/nowhere", "/nowhere/", "/ai/prompt", "/ai/prompts/x/y/z", "/"):
        response = await api.client.get(path, headers=headers)
        body = assert_problem(response, 404, "not_found")
        assert "location" not in response.headers, body
    for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS"):
        for path in ("/v1/moderations", "/v1/moderations/", "/v1/", "/v1/chat"):
            response = await api.client.request(method, path, headers=headers)
            error = _openai_error(response, 404, "unknown_url")
            assert f"({method} {path})" in error["message"]


# --- methods ---------------------------------------------------------------------------------


async def test_a_known_path_with_another_method_is_a_405_naming_every_method_it_serves(api: Api):
    """Allow names the methods of every route at the path (a route's own 405 named its own
    only: `PUT /ai/prompts/` said POST, though GET is served there too)."""
    headers = await api.new_user()
    name = f"edge_{uuid.uuid4().hex[:8]}"
    cases = [
        ("PUT", "/ai/prompts/", {"GET", "POST"}),
        ("DELETE", "/ai/prompts/", {"GET", "POST"}),
        ("OPTIONS", "/ai/prompts/", {"GET", "POST"}),
        ("POST", f"/ai/prompts/{uuid.uuid4()}", {"GET"}),
        ("GET", f"/ai/prompts/{uuid.uuid4()}/cancel", {"POST"}),
        ("POST", "/ai/prompt-types", {"GET"}),
        ("PATCH", f"/ai/prompt-types/{name}", {"GET", "PUT", "DELETE"}),
        ("PUT", "/webhooks", {"GET", "POST"}),
        ("POST", f"/webhooks/{uuid.uuid4()}", {"GET", "PATCH", "DELETE"}),
        ("POST", "/ai/models/", {"GET"}),
        ("POST", "/healthz", {"GET"}),
        ("HEAD", "/healthz", {"GET"}),
    ]
    for method, declared, allowed in cases:
        for path in (declared, other_form(declared)):
            response = await api.client.request(method, path, headers=headers)
            assert response.status_code == 405, (method, path, response.text)
            assert _allow(response) == allowed, (method, path)
            if method != "HEAD":
                body = assert_problem(response, 405, "method_not_allowed")
                assert method in body["detail"]

    for method, declared, allowed in (
        ("GET", "/v1/chat/completions", {"POST"}),
        ("PUT", "/v1/chat/completions", {"POST"}),
        ("OPTIONS", "/v1/chat/completions", {"POST"}),
        ("GET", "/v1/embeddings", {"POST"}),
        ("DELETE", "/v1/models", {"GET"}),
        ("POST", "/v1/models/gpt-4o-mini", {"GET"}),
        ("HEAD", "/v1/models", {"GET"}),
    ):
        for path in (declared, other_form(declared)):
            response = await api.client.request(method, path, headers=headers)
            assert response.status_code == 405, (method, path, response.text)
            assert _allow(response) == allowed, (method, path)
            if method != "HEAD":
                error = _openai_error(response, 405, "method_not_allowed")
                assert error["type"] == "invalid_request_error" and method in error["message"]


async def test_the_fast_pathed_paths_answer_other_methods_with_a_405(
    api: Api, routed: list[list[str]]
):
    """Only POST is fast-pathed: any other method on those paths, from a key the fast paths
    would take a POST from and with a body they would take, gets the 405 (GET /ai/prompts/
    is the list), and records nothing."""
    headers = await api.new_user()
    for path, body, allowed in (
        ("/ai/prompts/", PROMPT, {"GET", "POST"}),
        ("/v1/chat/completions", CHAT, {"POST"}),
    ):
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "GET"):
            if method in allowed:
                continue
            for form in (path, other_form(path)):
                await _verified(api, headers)
                response = await api.client.request(
                    method, form, content=json.dumps(body), headers=headers | JSON
                )
                assert response.status_code == 405, (method, form, response.text)
                assert _allow(response) == allowed
    listed = await api.client.get("/ai/prompts/", headers=headers)
    assert listed.json()["items"] == []
    assert routed == [[], []]


# --- the request head ------------------------------------------------------------------------


def _head_size(request: httpx.Request) -> int:
    """The head as the app counts it (`middleware.target_bytes` and each header's
    `name: value` line): what the in-process client sends."""
    query = request.url.query
    target = len(request.url.raw_path.split(b"?")[0]) + (len(query) + 1 if query else 0)
    return target + sum(len(name) + len(value) + 4 for name, value in request.headers.raw)


async def _send_with_head_of(
    api: Api, size: int, method: str, path: str, headers: dict[str, str], body: Any = None
) -> httpx.Response:
    """The request, with an `X-Pad` header that makes its head exactly `size` bytes."""
    content = None if body is None else json.dumps(body).encode()
    probe = api.client.build_request(method, path, content=content, headers=headers | {"X-Pad": ""})
    pad = size - _head_size(probe)
    assert pad >= 0
    request = api.client.build_request(
        method, path, content=content, headers=headers | {"X-Pad": "p" * pad}
    )
    assert _head_size(request) == size
    return await api.client.send(request)


async def test_a_head_over_max_header_bytes_is_a_431_on_the_routes_and_the_fast_paths(
    api: Api, routed: list[list[str]]
):
    """A head of exactly MAX_HEADER_BYTES is served (by the fast path, for a plain POST from
    a verified key); one byte more is a 431 problem, and nothing is recorded. Before, a head
    of any size was read and answered."""
    limit = LIMIT
    headers = await api.new_user()

    await _verified(api, headers)
    response = await _send_with_head_of(api, limit, "POST", "/ai/prompts/", headers | JSON, PROMPT)
    assert response.status_code == 202, response.text
    await _verified(api, headers)
    response = await _send_with_head_of(
        api, limit, "POST", "/v1/chat/completions", headers | JSON, CHAT
    )
    assert response.status_code == 200, response.text
    assert routed == [[], []]  # the fast paths took both
    listed = await _send_with_head_of(api, limit, "GET", "/ai/prompts/", headers)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 2

    for size in (limit + 1, 10 * limit):
        for method, path, body in (
            ("POST", "/ai/prompts/", PROMPT),
            ("POST", "/ai/prompts", PROMPT),
            ("POST", "/v1/chat/completions", CHAT),
            ("GET", "/ai/prompts/", None),
            ("GET", "/v1/models", None),
            ("PUT", "/nowhere", None),
        ):
            await _verified(api, headers)
            extra = JSON if body is not None else {}
            response = await _send_with_head_of(api, size, method, path, headers | extra, body)
            problem = assert_problem(response, 431, "header_too_large")
            assert "MAX_HEADER_BYTES" in problem["detail"]
    assert routed == [[], []]
    listed = await api.client.get("/ai/prompts/", headers=headers)
    assert len(listed.json()["items"]) == 2
    assert api.app.state.settings.max_header_bytes == LIMIT


async def test_the_query_string_counts_in_the_head(api: Api):
    headers = await api.new_user()
    response = await api.client.get(
        "/ai/prompts/", params={"prompt_type": "x" * LIMIT}, headers=headers
    )
    assert_problem(response, 431, "header_too_large")
