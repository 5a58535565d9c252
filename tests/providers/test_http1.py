"""The HTTP/1.1 client of the direct OpenAI transport (app/providers/http1.py), against a raw
local server that answers each request with bytes chosen by the test: framing (length,
chunked, until close), keep-alive reuse and its limits, failures, and uvloop (the server's
loop in production)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from app.providers.http1 import HTTP1Client, MalformedHTTP

OK_BODY = b'{"ok": true}'


def ok(body: bytes = OK_BODY, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class RawServer:
    """Reads one request at a time and writes `answer(n)` for the n-th request (0-based);
    `close_after` closes the connection after writing. Records what it received."""

    def __init__(self, answer: Callable[[int], bytes], *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        # Since Python 3.12, wait_closed() waits for the open connections too, and a test's
        # client may still hold a kept-alive one: close them, as a stopping server does.
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer(len(self.requests) - 1))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[str], HTTP1Client]]:
    made: list[HTTP1Client] = []

    def make(url: str) -> HTTP1Client:
        made.append(HTTP1Client(url, {"Authorization": "Bearer k"}, connect_timeout=2))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


async def test_sends_the_request_and_reuses_the_connection(client_for) -> None:
    async with RawServer(lambda n: ok()) as server:
        client = client_for(server.url)
        for _ in range(3):
            reply = await client.post(b'{"a": 1}')
            assert (reply.status, reply.body) == (200, OK_BODY)
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
    assert b"\r\nAuthorization: Bearer k\r\n" in first
    assert first.endswith(b'Content-Length: 8\r\n\r\n{"a": 1}')


async def test_reads_chunked_gzip_and_until_close_answers(client_for) -> None:
    packed = gzip.compress(OK_BODY)
    head = b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 7\r\n\r\n"
    rest = OK_BODY[5:]
    chunked = head + b"5\r\n" + OK_BODY[:5] + b"\r\n%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n"
    answers = [chunked, ok(packed, extra=b"Content-Encoding: gzip\r\n")]
    async with RawServer(lambda n: answers[n]) as server:
        client = client_for(server.url)
        first = await client.post(b"{}")
        assert (first.status, first.retry_after, first.body) == (429, "7", OK_BODY)
        second = await client.post(b"{}")
        assert (second.status, second.body) == (200, OK_BODY)
    assert server.connections == 1

    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK_BODY
    async with RawServer(lambda n: until_close, close_after=True) as server:
        client = client_for(server.url)
        assert (await client.post(b"{}")).body == OK_BODY
        assert (await client.post(b"{}")).body == OK_BODY
    assert server.connections == 2  # the server closed the first one


async def test_a_connection_the_server_closed_is_not_reused(client_for) -> None:
    async with RawServer(lambda n: ok(), close_after=True) as server:
        client = client_for(server.url)
        await client.post(b"{}")
        await asyncio.sleep(0.05)  # the close reaches the client
        assert (await client.post(b"{}")).status == 200
    assert server.connections == 2


async def test_a_truncated_answer_is_a_connection_error(client_for) -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK_BODY
    async with RawServer(lambda n: truncated, close_after=True) as server:
        with pytest.raises(ConnectionError):
            await client_for(server.url).post(b"{}")


async def test_an_answer_that_is_not_http_is_malformed(client_for) -> None:
    async with RawServer(lambda n: b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as server:
        with pytest.raises(MalformedHTTP):
            await client_for(server.url).post(b"{}")


async def test_a_refused_connection_is_a_connection_error(client_for) -> None:
    async with RawServer(lambda n: ok()) as server:
        url = server.url
    with pytest.raises(ConnectionError):
        await client_for(url).post(b"{}")


async def test_a_cancelled_call_never_hands_its_connection_on(client_for) -> None:
    """The first answer comes late: the cancelled call's connection is closed, so the next
    call cannot read that answer as its own."""
    answers = [b"", ok(b'{"n": 2}')]
    async with RawServer(lambda n: answers[n]) as server:
        client = client_for(server.url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.post(b"{}")  # the server writes nothing back
        reply = await client.post(b"{}")
        assert reply.body == b'{"n": 2}'
    assert server.connections == 2


def test_works_on_uvloop() -> None:
    async def main() -> tuple[int, int]:
        async with RawServer(lambda n: ok()) as server:
            client = HTTP1Client(server.url, {}, connect_timeout=2)
            try:
                statuses = [(await client.post(b"{}")).status for _ in range(3)]
            finally:
                await client.aclose()
            assert statuses == [200, 200, 200]
            return server.connections, len(server.requests)

    assert uvloop.run(main()) == (1, 3)


def test_refuses_what_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="http"):
        HTTP1Client("ftp://example.com/x", {}, connect_timeout=1)
    with pytest.raises(ValueError, match="line break"):
        HTTP1Client("http://example.com/x", {"X-A": "1\r\nX-B: 2"}, connect_timeout=1)
