"""A fast mock of OpenAI's chat-completions endpoint, for the gateway benchmark.

It must never be the bottleneck, so it is an `asyncio.Protocol` on uvloop (when installed)
with every response precomputed as bytes: no HTTP framework, no JSON parsing of the request
body (a byte search tells a streamed request from a plain one), HTTP/1.1 keep-alive.

- `POST [/d<ms>]/v1/chat/completions`: 200 with a fixed chat completion and `usage`, after
  `<ms>` milliseconds (`/v1/...` answers at once, `/d50/v1/...` after 50 ms). With
  `"stream": true` in the body: server-sent chunks (chunked transfer encoding), the role and
  first word after the delay, then one word every `--stream-gap-ms`, a usage chunk when the
  body has `include_usage`, and `data: [DONE]`.
- `GET` anything: 200 with a one-model list (readiness probes).
- anything else: 404.

The request's model name is ignored; every answer names `gpt-4o-mini`. Nothing is recorded,
so memory does not grow with the number of calls. Run: `python -m bench.mock_upstream --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time

MODEL = "gpt-4o-mini"
WORDS = ["echo:", " hello", " from", " the", " mock", " upstream", " of", " OpenAI."]
USAGE = {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)}
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
PATH_RE = re.compile(rb"^(?:/d(\d+))?/v1/chat/completions$")
MAX_HEAD = 65536


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: ".encode()
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode()
    )
    return head + body


COMPLETION = _response(
    "200 OK",
    b"application/json",
    json.dumps(
        {
            "id": "chatcmpl-mock0000000000000000000000",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        },
        separators=(",", ":"),
    ).encode(),
)
MODELS = _response(
    "200 OK",
    b"application/json",
    json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode(),
)
NOT_FOUND = _response("404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')
BAD_REQUEST = _response("400 Bad Request", b"application/json", b'{"error":{"message":"bad"}}')
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)


def _chunk(payload: dict[str, object] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    event = f"data: {data}\n\n".encode()
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def _delta(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-mock0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


# Stream pieces: [role + first word], then one word each, then the finish chunk (with the
# usage chunk and [DONE] appended, or [DONE] alone), then the terminating zero-length chunk.
STREAM_PIECES = [
    STREAM_HEAD + _chunk(_delta({"role": "assistant", "content": WORDS[0], "refusal": None})),
    *(_chunk(_delta({"content": word})) for word in WORDS[1:]),
]
STREAM_END_USAGE = (
    _chunk(_delta({}, "stop"))
    + _chunk({**_delta({}), "choices": [], "usage": USAGE})
    + _chunk("[DONE]")
    + b"0\r\n\r\n"
)
STREAM_END = _chunk(_delta({}, "stop")) + _chunk("[DONE]") + b"0\r\n\r\n"


class MockProtocol(asyncio.Protocol):
    __slots__ = ("buffer", "loop", "transport")
    stream_gap = 0.0

    def __init__(self) -> None:
        self.buffer = b""
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        while self.buffer:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._close()
                return
            head = self.buffer[:end]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                self._close()
                return
            method, path = parts[0], parts[1]
            length, chunked = 0, False
            lower = head.lower()
            if (at := lower.find(b"\r\ncontent-length:")) >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else None].strip())
            elif b"\r\ntransfer-encoding: chunked" in lower:
                chunked = True
            start = end + 4
            if chunked:
                body, used = self._dechunk(start)
                if body is None:
                    return
                self.buffer = self.buffer[used:]
            else:
                if len(self.buffer) < start + length:
                    return
                body = self.buffer[start : start + length]
                self.buffer = self.buffer[start + length :]
            self._answer(method, path, body)

    def _dechunk(self, at: int) -> tuple[bytes | None, int]:
        """A chunked request body from `self.buffer[at:]`: (body, bytes used) or (None, 0)."""
        parts, buf = [], self.buffer
        while True:
            nl = buf.find(b"\r\n", at)
            if nl < 0:
                return None, 0
            size = int(buf[at:nl].split(b";")[0], 16)
            if size == 0:
                trailer = buf.find(b"\r\n", nl + 2)
                return (b"".join(parts), trailer + 2) if trailer >= 0 else (None, 0)
            if len(buf) < nl + 2 + size + 2:
                return None, 0
            parts.append(buf[nl + 2 : nl + 2 + size])
            at = nl + 2 + size + 2

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        if method == b"GET":
            self._write(MODELS)
            return
        match = PATH_RE.match(path.split(b"?", 1)[0])
        if method != b"POST" or match is None:
            self._write(NOT_FOUND)
            return
        delay = int(match.group(1)) / 1000 if match.group(1) else 0.0
        if STREAM_RE.search(body):
            end = STREAM_END_USAGE if USAGE_RE.search(body) else STREAM_END
            pieces = [*STREAM_PIECES[:-1], STREAM_PIECES[-1] + end]
            if not self.stream_gap:
                self._later(delay, b"".join(pieces))
                return
            for i, piece in enumerate(pieces):
                self._later(delay + i * self.stream_gap, piece)
            return
        self._later(delay, COMPLETION)

    def _later(self, delay: float, data: bytes) -> None:
        if delay:
            self.loop.call_later(delay, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.write(BAD_REQUEST)
            self.transport.close()


async def serve(host: str, port: int, stream_gap_ms: float) -> None:
    MockProtocol.stream_gap = stream_gap_ms / 1000
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream on http://{host}:{port}/v1 at {time.strftime('%X')}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--stream-gap-ms", type=float, default=0.0, help="pause between streamed words"
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the project's venv has it
        asyncio.run(serve(args.host, args.port, args.stream_gap_ms))
    else:
        uvloop.run(serve(args.host, args.port, args.stream_gap_ms))


if __name__ == "__main__":
    main()
