"""A local server that speaks Anthropic's Messages API wire format, for tests and benchmarks.

The official SDK talks to it over real HTTP on 127.0.0.1, exactly as it would to the vendor
(`base_url` is the server root: the SDK itself adds `/v1/messages`). It checks what the real
API checks first: a key (`x-api-key`, or `Authorization: Bearer` as SDK 2.x sends it), an
`anthropic-version` header, `max_tokens`, and, under API version 2026-10-21, the absence of the
removed sampling parameters (`temperature`, `top_p`, `top_k` answer 400 there, even at 1.0).
What it answers is chosen by the model name, so a test picks a behaviour by naming a model:

- any other name: 200, one text block "echo: <last user text>", with usage; `"stream": true`
  answers the same as named SSE events (message_start … message_stop). A turn's text is that
  of its text blocks (image and tool_use blocks have none), and a `tool_result` block reads
  "tool said: <its content>";
- `error-<status>`: that status with Anthropic's error body; 429, 503 and 529 carry
  `Retry-After: 1` (`error-429-no-retry-after` does not); 529 is `overloaded_error`;
- `slow-<ms>[-anything]`: waits that long, then answers normally;
- `trickle-<ms>`: sends the normal reply's headers at once and its body in small pieces spread
  over that long, so no single read waits long but the whole call does;
- `hang`: never answers (released when the server stops, so it still shuts down promptly);
- `reset`: resets the connection (TCP RST) without sending a response;
- `malformed`: 200, `application/json`, a body that is not JSON; `malformed-html`: 200 with an
  HTML page; `malformed-shape`: 200 with JSON that is not a message;
- `no-usage`: a message without `usage` (streamed: no `usage` in any event);
- `cached-<n>[-anything]`: usage says n of the prompt tokens were read from the prompt cache
  (`cache_read_input_tokens`, which Anthropic counts apart from `input_tokens`);
- `refusal`: `stop_reason` "refusal" with `stop_details` (streamed: in `message_delta`);
- `context-length`: 400 invalid_request_error "prompt is too long: N tokens > M maximum";
- `overloaded-mid-stream`: streamed, one piece of text and then an `error` event of type
  `overloaded_error`, as the API sends under load; not streamed, 529;
- `tool-call[-anything]`: one `tool_use` block calling the request's first tool (id
  `toolu_mock_1`, input `{"city": "Paris"}`), `stop_reason` "tool_use" (400 when the request
  has no tools); streamed, `content_block_start` with the block (input `{}`), two
  `input_json_delta`s (`{"city": ` and `"Paris"}`) and `content_block_stop`. Once the last
  user turn holds a `tool_result`, it answers in text, "tool said: <result>", and end_turn;
- `json-city[-anything]`: the text `{"city": "Paris", "population": 2100000}`;
- whatever the name, a `tool_choice` that forces a tool (`{"type": "tool", "name": …}`) is
  answered as the API does: with one `tool_use` block calling that tool (id `toolu_mock_1`),
  no text, and `stop_reason` "tool_use" (streamed as for `tool-call`). Its input is an instance
  of the tool's `input_schema`: a property named `city` is "Paris", one named `population`
  2100000, others a value of their type ("text", 1, 1.5, true, an array of one item, ...);
- `thinking`: a `thinking` block ("let me think", signature "sig") before the text block,
  its words counted as output; streamed, as `thinking_delta` and `signature_delta` events.

Like the API, it refuses (400) a `thinking` budget under 1024 or not below `max_tokens`,
`thinking` with a `tool_choice` that forces tool use (`any` or `tool`), a `tool_choice` naming
a tool the request does not have, and a `tool_result` whose `tool_use_id` is not that of a
`tool_use` in the turn before it.

Streams also know the behaviours of `tests.mocks.server.STREAM_BEHAVIOURS` (`drip-<ms>`,
`break-<n>`, `stall-<n>`, `bad-chunk`); not streamed, `break-<n>` is `reset`, `stall-<n>` is
`hang`, `bad-chunk` is `malformed`, and `drip-<ms>` answers at once. A stream the client leaves
before its end is recorded (by model name) in `abandoned`.

Every request is recorded (path, headers, JSON body, which auth header, which API version) in
`calls`. Run standalone for benchmarks:
`python -m tests.mocks.anthropic_server --port 9300 [--delay-ms 50]`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.mocks.server import (
    BackgroundServer,
    Frame,
    Releasable,
    reset_connection,
    send_stream,
    serve_standalone,
)

MOCK_API_KEY = "sk-ant-mock-fedcba9876543210"
SAMPLING_VERSION = "2023-06-01"  # the last API version that accepts temperature/top_p/top_k
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class RecordedCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    auth: str | None  # "x-api-key", "bearer", or None when neither header was sent
    api_version: str | None


@dataclass
class MockAnthropic:
    api_key: str = MOCK_API_KEY
    delay_ms: float = 0.0
    calls: list[RecordedCall] = field(default_factory=list)
    base_url: str = ""
    abandoned: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _hanging: Releasable = field(default_factory=Releasable)
    _server: BackgroundServer = field(default_factory=lambda: BackgroundServer("mock-anthropic"))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._hanging.install(app)
        return app

    def calls_for(self, model: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.body.get("model") == model]

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "There was an error parsing the body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        auth, key = _credentials(request)
        version = request.headers.get("anthropic-version")
        self.calls.append(RecordedCall(request.path, dict(request.headers), body, auth, version))
        if key != self.api_key:
            return _error(401, "invalid x-api-key")
        if not version:
            return _error(400, "anthropic-version: header is required")
        rejected = [p for p in SAMPLING_PARAMETERS if p in body and version != SAMPLING_VERSION]
        if rejected:
            return _error(400, f"{rejected[0]}: Extra inputs are not permitted")
        if not isinstance(body.get("max_tokens"), int):
            return _error(400, "max_tokens: Field required")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "messages: at least one message is required")
        if problem := (
            _thinking_problem(body)
            or _tool_choice_problem(body)
            or _tool_result_problem(body["messages"])
        ):
            return _error(400, problem)
        return await self._behave(request, body, str(body.get("model", "")))

    async def _behave(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-")[1]) / 1000)
        streamed = bool(body.get("stream"))
        if model == "hang" or (model.startswith("stall-") and not streamed):
            await self._hanging.wait()  # released when the server stops
            return _error(500, "the mock server stopped")
        if model == "reset" or (model.startswith("break-") and not streamed):
            reset_connection(request)
            raise web.HTTPInternalServerError()  # never sent: the connection is gone
        if model == "overloaded-mid-stream" and not streamed:
            return _error(529, "Overloaded", {"Retry-After": "1"})
        if model.startswith("error-"):
            status = int(model.removeprefix("error-").split("-")[0])
            retry = status in (429, 503, 529) and not model.endswith("no-retry-after")
            return _error(status, f"mock error {status}", {"Retry-After": "1"} if retry else None)
        if model == "context-length":
            return _error(400, "prompt is too long: 250000 tokens > 200000 maximum")
        if model == "malformed" or (model.startswith("bad-chunk") and not streamed):
            return web.Response(
                text='{"id": "msg_01", "content": [', content_type="application/json"
            )
        if model == "malformed-html":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>")
        if model == "malformed-shape":
            return web.json_response({"unexpected": True})
        answered = _tool_said(_last_user_content(body["messages"]))
        if model.startswith("tool-call") and not answered and not _first_tool(body):
            return _error(400, "tool-call: the request has no tools to call")
        message = _reply(body, model, f"msg_mock{next(self._ids):08d}")
        if streamed:
            return await send_stream(
                request,
                _events(message),
                model=model,
                bad_frame=b"event: content_block_delta\ndata: {this is not json\n\n",
                hanging=self._hanging,
                abandoned=self.abandoned,
                headers={"Cache-Control": "no-cache"},
            )
        if model.startswith("trickle-"):
            return await _trickle(request, message, int(model.split("-")[1]) / 1000)
        return web.json_response(message, headers={"request-id": message["id"]})

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1; returns the base URL to give the SDK."""
        self.base_url = self._server.start(self.app())
        return self.base_url

    def stop(self) -> None:
        self._server.stop()


def _credentials(request: web.Request) -> tuple[str | None, str | None]:
    """Which auth header was sent, and its key. The API prefers x-api-key when both are."""
    if "x-api-key" in request.headers:
        return "x-api-key", request.headers["x-api-key"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return "bearer", token
    return None, None


def _text_of(content: Any) -> str:
    """A message's or system prompt's text: a string, or that of a list of blocks: the text of
    its text blocks, and "tool said: <its content>" for a tool_result (others have none)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    text = ""
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            text += str(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            text += (" " if text else "") + _said(block)
    return text


def _said(result: dict[str, Any]) -> str:
    return "tool said: " + _text_of(result.get("content"))


def _tool_said(content: Any) -> list[str]:
    """What the tool_result blocks of a turn's content said, in order."""
    if not isinstance(content, list):
        return []
    return [
        _said(block)
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def _last_user_content(messages: list[Any]) -> Any:
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1].get("content") if users else ""


def _first_tool(body: dict[str, Any]) -> str | None:
    """The name of the request's first tool, if it has one."""
    tools = body.get("tools")
    first = tools[0] if isinstance(tools, list) and tools else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if isinstance(name, str) else None


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the request's `tool_choice` forces the model to call, if it forces one."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    named = [t for t in tools if isinstance(t, dict) and t.get("name") == choice.get("name")]
    return named[0] if named else None


def _tool_choice_problem(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return None
    thinking = body.get("thinking")
    thinks = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    if thinks and choice.get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    if choice.get("type") == "tool" and _forced_tool(body) is None:
        return f"tool_choice: tool {choice.get('name')!r} was not found in the request's tools"
    return None


# What the mock "knows": the value it gives a property of these names in a forced tool's input.
KNOWN_VALUES: dict[str, Any] = {"city": "Paris", "population": 2100000}
_TYPE_VALUES: dict[str, Any] = {
    "string": "text",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "null": None,
}


def _instance(schema: Any, name: str | None = None) -> Any:
    """A value of a JSON schema (the common keywords; `$ref`s are not followed)."""
    if name in KNOWN_VALUES:
        return KNOWN_VALUES[name]
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _instance(schema[key][0], name)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        return {key: _instance(value, key) for key, value in properties.items()}
    if kind == "array":
        return [_instance(schema.get("items"))]
    return _TYPE_VALUES.get(kind)


def _thinking_problem(body: dict[str, Any]) -> str | None:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if body["max_tokens"] <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    return None


def _tool_result_problem(messages: list[Any]) -> str | None:
    """A tool_result must answer a tool_use of the turn just before it."""
    for number, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        answered = [
            block.get("tool_use_id")
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        before = messages[number - 1] if number else {}
        called = before.get("content") if isinstance(before, dict) else None
        ids = {
            block.get("id")
            for block in (called if isinstance(called, list) else [])
            if isinstance(block, dict) and block.get("type") == "tool_use"
        }
        for call_id in answered:
            if call_id not in ids:
                return (
                    f"messages.{number}.content: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {call_id}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
    return None


CITY_JSON = '{"city": "Paris", "population": 2100000}'
THINKING = {"type": "thinking", "thinking": "let me think", "signature": "sig"}


def _reply(body: dict[str, Any], model: str, message_id: str) -> dict[str, Any]:
    messages = body["messages"]
    last = _last_user_content(messages)
    results = _tool_said(last)
    if model.startswith("json-city"):
        answer = CITY_JSON
    elif model.startswith("tool-call") and results:
        answer = " ".join(results)
    else:
        answer = "echo: " + _text_of(last)
    words = answer.split()
    stop_reason = "end_turn"
    if len(words) > body["max_tokens"]:
        words, stop_reason = words[: body["max_tokens"]], "max_tokens"
    prompt = [_text_of(body.get("system"))] + [_text_of(m.get("content")) for m in messages]
    reply: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": " ".join(words)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": len(" ".join(prompt).split()), "output_tokens": len(words)},
    }
    forced = _forced_tool(body)
    if forced is not None or (model.startswith("tool-call") and not results):
        if forced is not None:
            arguments, name = _instance(forced.get("input_schema")), forced["name"]
        else:
            arguments, name = {"city": "Paris"}, _first_tool(body)
        call = {"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": arguments}
        reply["content"] = [call]
        reply["stop_reason"] = "tool_use"
        reply["usage"]["output_tokens"] = len(json.dumps(arguments).split())
    if model == "thinking":
        reply["content"].insert(0, dict(THINKING))
        reply["usage"]["output_tokens"] += len(THINKING["thinking"].split())
    if model == "refusal":
        reply["content"] = []
        reply["stop_reason"] = "refusal"
        reply["stop_details"] = {
            "type": "refusal",
            "category": "cyber",
            "explanation": "The request could enable cyber harm.",
        }
    if model.startswith("cached-"):
        cached = min(reply["usage"]["input_tokens"], int(model.split("-")[1]))
        reply["usage"]["input_tokens"] -= cached
        reply["usage"]["cache_read_input_tokens"] = cached
    if model == "no-usage":
        del reply["usage"]
    return reply


def _events(message: dict[str, Any]) -> list[Frame]:
    """The message as the named SSE events of the 2023-06-01+ streaming format."""
    usage = message.get("usage")
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    if usage is not None:
        start["usage"] = {**usage, "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": start})]
    events.append(("ping", {}))
    for index, block in enumerate(message["content"]):
        opening, deltas = _block_events(block)
        events.append(("content_block_start", {"index": index, "content_block": opening}))
        for delta in deltas:
            events.append(("content_block_delta", {"index": index, "delta": delta}))
        events.append(("content_block_stop", {"index": index}))
    if message["model"] == "overloaded-mid-stream":
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return _frames([*events[:4], ("error", {"error": error})])
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    if "stop_details" in message:
        delta["stop_details"] = message["stop_details"]
    ending: dict[str, Any] = {"delta": delta}
    if usage is not None:
        ending["usage"] = {"output_tokens": usage["output_tokens"]}
    events.append(("message_delta", ending))
    events.append(("message_stop", {}))
    return _frames(events)


def _block_events(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A content block as streamed: how its `content_block_start` shows it, and its deltas (a
    tool call's input in two pieces, cut after its first `: `; text a word at a time)."""
    if block["type"] == "tool_use":
        arguments = json.dumps(block["input"])
        cut = arguments.find(": ") + 2
        pieces = [arguments[:cut], arguments[cut:]]
        return {**block, "input": {}}, [
            {"type": "input_json_delta", "partial_json": piece} for piece in pieces if piece
        ]
    if block["type"] == "thinking":
        return {**block, "thinking": "", "signature": ""}, [
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    deltas = []
    for i, word in enumerate(block["text"].split(" ")):
        deltas.append({"type": "text_delta", "text": word if i == 0 else " " + word})
    return {**block, "text": ""}, deltas


def _frames(events: list[tuple[str, dict[str, Any]]]) -> list[Frame]:
    return [
        Frame(
            f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode(),
            text=name == "content_block_delta",
        )
        for name, data in events
    ]


async def _trickle(
    request: web.Request, message: dict[str, Any], seconds: float, pieces: int = 20
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    data = json.dumps(message).encode()
    size = -(-len(data) // pieces)
    try:
        for start in range(0, len(data), size):
            await asyncio.sleep(seconds / pieces)
            await response.write(data[start : start + size])
        await response.write_eof()
    except ConnectionError:  # the client gave up first, as it should
        pass
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def main() -> None:
    serve_standalone(
        __doc__ or "", 9300, MOCK_API_KEY, lambda key, delay: MockAnthropic(key, delay)
    )


if __name__ == "__main__":
    main()
