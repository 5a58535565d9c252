"""Every cell of the translation matrix (app/providers/fidelity.py), through the gateway.

For each row (a request field, or a message feature), each provider kind and both forms
(streamed or not), the official `openai` SDK sends the row's sample (tests/fidelity_samples.py)
to /v1/chat/completions, and:

- `forwarded`: the vendor's wire-level mock received the field exactly as the client sent it;
- `translated`: it received the vendor's equivalent (`tests/mocks/*_expect.py` say what);
- `recorded`: it did not receive it, and the prompt keeps it (`parameters`);
- `refused`: the SDK gets a 400 `unsupported_parameter` naming the field and the provider,
  and nothing is recorded or sent.

In every sent case the SDK parses the answer, and the prompt records the request's fields.
The local model is the real llama.cpp server; what it is sent is read at the adapter's
request body (it has no mock). The matrix does not depend on the backend, so this runs on
PostgreSQL only (the production store, whose jsonb keeps every field).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest

from app.providers import fidelity, openai_http
from tests.fidelity_samples import SAMPLES
from tests.mocks.anthropic_expect import EXPECTED as ANTHROPIC_EXPECTED
from tests.mocks.gemini_expect import EXPECTED as GEMINI_EXPECTED
from tests.openai_compat.conftest import V1

ON_POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

HELLO = [{"role": "user", "content": "Say hello"}]
PROVIDER_OF: dict[str, str] = {
    "openai": "openai",
    "gemini": "gemini",
    "anthropic": "anthropic",
    "local": "local",
}
EXPECTED: dict[str, dict[str, Callable[[dict[str, Any]], None]]] = {
    "gemini": GEMINI_EXPECTED,
    "anthropic": ANTHROPIC_EXPECTED,
}
CELLS = [
    pytest.param(row.name, kind, row.cells[kind].how, id=f"{kind}-{row.name}")
    for row in fidelity.ROWS
    for kind in fidelity.KINDS
]


def _body(row: str, model: str) -> dict[str, Any]:
    sample = SAMPLES[row]
    body: dict[str, Any] = {"model": model, "messages": HELLO, "max_tokens": 16, **sample}
    return body


@pytest.fixture
def local_bodies(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The request bodies the local model's adapter sends to llama.cpp."""
    bodies: list[dict[str, Any]] = []
    build = openai_http._request_body

    def recorded(request: Any) -> dict[str, Any]:
        body = build(request)
        bodies.append(body)
        return body

    monkeypatch.setattr(openai_http, "_request_body", recorded)
    return bodies


async def _send(client: openai.AsyncOpenAI, body: dict[str, Any], stream: bool) -> Any:
    """The SDK's parsed answer: a completion, or for a stream its chunks (each parsed)."""
    if stream:
        chunks = await client.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}
        )
        return [chunk async for chunk in chunks]
    return await client.chat.completions.create(**body)


def _assert_parsed(answer: Any, stream: bool) -> None:
    """What the SDK parsed is a whole answer: text or tool calls, a finish reason, usage."""
    if stream:
        finishes = [c.choices[0].finish_reason for c in answer if c.choices]
        assert finishes[-1] in ("stop", "length", "tool_calls"), finishes
        assert answer[-1].usage is not None and answer[-1].usage.completion_tokens >= 0
    else:
        choice = answer.choices[0]
        assert choice.finish_reason in ("stop", "length", "tool_calls")
        assert choice.message.content is not None or choice.message.tool_calls
        assert answer.usage.total_tokens > 0


@ON_POSTGRESQL
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("row", "kind", "how"), CELLS)
async def test_each_cell_of_the_matrix(
    v1: V1,
    request: pytest.FixtureRequest,
    local_bodies: list[dict[str, Any]],
    row: str,
    kind: str,
    how: str,
    stream: bool,
):
    key, headers = await v1.user()
    upstream = f"fidelity-{uuid.uuid4().hex[:12]}"
    model = "local" if kind == "local" else f"{PROVIDER_OF[kind]}/{upstream}"
    body = _body(row, model)
    async with v1.client(key) as client:
        if how == "refused":
            with pytest.raises(openai.BadRequestError) as raised:
                await _send(client, body, stream)
            assert raised.value.code == "unsupported_parameter"
            # (a sample that needs two fields, both refused, is refused for the first)
            assert raised.value.param in (row, *SAMPLES[row])
            assert PROVIDER_OF[kind] in raised.value.message
            page = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()
            assert page["items"] == []
            if kind != "local":
                assert request.getfixturevalue(f"mock_{kind}").calls_for(upstream) == []
            return
        answer = await _send(client, body, stream)
    _assert_parsed(answer, stream)

    if kind == "local":
        [received] = local_bodies
    else:
        [call] = request.getfixturevalue(f"mock_{kind}").calls_for(upstream)
        received = call.body
    sample = SAMPLES[row]
    if how == "forwarded":
        for name, value in sample.items():
            assert received[name] == value, (name, received.get(name))
    elif kind in EXPECTED:
        EXPECTED[kind][row](received)
    else:  # recorded: kept on the prompt (below), not sent
        assert how == "recorded" and row not in received, received

    # The prompt keeps every field the client sent.
    [item] = (await v1.api.client.get("/ai/prompts/", headers=headers)).json()["items"]
    prompt = (await v1.api.client.get(f"/ai/prompts/{item['id']}", headers=headers)).json()
    parameters = prompt["parameters"]
    for name, value in sample.items():
        if name == "messages":
            assert parameters["messages"] == value
        elif name in fidelity.OPTION_FIELDS:
            assert parameters[name] == value, name


def test_the_matrix_has_a_test_for_every_cell():
    """Every row has a sample and, for each provider that translates it, an expectation."""
    assert {row.name for row in fidelity.ROWS} == set(SAMPLES)
    for kind, expected in EXPECTED.items():
        translated = {
            row.name for row in fidelity.ROWS if row.cells[kind].how in ("translated", "recorded")
        }
        assert translated == set(expected), kind
