"""A local server that speaks the Gemini API's wire format, for tests and benchmarks.

The official `google-genai` SDK talks to it over real HTTP on 127.0.0.1, exactly as it would to
`generativelanguage.googleapis.com`: `POST /v1/models/{model}:generateContent` and
`POST /v1/models/{model}:streamGenerateContent?alt=sse`, the key in `x-goog-api-key`.
What it answers is chosen by the model name in the URL:

- any other name: 200, text "echo: <last user message>", with usageMetadata and modelVersion
  `<model>-001`; `maxOutputTokens` (in words here) truncates with finishReason MAX_TOKENS;
- `error-<status>`: that status with Google's error body (`429` carries `Retry-After: 1` and a
  RetryInfo of 1s, `503` carries `Retry-After: 2`); `error-429-no-retry-after` has neither,
  `error-429-retry-info` has only RetryInfo (7s), as the real API usually answers;
- `slow-<ms>[-anything]`: waits that long, then answers normally;
- `hang`: never answers; it ends when the client goes away or the server stops;
- `reset`: drops the connection (TCP RST) without a response;
- `malformed`: 200 whose body is not JSON;
- `no-usage`: answers without usageMetadata;
- `blocked`: the answer was withheld (candidate finishReason SAFETY, no content);
- `blocked-prompt`: the prompt was refused (promptFeedback.blockReason SAFETY, no candidates);
- `context-length`: 400 with the message Google gives for an input over the model's limit;
- `continuation`: finishReason CONTINUATION with a continuationToken (which the 3.x SDK follows
  with another call unless told not to); a request carrying the token gets the normal answer;
- `cached-<n>[-anything]`: usageMetadata says n of the prompt tokens came from cached content;
- `tool-call[-anything]`: unless the last user content holds a functionResponse, one
  `functionCall` part `{"name": <the first functionDeclaration's name>, "args": {"city":
  "Paris"}}`, finishReason STOP, in one chunk when streamed (400 if the request declares no
  function); `tool-call-with-id` gives it `"id": "fc_mock_1"`; after a functionResponse, the
  text "tool said: <its response.result>";
- `json-city`: the text `{"city": "Paris", "population": 2100000}`;
- `reasoning-<n>[-anything]`: usageMetadata's `thoughtsTokenCount` is n.

Whatever the model, `generationConfig.responseLogprobs` true gives each piece of text (one
token here) a `logprobsResult` (`chosenCandidates`; with `logprobs` k, also k `topCandidates`:
the chosen token, then "<token>~1", ...), joined over the pieces when not streamed; a
`candidateCount` n gives n candidates, candidate i > 0 saying the same with " #i" after it
(a function call: the same call, with the same id), each under its `index`.

Parts other than text (`inlineData`, `functionCall`, `functionResponse`; the SDK writes some of
their fields in snake_case, which Google accepts too) are taken as they come: the echo is the
text of the last user turn's text parts, and a functionResponse part in it reads
"tool said: <its response.result>".

Streams also know the behaviours of `tests.mocks.server.STREAM_BEHAVIOURS` (`drip-<ms>`,
`break-<n>`, `stall-<n>`, `bad-chunk`); not streamed, `break-<n>` is `reset`, `stall-<n>` is
`hang`, `bad-chunk` is `malformed`, and `drip-<ms>` answers at once. A stream the client leaves
before its end is recorded (by model name) in `abandoned`.

Embeddings: `POST /v1/models/{model}:batchEmbedContents` (what google-genai 3.6's
`embed_content` sends to the Gemini API: `{"requests": [{"model", "content": {"parts":
[{"text"}]}, "outputDimensionality"?}]}`) and `:embedContent` (one request's fields at the
top level) answer `{"embeddings": [{"values": [...]}]}` (`{"embedding": {...}}` for one):
the OpenAI mock's `mock_vector` of each text, `outputDimensionality` long, else 3072 for
`gemini-embedding-001` and 768 for any other model. Like the Gemini API they report no usage,
unless the model is named `usage-<anything>` (then `usageMetadata.promptTokenCount`, the
words). `error-<status>` and `malformed[-anything]` behave as above.

Keys are checked like Google does: no key is 403 PERMISSION_DENIED, a wrong key is **400**
INVALID_ARGUMENT with reason API_KEY_INVALID (not 401). Every request is recorded in `calls`.
Run standalone for benchmarks: `python -m tests.mocks.gemini_server --port 9200 [--delay-ms 50]`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.mocks.openai_server import mock_vector
from tests.mocks.server import (
    BackgroundServer,
    Frame,
    Releasable,
    reset_connection,
    send_stream,
    serve_standalone,
)

MOCK_API_KEY = "AIzaMock-0123456789abcdef"
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Google rejects unknown fields, which catches a wrongly spelled one.
REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "generationConfig",
    "safetySettings",
    "tools",
    "toolConfig",
    "cachedContent",
    "labels",
    "continuationToken",
}
EMBED_REQUEST_FIELDS = {"model", "content", "taskType", "title", "outputDimensionality"}
CONTEXT_LENGTH_MESSAGE = (
    "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
)


@dataclass
class RecordedCall:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    model: str


@dataclass
class MockGemini:
    api_key: str = MOCK_API_KEY
    delay_ms: float = 0.0
    calls: list[RecordedCall] = field(default_factory=list)
    base_url: str = ""
    abandoned: list[str] = field(default_factory=list)
    _hanging: Releasable = field(default_factory=Releasable)
    _server: BackgroundServer = field(default_factory=lambda: BackgroundServer("mock-gemini"))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/models/{target}", self._models)
        self._hanging.install(app)
        return app

    def calls_for(self, model: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.model == model]

    def _received(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.Response | None:
        """Record the request; the answer Google gives a missing or wrong key, if it has one."""
        self.calls.append(
            RecordedCall(request.path, dict(request.query), dict(request.headers), body, model)
        )
        key = request.headers.get("x-goog-api-key")
        if key is None:
            return _error(403, "Method doesn't allow unregistered callers.")
        if key != self.api_key:
            return _error(400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        if method in ("batchEmbedContents", "embedContent"):
            return await self._embed(request, model, method)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, f"Method {method!r} not found.")
        body = await request.json()
        if (refused := self._received(request, body, model)) is not None:
            return refused
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        if model.startswith("slow-"):
            await asyncio.sleep(int(model.split("-")[1]) / 1000)
        unary = method == "generateContent"
        if model == "hang" or (model.startswith("stall-") and unary):
            await self._hanging.wait()  # or cancelled when the client hangs up
            return _error(503, "The mock server is shutting down.")
        if model == "reset" or (model.startswith("break-") and unary):
            reset_connection(request)
            await self._hanging.wait()  # cancelled at once: the connection is gone
            raise web.HTTPServiceUnavailable
        if model.startswith("error-"):
            return _vendor_error(model)
        if model == "context-length":
            return _error(400, CONTEXT_LENGTH_MESSAGE)
        if model == "malformed" or (model.startswith("bad-chunk") and unary):
            return web.Response(text="<html>upstream proxy error</html>", content_type="text/html")
        unknown = sorted(set(body) - REQUEST_FIELDS)
        if unknown:
            return _error(400, f'Invalid JSON payload received. Unknown name "{unknown[0]}".')
        if model.startswith("tool-call") and _declared_function(body) is None:
            return _error(400, "The tool-call mock needs a functionDeclaration in tools.")
        chunks = _answer(model, body)
        if unary:
            return web.json_response(_joined(chunks))
        if request.query.get("alt") != "sse":
            return _error(400, "This mock streams server-sent events only (alt=sse).")
        frames = [
            Frame(f"data: {json.dumps(chunk)}\r\n\r\n".encode(), text=bool(_chunk_text(chunk)))
            for chunk in chunks
        ]
        return await send_stream(
            request,
            frames,
            model=model,
            bad_frame=b"data: {this is not json\r\n\r\n",
            hanging=self._hanging,
            abandoned=self.abandoned,
        )

    async def _embed(self, request: web.Request, model: str, method: str) -> web.Response:
        body = await request.json()
        if (refused := self._received(request, body, model)) is not None:
            return refused
        if model.startswith("error-"):
            return _vendor_error(model)
        if model.startswith("malformed"):
            return web.Response(text="<html>upstream proxy error</html>", content_type="text/html")
        single = method == "embedContent"
        requests = [body] if single else body.get("requests")
        if not isinstance(requests, list) or not requests:
            return _error(400, "requests must not be empty.")
        embeddings, words = [], 0
        for one in requests:
            unknown = sorted(set(one) - EMBED_REQUEST_FIELDS)
            if unknown:
                return _error(400, f'Invalid JSON payload received. Unknown name "{unknown[0]}".')
            text = _texts(one.get("content") or {})
            if not text:
                return _error(400, "* BatchEmbedContentsRequest.requests: content is empty")
            default = 3072 if model == "gemini-embedding-001" else 768
            dimensions = one.get("outputDimensionality") or default
            embeddings.append({"values": mock_vector(text, dimensions)})
            words += len(text.split())
        reply: dict[str, Any] = (
            {"embedding": embeddings[0]} if single else {"embeddings": embeddings}
        )
        if model.startswith("usage-"):
            reply["usageMetadata"] = {"promptTokenCount": words, "totalTokenCount": words}
        return web.json_response(reply)

    # -- running it in a background thread (tests) --------------------------------------
    def start(self) -> str:
        """Serve on a free port of 127.0.0.1; returns the base URL to give the SDK."""
        self.base_url = self._server.start(self.app())
        return self.base_url

    def stop(self) -> None:
        self._server.stop()


def _texts(content: dict[str, Any]) -> str:
    return "".join(str(p.get("text", "")) for p in content.get("parts") or [])


def _user_text(content: dict[str, Any]) -> str:
    """A user turn as the echo reads it: its text parts, and what its tool results said."""
    results = []
    for part in content.get("parts") or []:
        response = _function_response(part)
        if response is not None:
            results.append(f"tool said: {(response.get('response') or {}).get('result', '')}")
    return " ".join(filter(None, [_texts(content), *results]))


def _function_response(part: dict[str, Any]) -> dict[str, Any] | None:
    response = part.get("functionResponse", part.get("function_response"))
    return response if isinstance(response, dict) else None


def _declared_function(body: dict[str, Any]) -> str | None:
    """The name of the request's first functionDeclaration."""
    for tool in body.get("tools") or []:
        declarations = tool.get("functionDeclarations", tool.get("function_declarations")) or []
        if declarations:
            return str(declarations[0].get("name"))
    return None


def _chunk_text(chunk: dict[str, Any]) -> str:
    return "".join(_texts(c.get("content") or {}) for c in chunk.get("candidates") or [])


def _generation(body: dict[str, Any], name: str) -> Any:
    """A generationConfig field, by its camelCase name or the proto's snake_case one."""
    config = body.get("generationConfig") or {}
    return config.get(name, config.get(re.sub(r"([A-Z])", r"_\1", name).lower()))


def _answer(model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply as stream chunks, one per word (at least one chunk). With a candidateCount
    of n, candidate i > 0 says the same with " #i" after it: the chunks carry the pieces of
    every candidate that has one left, each under its `index`."""
    contents: list[dict[str, Any]] = body.get("contents") or []
    users = [c for c in contents if c.get("role", "user") == "user"]
    last_user = users[-1] if users else {}
    answered = any(_function_response(p) for p in last_user.get("parts") or [])
    if model.startswith("tool-call") and answered:
        text = _user_text(last_user)
    elif model == "json-city":
        text = '{"city": "Paris", "population": 2100000}'
    else:
        text = "echo: " + _user_text(last_user)
    limit = _generation(body, "maxOutputTokens")
    prompt_words = sum(len(_texts(c).split()) for c in contents)
    prompt_words += len(_texts(body.get("systemInstruction") or {}).split())
    base: dict[str, Any] = {"modelVersion": f"{model}-001", "responseId": "mock-response"}
    if model == "blocked-prompt":
        return [base | {"promptFeedback": {"blockReason": "SAFETY"}}]
    if model == "blocked":
        rating = {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
        candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": [rating]}
        return [base | {"candidates": [candidate]}]
    top = (_generation(body, "logprobs") or 0) if _generation(body, "responseLogprobs") else None
    count = _generation(body, "candidateCount") or 1
    answers: list[list[dict[str, Any]]] = []  # each candidate's pieces, as chunk candidates
    output_words = 0
    for index in range(count):
        words = text.split() + ([f"#{index}"] if index else [])
        finish = "STOP"
        if isinstance(limit, int) and len(words) > limit:
            words, finish = words[:limit], "MAX_TOKENS"
        pieces: list[dict[str, Any]] = [
            {"text": w if i == 0 else " " + w} for i, w in enumerate(words)
        ] or [{"text": ""}]
        if model.startswith("tool-call") and not answered:
            call: dict[str, Any] = {"name": _declared_function(body), "args": {"city": "Paris"}}
            if model == "tool-call-with-id":
                call["id"] = "fc_mock_1"  # the same in every candidate
            pieces = [{"functionCall": call}]
            words = json.dumps(call).split()  # what the mock counts as its output tokens
        output_words += len(words)
        answer = []
        for step, part in enumerate(pieces):
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}}
            candidate["index"] = index
            if top is not None and part.get("text"):
                candidate["logprobsResult"] = _logprobs_result(part["text"], step, top)
            answer.append(candidate)
        answer[-1]["finishReason"] = finish
        answers.append(answer)
    chunks = [
        base | {"candidates": [answer[step] for answer in answers if step < len(answer)]}
        for step in range(max(map(len, answers)))
    ]
    if model == "continuation" and "continuationToken" not in body:
        chunks[-1]["candidates"][0] |= {
            "finishReason": "CONTINUATION",
            "continuationToken": "bW9yZQ==",
        }
    if model != "no-usage":
        chunks[-1]["usageMetadata"] = {
            "promptTokenCount": prompt_words,
            "candidatesTokenCount": output_words,  # every candidate's
            "totalTokenCount": prompt_words + output_words,
        }
        if model.startswith("cached-"):
            cached = min(prompt_words, int(model.split("-")[1]))
            chunks[-1]["usageMetadata"]["cachedContentTokenCount"] = cached
        if model.startswith("reasoning-"):
            thoughts = int(model.split("-")[1])
            chunks[-1]["usageMetadata"]["thoughtsTokenCount"] = thoughts
            chunks[-1]["usageMetadata"]["totalTokenCount"] += thoughts
    return chunks


def _logprobs_result(token: str, step: int, top: int | None) -> dict[str, Any]:
    """A `logprobsResult` for one chosen token (a piece of text is one token here): its log
    probability -0.25, and with `logprobs` k, k top candidates (the chosen token first, then
    "<token>~1", ... at -1.25, -2.25, ...), as Google sends them."""
    chosen = {"token": token, "tokenId": 1000 + step, "logProbability": -0.25}
    result: dict[str, Any] = {"chosenCandidates": [chosen]}
    if top:
        others = [
            {"token": f"{token}~{i}", "tokenId": 2000 + i, "logProbability": -0.25 - i}
            for i in range(1, top)
        ]
        result["topCandidates"] = [{"candidates": [chosen, *others]}]
    return result


def _joined(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The unary reply: the last chunk, with each candidate made of all its chunks: the text
    of all of them (and their other parts, after it), their logprobsResults joined, and the
    last of each other field (the finish reason)."""
    reply = dict(chunks[-1])
    pieces: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        for candidate in chunk.get("candidates") or []:
            pieces.setdefault(candidate.get("index", 0), []).append(candidate)
    if pieces:
        reply["candidates"] = [_joined_candidate(pieces[index]) for index in sorted(pieces)]
    return reply


def _joined_candidate(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    candidate: dict[str, Any] = {}
    for piece in pieces:
        candidate |= piece
    contents = [piece["content"] for piece in pieces if "content" in piece]
    if contents:
        text = "".join(_texts(content) for content in contents)
        others = [part for content in contents for part in content["parts"] if "text" not in part]
        parts = ([{"text": text}] if text or not others else []) + others
        candidate["content"] = {"role": "model", "parts": parts}
    results = [piece["logprobsResult"] for piece in pieces if "logprobsResult" in piece]
    if results:
        candidate["logprobsResult"] = {
            key: [step for result in results for step in result[key]]
            for key in ("chosenCandidates", "topCandidates")
            if key in results[0]
        }
    return candidate


def _vendor_error(model: str) -> web.Response:
    status = int(model.split("-")[1])
    headers: dict[str, str] = {}
    retry_info: str | None = None
    if model == "error-429":
        headers, retry_info = {"Retry-After": "1"}, "1s"
    elif model == "error-429-retry-info":
        retry_info = "7s"
    elif model == "error-503":
        headers = {"Retry-After": "2"}
    details = []
    if retry_info is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_info}
        )
    return _error(status, f"mock error {status}", details=details, headers=headers)


def _error(
    status: int,
    message: str,
    reason: str | None = None,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Google's error body: `{"error": {"code", "message", "status", "details"?}}`."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "UNKNOWN"),
    }
    details = list(details or [])
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        )
    if details:
        error["details"] = details
    return web.Response(
        status=status,
        text=json.dumps({"error": error}),
        content_type="application/json",
        headers=headers,
    )


def main() -> None:
    serve_standalone(__doc__ or "", 9200, MOCK_API_KEY, lambda key, delay: MockGemini(key, delay))


if __name__ == "__main__":
    main()
