"""`python -m app serve` bounds the request head while reading it (app/api/server.py): a head over
MAX_HEADER_BYTES is answered 431 and its connection closed before the client has finished
sending it, so a 10 MB header is never read; the server goes on serving other connections.

The server is a real process on a free port of 127.0.0.1 with a database of its own (of the
backend's kind; in Celery mode with the suite's broker), stopped by its PID at the end. The
client is a raw socket, so that the bytes on the wire, and when they are sent, are the test's.
Requests go to a fast-pathed route (`POST /v1/chat/completions` from a known key, with a
plain JSON body) and to a normal one (`GET /ai/prompts/`). The app's own check, for other
servers: tests/test_http_edge.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from app.db.database import create_engine, create_session_factory
from app.kit.settings import Settings
from app.services.auth import service as auth_service
from tests.conftest import SUITE_BROKER, make_settings, migrate, settings_env, throwaway_database
from tests.jobs.services import Process, Services, api_ready, free_port
from tests.mocks.openai_server import MockOpenAI

CHAT = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
).encode()
HUGE = 10 * 1024 * 1024
LIMIT = 8192  # MAX_HEADER_BYTES for the server (not the default: the setting reaches it)


@dataclass
class Server:
    port: int
    key: str
    limit: int
    process: Process


async def _api_key(settings: Settings) -> str:
    engine = create_engine(settings)
    try:
        async with create_session_factory(engine)() as session:
            user = await auth_service.create_user(session, email="edge@example.com")
            _, key = await auth_service.create_api_key(session, user=user)
            await session.commit()
    finally:
        await engine.dispose()
    return key


@pytest.fixture(scope="module")
async def server(
    backend: str, mock_openai: MockOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('serve') / 'serve.db'}"
            await migrate(url)
        else:
            url = await stack.enter_async_context(throwaway_database("pm_serve"))
        port = free_port()
        settings = make_settings(
            url,
            mock_openai,
            celery_broker_url=SUITE_BROKER if backend == "celery" else None,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            max_header_bytes=LIMIT,
        )
        key = await _api_key(settings)
        services = Services()
        stack.callback(services.close)  # (SIGTERM by PID, then SIGKILL if it lingers)
        process = services.app("serve", settings_env(settings))
        await asyncio.to_thread(api_ready, process, port, timeout=60)
        yield Server(port, key, LIMIT, process)
        assert process.alive(), process.tail()
        assert "Traceback" not in process.output(), process.tail()


def _head(request_line: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [request_line, *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _counted(target: str, fields: list[tuple[str, str]]) -> int:
    """The head's size as the limit counts it (`middleware.target_bytes`): the target, and
    each header's `name: value` and line end."""
    return len(target) + sum(len(name) + len(value) + 4 for name, value in fields)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _exchange(port: int, data: bytes) -> bytes:
    """Send one request (with `Connection: close`) and read the answer to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        return _read_all(sock)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _requests(server: Server) -> list[tuple[str, str, list[tuple[str, str]], bytes]]:
    """(method, target, headers, body) of a fast-pathed request and of a normal one."""
    auth = ("Authorization", f"Bearer {server.key}")
    chat = [
        ("Host", "127.0.0.1"),
        auth,
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(CHAT))),
        ("Connection", "close"),
    ]
    listing = [("Host", "127.0.0.1"), auth, ("Connection", "close")]
    return [("POST", "/v1/chat/completions", chat, CHAT), ("GET", "/ai/prompts/", listing, b"")]


def _assert_431(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(answer) == 431, answer[:300]
    assert b"connection: close" in head.lower()
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 431 and problem["code"] == "header_too_large"
    assert "MAX_HEADER_BYTES" in problem["detail"]


def _endless_head(server: Server, method: str, target: str, fields: list[tuple[str, str]]) -> int:
    """Start the request, then a header whose value goes on for 10 MB: the 431 must come back
    while the head is still unfinished, and the rest must not be taken. Returns how much of
    the 10 MB the connection took after the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(_head(f"{method} {target} HTTP/1.1", fields) + b"X-Huge: ")
        # Over the limit, and small enough to be read at once: the server closes having read
        # all that was sent, so the answer is not lost to a reset. The head does not end.
        sock.sendall(b"h" * (server.limit + 2048))
        _assert_431(_read_all(sock))  # the server has answered and closed
        taken = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while taken < HUGE:
                sock.sendall(b"h" * 65536)
                taken += 65536
        return taken


async def test_an_endless_header_is_refused_before_it_is_read(server: Server):
    for method, target, fields, _ in _requests(server):
        taken = await asyncio.to_thread(_endless_head, server, method, target, fields)
        assert taken < HUGE // 10  # the connection is gone: what the kernel still took
        answer = await asyncio.to_thread(
            _exchange, server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert _status(answer) == 200 and answer.endswith(b'{"status":"ok"}')
    assert server.process.alive()


async def test_a_head_at_the_limit_is_served_and_one_byte_more_is_a_431(server: Server):
    """Whole heads in one write (read at once by the server, so measured when complete):
    exactly MAX_HEADER_BYTES as the app counts it is served, one byte more refused."""
    for method, target, fields, body in _requests(server):
        pad = server.limit - _counted(target, [*fields, ("X-Pad", "")])
        padded = [*fields, ("X-Pad", "p" * pad)]
        assert _counted(target, padded) == server.limit
        request = _head(f"{method} {target} HTTP/1.1", padded) + b"\r\n" + body
        answer = await asyncio.to_thread(_exchange, server.port, request)
        assert _status(answer) == 200, answer[:500]

        over = [*fields, ("X-Pad", "p" * (pad + 1))]
        request = _head(f"{method} {target} HTTP/1.1", over) + b"\r\n" + body
        _assert_431(await asyncio.to_thread(_exchange, server.port, request))


def _kept_alive(server: Server) -> tuple[bytes, bytes]:
    """Two requests on one connection: a plain one, then one whose head is too large."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"h" * (server.limit + 2048))
        return first, _read_all(sock)


async def test_the_limit_applies_to_each_request_of_a_kept_alive_connection(server: Server):
    first, second = await asyncio.to_thread(_kept_alive, server)
    assert _status(first) == 200
    _assert_431(second)
