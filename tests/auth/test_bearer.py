"""Two `Authorization` headers are a 400 `duplicate_authorization` everywhere: on the routes
and on the fast paths alike, in the problem shape under /ai and /webhooks and in OpenAI's
under /v1. They were read two ways (the routes took the first header, the fast path the
last), so one request could be refused by one and accepted by the other."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import Api
from tests.prompts.test_validation import assert_problem

PROMPT = {"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "hello bearer"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello bearer"}]}
INVALID = "Bearer pm_notarealkey000000000000000000000000000000"


async def _known_key(api: Api, authorization: str | None = None) -> str:
    """A new user's Authorization value (or this one), just verified by this process (as a
    busy client's is), so that the fast paths take its requests."""
    headers = {"Authorization": authorization} if authorization else await api.new_user()
    assert (await api.client.get("/ai/prompts/", headers=headers)).status_code == 200
    return headers["Authorization"]


def _twice(first: str, second: str, **more: str) -> list[tuple[str, str]]:
    return [("Authorization", first), ("Authorization", second), *more.items()]


def _assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "invalid_request_error"
    return error


async def _listed(api: Api, authorization: str) -> list[Any]:
    response = await api.client.get("/ai/prompts/", headers={"Authorization": authorization})
    items: list[Any] = response.json()["items"]
    return items


async def test_the_routes_refuse_two_authorization_headers(api: Api):
    good = await _known_key(api)
    for pair in ((good, INVALID), (INVALID, good), (good, good), (good, "Basic dXNlcjpwYXNz")):
        for method, path in (("GET", "/ai/prompts/"), ("GET", "/webhooks"), ("GET", "/ai/models/")):
            response = await api.client.request(method, path, headers=_twice(*pair))
            body = assert_problem(response, 400, "duplicate_authorization")
            assert "2 Authorization headers" in body["detail"]
            assert "pm_" not in response.text  # (no key is echoed)
        response = await api.client.get("/v1/models", headers=_twice(*pair))
        _assert_openai_error(response, 400, "duplicate_authorization")


async def test_the_fast_paths_refuse_them_as_the_routes_do(api: Api, routed: list[list[str]]):
    """The very requests the fast paths take with one header (the key was just verified by
    this process) are refused with two, whichever comes first, and nothing is recorded."""
    good = await _known_key(api)
    json_type = {"Content-Type": "application/json"}
    cases = (
        ("/ai/prompts/", PROMPT, 202, lambda r: assert_problem(r, 400, "duplicate_authorization")),
        (
            "/v1/chat/completions",
            CHAT,
            200,
            lambda r: _assert_openai_error(r, 400, "duplicate_authorization"),
        ),
    )
    for path, body, status, refused in cases:
        await _known_key(api, good)  # (the cache keeps a key AUTH_CACHE_SECONDS: 0.5 s here)
        one = await api.client.post(
            path, content=json.dumps(body), headers={"Authorization": good} | json_type
        )
        assert one.status_code == status, one.text
        recorded = len(await _listed(api, good))
        for pair in ((good, INVALID), (INVALID, good), (good, good)):
            await _known_key(api, good)
            response = await api.client.post(
                path, content=json.dumps(body), headers=_twice(*pair, **json_type)
            )
            refused(response)
        assert len(await _listed(api, good)) == recorded
    assert routed == [[], []]  # the fast paths took the requests with one header


async def test_three_headers_are_counted(api: Api):
    good = await _known_key(api)
    headers = [("Authorization", good)] * 3
    body = assert_problem(
        await api.client.get("/ai/prompts/", headers=headers), 400, "duplicate_authorization"
    )
    assert "3 Authorization headers" in body["detail"]


async def test_one_header_keeps_every_answer_it_had(api: Api):
    """One header is read as before, on the routes and on the fast paths: the key after
    `Bearer` (any case, spaces around it), else 401 `missing_api_key` or `invalid_api_key`."""
    good = await _known_key(api)
    key = good.removeprefix("Bearer ")
    for value in (f"bearer {key}", f"BEARER   {key}  "):
        assert (
            await api.client.get("/ai/prompts/", headers={"Authorization": value})
        ).status_code == 200
        submitted = await api.client.post(
            "/ai/prompts/", json=PROMPT, headers={"Authorization": value}
        )
        assert submitted.status_code == 202, submitted.text
    for value, code in (
        ("Basic dXNlcjpwYXNz", "missing_api_key"),
        ("Bearer ", "missing_api_key"),
        (INVALID, "invalid_api_key"),
    ):
        for response in (
            await api.client.get("/ai/prompts/", headers={"Authorization": value}),
            await api.client.post("/ai/prompts/", json=PROMPT, headers={"Authorization": value}),
        ):
            assert_problem(response, 401, code)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_the_openapi_security_scheme_is_unchanged(api: Api):
    schema = (await api.client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "duplicate_authorization" in scheme["description"]
    operation = schema["paths"]["/ai/prompts/"]["post"]
    assert operation["security"] == [{"ApiKey": []}]
