"""Text no database or JSON encoder can hold (NUL, lone surrogates) is refused on every field of
every operation with a 4xx and a stable code, before anything is stored: never a 500.

The property test walks the OpenAPI document, so an operation or a string field added later is
covered without touching this file (and an operation with a body that the table below does not
know fails the test until it is added).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.kit.text import text_problem
from app.main import create_app
from tests.conftest import Api, make_settings

NUL, SURROGATE = "a\x00b", "a\ud800b"
BAD_TEXTS = [NUL, SURROGATE, "\udfff", "\ud83d"]  # (the last: half of an emoji's pair)


def raw_json(body: Any) -> bytes:
    """The body as JSON with `\\u` escapes, the only way a lone surrogate travels (a JSON
    text is UTF-8, which cannot encode one)."""
    return json.dumps(body, ensure_ascii=True).encode()


async def send(api: Api, method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
    if body is None:
        return await api.client.request(method, url, headers=headers)
    return await api.client.request(
        method,
        url,
        content=raw_json(body),
        headers={**headers, "Content-Type": "application/json"},
    )


PROMPT = {"model": "gpt-4o-mini", "prompt_type": "text", "prompt_text": "hi"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _with(base: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**base, **change}


# (what, method, url, body) with `{bad}` standing for the text under test
CASES: list[tuple[str, str, str, Callable[[str], Any]]] = [
    ("prompt_text", "POST", "/ai/prompts/", lambda b: _with(PROMPT, prompt_text=b)),
    ("system_prompt", "POST", "/ai/prompts/", lambda b: _with(PROMPT, system_prompt=b)),
    ("model", "POST", "/ai/prompts/", lambda b: _with(PROMPT, model=b)),
    ("prompt_type", "POST", "/ai/prompts/", lambda b: _with(PROMPT, prompt_type=b)),
    ("metadata key", "POST", "/ai/prompts/", lambda b: _with(PROMPT, metadata={b: "v"})),
    ("metadata value", "POST", "/ai/prompts/", lambda b: _with(PROMPT, metadata={"k": b})),
    ("fallbacks", "POST", "/ai/prompts/", lambda b: _with(PROMPT, fallbacks=[b])),
    ("variables", "POST", "/ai/prompts/", lambda b: _with(PROMPT, variables={"v": b})),
    *[
        (
            f"/v1 {role} message",
            "POST",
            "/v1/chat/completions",
            lambda b, role=role: _with(
                CHAT,
                messages=[{"role": role, "content": b}, {"role": "user", "content": "hi"}],
            ),
        )
        for role in ("system", "developer", "user", "assistant")
    ],
    (
        "/v1 text part",
        "POST",
        "/v1/chat/completions",
        lambda b: _with(
            CHAT, messages=[{"role": "user", "content": [{"type": "text", "text": b}]}]
        ),
    ),
    ("/v1 user", "POST", "/v1/chat/completions", lambda b: _with(CHAT, user=b)),
    (
        "/v1 message name",
        "POST",
        "/v1/chat/completions",
        lambda b: _with(CHAT, messages=[{"role": "user", "content": "hi", "name": b}]),
    ),
    ("/v1 metadata", "POST", "/v1/chat/completions", lambda b: _with(CHAT, metadata={"k": b})),
    ("/v1 extra field", "POST", "/v1/chat/completions", lambda b: _with(CHAT, store=b)),
    ("/v1 model", "POST", "/v1/chat/completions", lambda b: _with(CHAT, model=b)),
]


@pytest.mark.parametrize("bad", BAD_TEXTS, ids=["nul", "surrogate", "low-surrogate", "half-pair"])
@pytest.mark.parametrize(("what", "method", "url", "body"), CASES, ids=[c[0] for c in CASES])
async def test_text_that_cannot_be_stored_is_refused_with_invalid_text(
    api: Api, what: str, method: str, url: str, body: Callable[[str], Any], bad: str
):
    headers = await api.new_user()
    response = await send(api, method, url, headers, body(bad))
    data = response.json()
    if url.startswith("/v1"):
        assert response.status_code == 400, response.text
        assert data["error"]["code"] == "invalid_text", data
        assert data["error"]["type"] == "invalid_request_error"
    else:
        assert response.status_code == 422, response.text
        assert data["code"] == "invalid_text", data
        assert "Traceback" not in response.text
    listed = await api.client.get("/ai/prompts/", headers=headers)
    assert listed.json()["items"] == []  # nothing was stored


@pytest.mark.parametrize("field", ["model", "prompt_type"])
async def test_list_filters_refuse_nul(api: Api, field: str):
    """A NUL in a filter was a 500 on PostgreSQL (CharacterNotInRepertoireError)."""
    headers = await api.new_user()
    response = await api.client.get(f"/ai/prompts/?{field}=a%00b", headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_text"


@pytest.mark.parametrize(
    "field",
    ["description", "system_instruction", "template", "default_model", "fallbacks"],
)
@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_prompt_type_fields_refuse_bad_text(api: Api, field: str, bad: str):
    """Was a 500 and a reset connection."""
    admin = await api.new_user(is_admin=True)
    value: Any = [bad] if field == "fallbacks" else bad
    if field == "template":
        value = "{prompt_text} " + bad
    name = f"t-{uuid.uuid4().hex[:8]}"
    response = await send(api, "PUT", f"/ai/prompt-types/{name}", admin, {field: value})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_text"
    missing = await api.client.get(f"/ai/prompt-types/{name}", headers=admin)
    assert missing.status_code == 404


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_webhook_description_refuses_bad_text(api: Api, bad: str):
    """Was a 500 on PostgreSQL and stored as given on SQLite."""
    headers = await api.new_user()
    body = {"url": "https://example.com/hooks", "events": ["prompt.completed"], "description": bad}
    response = await send(api, "POST", "/webhooks", headers, body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_text"
    assert (await api.client.get("/webhooks", headers=headers)).json() == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_stored_lone_surrogate_is_shown_not_a_500(api: Api):
    """Rows written before the check existed: SQLite keeps a `\\ud800` escape in a JSON column
    (PostgreSQL's jsonb refuses one, so only SQLite can hold such a row). Reading it back
    replaced by U+FFFD, the prompt is shown, in the list and in full."""
    headers = await api.new_user()
    created = await api.submit(headers, model="gpt-4o-mini", system_prompt="be brief")
    await api.wait_final(headers, created["id"])
    async with api.sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE prompt_requests SET parameters = :parameters, metadata = :meta "
                "WHERE id = :id"
            ),
            {
                "parameters": '{"system_prompt": "be \\ud800 brief"}',
                "meta": '{"k\\udfff": "v"}',
                "id": uuid.UUID(created["id"]).hex,
            },
        )
    detail = await api.client.get(f"/ai/prompts/{created['id']}", headers=headers)
    assert detail.status_code == 200, detail.text
    assert detail.json()["parameters"]["system_prompt"] == "be \ufffd brief"
    assert detail.json()["metadata"] == {"k\ufffd": "v"}
    listed = await api.client.get("/ai/prompts/", headers=headers)
    assert listed.status_code == 200 and listed.json()["items"][0]["metadata"] == {"k\ufffd": "v"}


# --- Arbitrary text into every string of every operation -------------------------------------

# A valid body for each operation that takes one (`{webhook}` is replaced by a real id).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/ai/prompts/"): {
        **PROMPT,
        "system_prompt": "s",
        "metadata": {"k": "v"},
        "fallbacks": ["backup/gpt-4o-mini"],
        "max_tokens": 5,
        "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}],
        "response_format": {"type": "json_object"},
    },
    ("POST", "/v1/chat/completions"): {
        **CHAT,
        "messages": [
            {"role": "system", "content": "s", "name": "n"},
            {"role": "user", "content": [{"type": "text", "text": "t"}]},
        ],
        "user": "u",
        "metadata": {"k": "v"},
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object", "description": "d"},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object", "description": "d"}},
        },
        "stop": ["s"],
    },
    ("POST", "/v1/embeddings"): {"model": "text-embedding-3-small", "input": ["a"], "user": "u"},
    ("PUT", "/ai/prompt-types/{name}"): {
        "description": "d",
        "system_instruction": "s",
        "template": "{prompt_text}",
        "default_model": "gpt-4o-mini",
        "fallbacks": ["backup/gpt-4o-mini"],
    },
    ("POST", "/webhooks"): {
        "url": "https://example.com/hooks",
        "events": ["prompt.cancelled"],  # (nothing here is cancelled: no deliveries follow)
        "description": "d",
    },
    ("PATCH", "/webhooks/{webhook_id}"): {"url": "https://example.com/other", "description": "d"},
    ("POST", "/ai/admin/users"): {"email": "fuzz@example.com", "name": "n"},
    ("POST", "/ai/admin/teams"): {"name": "fuzz", "description": "d"},
    ("PUT", "/ai/admin/teams/{team_id}/members/{user_id}"): {"role": "member"},
    ("POST", "/ai/admin/keys"): {
        "user_id": "00000000-0000-4000-8000-000000000000",  # (none: a 404)
        "name": "n",
        "description": "d",
        "allowed_models": ["gpt-4o-mini"],
    },
    # (a default the fuzz sets is removed at once: see the end of the test)
    ("PUT", "/ai/admin/limits/default"): {"budget_period": "day"},
    ("PUT", "/ai/admin/limits/{scope}/{subject_id}"): {"budget_usd": "1.5", "budget_period": "day"},
}
_FUZZ: dict[int, tuple[dict[str, str], str]] = {}  # per app: its admin and a webhook's id
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
# Arbitrary text, and text sure to hold one of the characters that broke things before.
TEXT = ANY_TEXT | st.builds(
    lambda before, bad, after: before + bad + after,
    ANY_TEXT,
    st.sampled_from(["\x00", "\ud800", "\udfff", "\udbff", "\ud83d"]),
    ANY_TEXT,
)
# The operations, read from the app's OpenAPI document (no lifespan needed for that).
_DOC: dict[str, Any] = create_app(make_settings("sqlite+aiosqlite:///:memory:")).openapi()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = _DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _string_slots(schema: dict[str, Any], path: tuple[Any, ...]) -> list[Any]:
    """Where a string can go in a body of this schema: JSON paths, `("key", *path)` for an
    object's keys (metadata, variables)."""
    schema = _resolve(schema)
    slots: list[Any] = []
    for option in [*schema.get("anyOf", []), *schema.get("oneOf", [])]:
        slots += _string_slots(option, path)
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and schema.get("format") != "uuid":
        slots.append(path)
    if kind == "array" and "items" in schema:
        slots += _string_slots(schema["items"], (*path, 0))
    if kind == "object":
        for name, prop in schema.get("properties", {}).items():
            slots += _string_slots(prop, (*path, name))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            slots.append(("key", *path))
            slots += _string_slots(extra, (*path, "k"))
    return list(dict.fromkeys(slots))


def _put(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`body` with `value` at `path` (made where missing)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) and body else [{}]
        items[0] = _put(items[0], rest, value)
        return items
    current = dict(body) if isinstance(body, dict) else {}
    current[head] = _put(current.get(head, {}), rest, value)
    return current


def _slots(operation: dict[str, Any]) -> list[tuple[str, Any]]:
    content = operation.get("requestBody", {}).get("content", {})
    body = content.get("application/json", {}).get("schema", {})
    slots: list[tuple[str, Any]] = [("body", slot) for slot in _string_slots(body, ())]
    for parameter in operation.get("parameters", []):
        schema = _resolve(parameter["schema"])
        if any(
            s.get("type") == "string" and "enum" not in s
            for s in [schema, *schema.get("anyOf", [])]
        ):
            slots.append((parameter["in"], parameter["name"]))
    return slots


OPERATIONS = [
    (method.upper(), path, _slots(operation), "requestBody" in operation)
    for path, methods in _DOC["paths"].items()
    for method, operation in methods.items()
]
FUZZED = [(m, p, slots) for m, p, slots, _ in OPERATIONS if slots]


def test_every_operation_with_a_body_has_a_valid_example():
    """The property test below needs one; an operation added later must add it."""
    for method, path, _, has_body in OPERATIONS:
        if has_body:
            assert (method, path) in BODIES, f"add a valid body for {method} {path} to BODIES"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("method", "path", "slots"), FUZZED, ids=[f"{m} {p}" for m, p, _ in FUZZED]
)
@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_arbitrary_text_in_any_string_of_any_operation_is_never_a_5xx(
    api: Api, method: str, path: str, slots: list[tuple[str, Any]], data: st.DataObject
):
    if id(api) not in _FUZZ:
        admin = await api.new_user(is_admin=True)
        hook = await send(api, "POST", "/webhooks", admin, BODIES[("POST", "/webhooks")])
        assert hook.status_code == 201, hook.text
        _FUZZ[id(api)] = (admin, hook.json()["id"])
    admin, webhook_id = _FUZZ[id(api)]
    where, slot = data.draw(st.sampled_from(slots), label="slot")
    value = data.draw(HEADER_TEXT if where == "header" else TEXT, label="text")

    params = {"prompt_id": str(uuid.uuid4()), "name": "t-fuzz", "webhook_id": webhook_id}
    params |= {"delivery_id": str(uuid.uuid4()), "model_id": "gpt-4o-mini"}
    params |= {"team_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4())}
    params |= {"key_id": str(uuid.uuid4()), "scope": "user", "subject_id": str(uuid.uuid4())}
    body = BODIES.get((method, path))
    query: dict[str, str] = {}
    headers = dict(admin)
    if where == "body":
        body = (
            _put(body, slot[1:], {value: "v"}) if slot[:1] == ("key",) else _put(body, slot, value)
        )
    elif where == "path":
        params[slot] = value
    elif where == "query":
        query[slot] = value
    else:
        headers[slot] = value
    url = path.format(**{k: _quoted(v) for k, v in params.items()})
    if query:
        url += "?" + "&".join(f"{k}={_quoted(v)}" for k, v in query.items())
    response = await send(api, method, url, headers, body)
    assert response.status_code < 500, (method, url, body, response.text)
    assert "Traceback" not in response.text
    if where == "body" and text_problem(value) is not None:
        assert 400 <= response.status_code < 500, (method, url, body, response.text)
    if method == "POST" and path == "/ai/prompts/" and response.status_code == 202:
        # What was accepted can be read back.
        created = response.json()["id"]
        detail = await api.client.get(f"/ai/prompts/{created}", headers=admin)
        assert detail.status_code == 200, detail.text
    if path == "/ai/admin/limits/default" and response.status_code == 200:
        # A default the fuzz made (a budget of "8", say) would limit every later test's users.
        await send(api, "DELETE", path, admin, None)


def _quoted(value: str) -> str:
    # (a lone surrogate has no UTF-8 form: its bytes arrive as invalid UTF-8, read as U+FFFD)
    return quote(value.encode("utf-8", "surrogatepass"), safe="")
