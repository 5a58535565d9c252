"""A local server that speaks OpenAI's chat-completions wire format, for tests and benchmarks.

The official SDK talks to it over real HTTP on 127.0.0.1, exactly as it would to the vendor.
What it answers is chosen by the upstream model name, so a test picks a behaviour by naming a
model (`openai/error-429`, `openai/slow-500`, …):

- any other name: 200, `content` = "echo: <last user message>", with usage;
- `error-<status>[-anything]`: that status with OpenAI's error body (`429` and `503` carry
  `Retry-After: 1`, unless the name contains `no-retry-after`);
- `retry-after-<seconds>[-anything]`: 429 with that `Retry-After`;
- `flaky-<n>-<anything>`: the first n calls with this exact name get 503, later ones succeed;
- `slow-<ms>[-anything]`: waits that long, then answers normally;
- `hang[-anything]`: never answers (until the server stops);
- `reset[-anything]`: drops the connection without answering;
- `malformed[-anything]`: 200 with a body that is not JSON;
- `no-usage`: answers without a `usage` object;
- `cached-<n>[-anything]`: usage says n of the prompt tokens came from the prompt cache;
- `context-length`: 400 with code `context_length_exceeded`;
- `rejected-<code>`: 400 with that error `code` (`rejected-content_policy_violation`, …);
- `long-error`: 400 whose error message is 600 characters long;
- `html-<status>[-anything]`: that status with an HTML body, as a proxy in front would send;
- `filtered[-anything]`: 200 with `finish_reason` `content_filter`;
- `null-content[-anything]`: 200 with `content: null` (as for a refusal or a tool call);
- `no-choices[-anything]`: 200 with an empty `choices` list;
- `no-model[-anything]`: 200 without a `model` field;
- `wrong-shape[-anything]`: 200 with JSON that is not a chat completion (a choice whose
  `message` is a string); these last five are not streamed;
- `filtered-stream[-anything]`: like `filtered`, and streamed too (the last chunk's
  `finish_reason` is `content_filter`);
- `tool-call[-anything]`: a call of the request's first tool (`call_mock_1`, arguments
  `{"city": "Paris"}`, finish_reason `tool_calls`; streamed as OpenAI does: the id and name
  first, then the arguments in two pieces); when the last turn is a tool result, the text
  "tool said: <result>" instead;
- `json-city[-anything]`: the text `{"city": "Paris", "population": 2100000}`;
- `reasoning-<n>[-anything]`: usage says n of the completion tokens were reasoning;
- `refuses[-anything]`: `content` null and a `refusal` message (streamed: a refusal delta).
With `"logprobs": true`, each word of the answer comes with its log probability (and
`top_logprobs` alternatives), whole or streamed.

`"stream": true` gets the same answer as server-sent chunks, ending `data: [DONE]`, with a
usage chunk first when `stream_options.include_usage` is set. Streams also know the behaviours
of `tests.mocks.server.STREAM_BEHAVIOURS` (`drip-<ms>`, `break-<n>`, `stall-<n>`, `bad-chunk`);
not streamed, `break-<n>` is `reset`, `stall-<n>` is `hang`, `bad-chunk` is `malformed`, and
`drip-<ms>` answers at once. A stream the client leaves before its end is recorded (by model
name) in `abandoned`.

`POST /v1/embeddings` answers deterministic vectors (`mock_vector`: unit length, derived from
a hash of each input; `dimensions` long, else 3072 for a model named `*-large`, 1536 for any
other), as float32 numbers, or base64 with `"encoding_format": "base64"`; usage counts the
inputs' words. Its behaviours, by model name: `error-<status>[-anything]` (`429` and `503`
with `Retry-After: 1`, unless the name contains `no-retry-after`), `flaky-<n>-<anything>`,
`slow-<ms>[-anything]`, `hang[-anything]`, `reset[-anything]` and `malformed[-anything]` as
above; `no-usage[-anything]`: no `usage`;
`floats[-anything]`: numbers even when base64 is asked for (as some compatible servers do);
`fixed-<n>[-anything]`: vectors of n dimensions whatever `dimensions` says; `short[-anything]`:
one embedding fewer than the inputs; `shuffled[-anything]`: the items listed last first (their
`index` says where each belongs).

Every request is recorded (path, headers, JSON body) in `calls`. Run standalone for benchmarks:
`python -m tests.mocks.openai_server --port 9100 [--delay-ms 50]`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.mocks.server import (
    BackgroundServer,
    Frame,
    Releasable,
    send_stream,
    serve_standalone,
)

MOCK_API_KEY = "sk-mock-0123456789abcdef"
# A second key the mock accepts, so one mock can stand in for two differently keyed servers.
OTHER_API_KEY = "sk-other-fedcba9876543210"


@dataclass
class RecordedCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class MockOpenAI:
    api_key: str = MOCK_API_KEY
    delay_ms: float = 0.0
    calls: list[RecordedCall] = field(default_factory=list)
    base_url: str = ""
    abandoned: list[str] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _hanging: Releasable = field(default_factory=Releasable)
    _server: BackgroundServer = field(default_factory=lambda: BackgroundServer("mock-openai"))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._hanging.install(app)
        return app

    def calls_for(self, model: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.body.get("model") == model]

    async def _received(self, request: web.Request) -> tuple[dict[str, Any], str, bool]:
        """Record the request and take its time (the delay, `slow-<ms>`): its body, its model,
        and whether its key is one of the mock's."""
        body = await request.json()
        self.calls.append(RecordedCall(request.path, dict(request.headers), body))
        authorized = request.headers.get("Authorization") in (
            f"Bearer {self.api_key}",
            f"Bearer {OTHER_API_KEY}",
        )
        model = str(body.get("model", ""))
        if authorized:
            self._seen[model] = self._seen.get(model, 0) + 1
            if self.delay_ms:
                await asyncio.sleep(self.delay_ms / 1000)
            if model.startswith("slow-"):
                await asyncio.sleep(int(model.split("-")[1]) / 1000)
        return body, model, authorized

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, model, authorized = await self._received(request)
        if not authorized:
            return _unauthorized()
        streamed = bool(body.get("stream"))
        if model.startswith("hang") or (model.startswith("stall-") and not streamed):
            await self._hanging.wait()
        if model.startswith("reset") or (model.startswith("break-") and not streamed):
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if model.startswith("malformed") or (model.startswith("bad-chunk") and not streamed):
            return web.Response(text="{this is not json", content_type="application/json")
        if model.startswith("flaky-") and self._seen[model] <= int(model.split("-")[1]):
            return _error(503, "mock flaky 503", "mock_error", None)
        if model.startswith("retry-after-"):
            seconds = model.split("-")[2]
            return _error(429, "slow down", "rate_limit", None, {"Retry-After": seconds})
        if model.startswith("error-"):
            return _status_error(model)
        if model.startswith("rejected-"):
            code = model.removeprefix("rejected-")
            return _error(400, f"mock rejected: {code}", "invalid_request_error", code)
        if model == "long-error":
            return _error(400, "x" * 600, "invalid_request_error", None)
        if model.startswith("html-"):
            status = int(model.split("-")[1])
            page = "<html><body>Bad Gateway</body></html>"
            return web.Response(status=status, text=page, content_type="text/html")
        if model == "context-length":
            return _error(
                400,
                "This model's maximum context length is 8 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        messages = body.get("messages") or [{"content": ""}]
        last = messages[-1]
        text = "echo: " + _text(last.get("content"))
        if model.startswith("tool-call") and last.get("role") == "tool":
            text = "tool said: " + _text(last.get("content"))
        elif model.startswith("json-city"):
            text = json.dumps({"city": "Paris", "population": 2100000})
        max_tokens = body.get("max_tokens")
        words = text.split()
        finish = "stop"
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
            text = " ".join(words)
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
        reply: dict[str, Any] = {
            "id": f"chatcmpl-mock{len(self.calls)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
        }
        if model != "no-usage":
            reply["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            }
            if model.startswith("cached-"):
                cached = min(prompt_tokens, int(model.split("-")[1]))
                reply["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
            if model.startswith("reasoning-"):
                reasoning = int(model.split("-")[1])
                reply["usage"]["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        choice = reply["choices"][0]
        tools = body.get("tools") or []
        if model.startswith("tool-call") and last.get("role") != "tool" and tools:
            choice["message"] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_mock_1",
                        "type": "function",
                        "function": {
                            "name": tools[0]["function"]["name"],
                            "arguments": '{"city": "Paris"}',
                        },
                    }
                ],
            }
            choice["finish_reason"] = "tool_calls"
            words = []
        if model.startswith("refuses"):
            choice["message"] = {
                "role": "assistant",
                "content": None,
                "refusal": "I can't help with that.",
            }
            words = []
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [_logprob(w, body) for w in words]}
        _more_choices(reply, words, body)
        if streamed:
            frames = _chunks(reply, words, body)
            return await send_stream(
                request,
                frames,
                model=model,
                bad_frame=b"data: {this is not json\n\n",
                hanging=self._hanging,
                abandoned=self.abandoned,
            )
        _vary(model, reply)
        return web.json_response(reply)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, model, authorized = await self._received(request)
        if not authorized:
            return _unauthorized()
        if model.startswith("hang"):
            await self._hanging.wait()
        if model.startswith("reset"):
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if model.startswith("malformed"):
            return web.Response(text="{this is not json", content_type="application/json")
        if model.startswith("flaky-") and self._seen[model] <= int(model.split("-")[1]):
            return _error(503, "mock flaky 503", "mock_error", None)
        if model.startswith("error-"):
            return _status_error(model)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(text, str) and text for text in inputs)
        ):
            return _error(400, "'$.input' is invalid.", "invalid_request_error", None)
        dimensions = body.get("dimensions") or (3072 if model.endswith("-large") else 1536)
        if model.startswith("fixed-"):
            dimensions = int(model.split("-")[1])
        base64_format = body.get("encoding_format") == "base64" and not model.startswith("floats")
        data = []
        for index, text in enumerate(inputs):
            vector = mock_vector(text, dimensions)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if base64_format
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        if model.startswith("short"):
            data.pop()
        if model.startswith("shuffled"):
            data.reverse()
        reply: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not model.startswith("no-usage"):
            tokens = sum(len(text.split()) for text in inputs)
            reply["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(reply)

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1; returns the base URL to give the SDK."""
        self.base_url = self._server.start(self.app()) + "/v1"
        return self.base_url

    def stop(self) -> None:
        self._server.stop()


def mock_vector(text: str, dimensions: int) -> list[float]:
    """The mock's vector of `text`: `dimensions` float32 numbers of unit length, from SHA-256
    of the text (so the same text always gets the same vector, and another text another)."""
    raw = b""
    block = 0
    while len(raw) < 2 * dimensions:
        raw += hashlib.sha256(f"{block}:{text}".encode()).digest()
        block += 1
    values = [
        (int.from_bytes(raw[2 * i : 2 * i + 2], "little") - 32768) / 32768
        for i in range(dimensions)
    ]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Rounded to float32, as a vendor's numbers are.
    return list(
        struct.unpack(
            f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))
        )
    )


def _vary(model: str, reply: dict[str, Any]) -> None:
    """The successful answers that differ from the usual one, chosen by the model name."""
    choice = reply["choices"][0]
    if model.startswith("filtered"):
        choice["finish_reason"] = "content_filter"
    if model.startswith("null-content"):
        choice["message"]["content"] = None
    if model.startswith("no-choices"):
        reply["choices"] = []
    if model.startswith("no-model"):
        del reply["model"]
    if model.startswith("wrong-shape"):
        choice["message"] = "not an object"


def _more_choices(reply: dict[str, Any], words: list[str], body: dict[str, Any]) -> None:
    """`n` > 1: answers 1 .. n-1, each the first one with ` #<index>` added to its text (its
    tool calls with their own ids); the usage counts every answer's words, as OpenAI's does."""
    n = body.get("n") or 1
    first = reply["choices"][0]
    for index in range(1, n):
        message = json.loads(json.dumps(first["message"]))
        if message.get("content") is not None:
            message["content"] += f" #{index}"
        for call in message.get("tool_calls") or []:
            call["id"] += f"_{index}"
        choice = {"index": index, "message": message, "finish_reason": first["finish_reason"]}
        reply["choices"].append(choice)
    if n > 1 and "usage" in reply:
        extra = (n - 1) * (len(words) + 1) if first["message"].get("content") is not None else 0
        reply["usage"]["completion_tokens"] += extra
        reply["usage"]["total_tokens"] += extra


def _chunks(reply: dict[str, Any], words: list[str], body: dict[str, Any]) -> list[Frame]:
    """The answer as server-sent `chat.completion.chunk`s: per answer (with `n` > 1 the
    answers' chunks interleaved, as OpenAI's are) a role delta, one delta per word, the finish
    reason; a usage chunk with no choices when `stream_options.include_usage` asks for it,
    then `[DONE]`."""
    base = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    answers = [
        _choice_chunks(base, reply, index, words + ([f"#{index}"] if index else []), body)
        for index in range(len(reply["choices"]))
    ]
    frames = [frame for step in itertools.zip_longest(*answers) for frame in step if frame]
    if (body.get("stream_options") or {}).get("include_usage") and "usage" in reply:
        frames.append(Frame(_data(base | {"choices": [], "usage": reply["usage"]})))
    frames.append(Frame(b"data: [DONE]\n\n"))
    return frames


def _choice_chunks(
    base: dict[str, Any], reply: dict[str, Any], index: int, words: list[str], body: dict[str, Any]
) -> list[Frame]:
    finish = reply["choices"][index]["finish_reason"]
    if reply["model"].startswith("filtered-stream"):
        finish = "content_filter"
    message = reply["choices"][index]["message"]
    if message.get("content") is None:
        words = []
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]
    for call in message.get("tool_calls") or []:
        function = call["function"]
        first = {"name": function["name"], "arguments": ""}
        deltas.append(
            {"tool_calls": [{"index": 0, "id": call["id"], "type": "function", "function": first}]}
        )
        for piece in ('{"city": ', '"Paris"}'):
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    if message.get("refusal"):
        deltas.append({"refusal": message["refusal"]})
    frames = []
    for i, delta in enumerate(deltas):
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if body.get("logprobs") and 0 < i <= len(words):
            choice["logprobs"] = {"content": [_logprob(words[i - 1], body)]}
        frames.append(Frame(_data(base | {"choices": [choice]}), text=bool(delta.get("content"))))
    last = base | {"choices": [{"index": index, "delta": {}, "finish_reason": finish}]}
    frames.append(Frame(_data(last)))
    return frames


def _text(content: Any) -> str:
    """A message's text: its content, or the text of its parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return "" if content is None else str(content)


def _logprob(word: str, body: dict[str, Any]) -> dict[str, Any]:
    top = body.get("top_logprobs") or 0
    alternatives = [{"token": f"{word}{i}", "logprob": -1.0 - i, "bytes": None} for i in range(top)]
    return {"token": word, "logprob": -0.25, "bytes": None, "top_logprobs": alternatives}


def _data(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _unauthorized() -> web.Response:
    return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def _status_error(model: str) -> web.Response:
    """`error-<status>[-anything]`: that status, with `Retry-After: 1` on 429 and 503 unless
    the name says `no-retry-after`."""
    status = int(model.split("-")[1])
    headers = None
    if status in (429, 503) and "no-retry-after" not in model:
        headers = {"Retry-After": "1"}
    return _error(status, f"mock error {status}", "mock_error", None, headers)


def _error(
    status: int, message: str, kind: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def main() -> None:
    serve_standalone(__doc__ or "", 9100, MOCK_API_KEY, lambda key, delay: MockOpenAI(key, delay))


if __name__ == "__main__":
    main()
