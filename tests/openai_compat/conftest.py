"""The official `openai` SDK as the client of /v1, over real HTTP.

The suite's app (`api`, on each backend) is also served by uvicorn on a free port of
127.0.0.1, on the test's own event loop: the SDK then speaks to it exactly as to any server
(its own HTTP client, real sockets, server-sent events as they are written), which the
in-process ASGI transport cannot do for streams nor for a client that hangs up. The app's
lifespan is the `api` fixture's, so the tests read the same database through `api.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import uvicorn

from tests.conftest import Api


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own signal handlers


@dataclass
class V1:
    api: Api
    base_url: str  # http://127.0.0.1:<port>/v1

    async def user(self) -> tuple[str, dict[str, str]]:
        """A new user's API key, and the headers for /ai with it."""
        headers = await self.api.new_user()
        return headers["Authorization"].removeprefix("Bearer "), headers

    async def prompt(self, headers: dict[str, str], prompt_id: str) -> dict[str, Any]:
        """The prompt as `GET /ai/prompts/{id}` shows it to the user of `headers`."""
        response = await self.api.client.get(f"/ai/prompts/{prompt_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def client(self, key: str) -> openai.AsyncOpenAI:
        # The SDK's own retries off: each test counts the calls it makes.
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="session")
async def v1(api: Api) -> AsyncIterator[V1]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(api.app, lifespan="off", log_level="warning", access_log=False)
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()  # raises why it did not start
        await asyncio.sleep(0.01)
    try:
        yield V1(api, f"http://127.0.0.1:{port}/v1")
    finally:
        server.should_exit = True
        await serving
        sock.close()
