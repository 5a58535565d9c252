"""What the vendor mocks share: serving an aiohttp app in a background thread (tests) or in the
foreground (benchmarks), and releasing requests that hang on purpose when the server stops."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web


class Releasable:
    """An event that `hang` handlers wait on; set when the app shuts down, so a hanging request
    never holds the server's shutdown. Add `install(app)` to the app."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def install(self, app: web.Application) -> None:
        app.on_startup.append(self._create)
        app.on_shutdown.append(self._set)  # before the runner waits for handlers

    async def _create(self, _: web.Application) -> None:
        self._event = asyncio.Event()

    async def _set(self, _: web.Application) -> None:
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        assert self._event is not None, "install() the Releasable on the app"
        await self._event.wait()


class BackgroundServer:
    """Runs an aiohttp app on 127.0.0.1, on a free port, on an event loop of its own thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.origin = ""

    def start(self, app: web.Application) -> str:
        """Serve `app`; returns its origin, `http://127.0.0.1:<port>`."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve(app))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        return self.origin

    async def _serve(self, app: web.Application) -> None:
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.origin = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()


class Discard(list[Any]):
    """A `calls` list that keeps nothing: a benchmark must not grow one for every request."""

    def append(self, item: Any) -> None:
        pass


def serve_standalone(
    description: str,
    default_port: int,
    default_key: str,
    make: Callable[[str, float], Any],
) -> None:
    """`python -m tests.mocks.<vendor> --port N [--delay-ms D] [--api-key K]`, for benchmarks.
    `make(api_key, delay_ms)` builds the mock; its `calls` are discarded."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default=default_key)
    args = parser.parse_args()
    mock = make(args.api_key, args.delay_ms)
    mock.calls = Discard()
    web.run_app(
        mock.app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
    )
