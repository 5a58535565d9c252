"""A small HTTP/1.1 client for one upstream URL: POST a body, read the whole answer.

Why: for each call, aiohttp's request machinery (URL and header handling, its payload
registry, tracing hooks, the cookie jar) cost far more CPU than this client does, measured
against `bench.mock_upstream` with many calls in flight; next to the gateway's own work on a
/v1 call, that was the largest single item of a py-spy profile. bench/providers_overhead.py
measures the direct path against raw aiohttp; figures in bench/results/. Why a direct HTTP
path where measurement shows the library is the cost: docs/architecture.md, "The hot path".

What it does, and no more: keep-alive connections (plain or TLS) to one host, reused last in,
first out, and dropped once the server closes them or they sit idle for `IDLE_SECONDS`; the
request line and fixed headers built once; the response parsed by `httptools` (llhttp, as
uvicorn uses), with a length, chunked, or read until the server closes; gzip and deflate
bodies decoded. A connection is never shared by two calls at once and never reused after a
call that did not end cleanly (cancelled, timed out, failed), so a late answer cannot be read
as the next call's. Nothing is retried here: a call the server may have received is the
caller's to retry, recorded as an attempt.

Failures are raised as `OSError`s (`ConnectionError` when the connection is refused, reset or
closed before the answer is whole), which callers already handle for aiohttp; an answer that
is not HTTP raises `MalformedHTTP`. Deadlines are the caller's (`asyncio.timeout`), except
for connecting (`connect_timeout`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

IDLE_SECONDS = 15.0  # as aiohttp keeps a connection (a server that closes sooner is noticed)


class MalformedHTTP(OSError):
    """The server's answer is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    retry_after: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection, and the answer it is reading (at most one at a time)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Reply] | None = None
        self._headers_done = False
        self._chunks: list[bytes] = []
        self._retry_after: str | None = None
        self._encoding: bytes | None = None
        self._framed = False  # a Content-Length or Transfer-Encoding says where the body ends
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is not to be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedHTTP(f"the answer is not HTTP/1.1 ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._framed:
            # An answer with neither a length nor chunks ends when the server closes.
            self._resolve()
            return
        self._fail(ConnectionResetError("the server closed the connection before answering"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif name == b"content-encoding":
            self._encoding = value.strip().lower()
        elif name in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        self._resolve()

    # used by the pool

    def send(self, data: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._headers_done = False
        self._chunks = []
        self._retry_after = self._encoding = None
        self._framed = self._keep_alive = False
        self.transport.write(data)
        return self._waiter

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed and self._waiter is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _resolve(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        try:
            body = _decoded(b"".join(self._chunks), self._encoding)
        except zlib.error as exc:
            waiter.set_exception(MalformedHTTP(f"the answer's body could not be decoded ({exc})"))
            return
        status = self._parser.get_status_code()
        waiter.set_result(Reply(status, self._retry_after, body))

    def _fail(self, exc: OSError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


def _decoded(body: bytes, encoding: bytes | None) -> bytes:
    if encoding in (None, b"identity"):
        return body
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return zlib.decompress(body)
    raise zlib.error(f"unsupported content-encoding {encoding!r}")


class HTTP1Client:
    """POSTs to one URL over a pool of keep-alive connections (see the module's docstring)."""

    def __init__(self, url: str, headers: dict[str, str], *, connect_timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]  # never the userinfo
        lines = [f"POST {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: gzip, deflate"]
        for name, value in headers.items():
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: list[_Connection] = []

    async def post(self, body: bytes) -> Reply:
        connection = self._reused() or await self._connect()
        try:
            reply = await connection.send(self._head + b"%d\r\n\r\n" % len(body) + body)
        except BaseException:
            connection.close()  # cancelled or failed: its answer may still come, unread
            raise
        if connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return reply

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _reused(self) -> _Connection | None:
        oldest = time.monotonic() - IDLE_SECONDS
        while self._idle and self._idle[0].idle_since < oldest:
            self._idle.pop(0).close()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except (TimeoutError, ConnectionError):
            raise
        except OSError as exc:  # a name that does not resolve, say: as aiohttp reports it
            raise ConnectionError(f"cannot connect to {self._host}:{self._port} ({exc})") from exc
        return connection
