"""What the vendor mocks share: serving an aiohttp app in a background thread (tests) or in the
foreground (benchmarks), releasing requests that hang on purpose when the server stops, and
sending a streamed answer shaped by the model name (see `send_stream`)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Frame:
    """One server-sent event of a streamed answer, encoded as the vendor sends it."""

    data: bytes
    text: bool = False  # whether it carries a piece of the answer's text


# The streaming behaviours every mock gives the same model names (streamed calls only; each mock
# says what they do to a call that is not streamed):
# - `drip-<ms>[-anything]`: waits that long before each event after the first piece of text, so
#   a client sees the text arrive piece by piece;
# - `break-<n>[-anything]`: resets the connection (TCP RST) after n pieces of text;
# - `stall-<n>[-anything]`: sends n pieces of text, then nothing more (until the client goes
#   away or the server stops);
# - `bad-chunk[-anything]`: one piece of text, then an event whose data is not JSON.
STREAM_BEHAVIOURS = ("drip-", "break-", "stall-", "bad-chunk")


async def send_stream(
    request: web.Request,
    frames: list[Frame],
    *,
    model: str,
    bad_frame: bytes,
    hanging: Releasable,
    abandoned: list[str],
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send `frames` as `text/event-stream`, shaped by the STREAM_BEHAVIOURS of `model`. A client
    that goes away before the end is recorded in `abandoned` (by model name)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
    await response.prepare(request)
    texts = 0
    try:
        for frame in frames:
            if texts and model.startswith("drip-"):
                await asyncio.sleep(int(model.split("-")[1]) / 1000)
            await response.write(frame.data)
            texts += frame.text
            if model.startswith("bad-chunk") and texts:
                await response.write(bad_frame)
                break
            if model.startswith(("break-", "stall-")) and texts == int(model.split("-")[1]):
                if model.startswith("break-"):
                    reset_connection(request)
                await hanging.wait()  # cancelled at once after a reset, or when the client leaves
        await response.write_eof()
    except (asyncio.CancelledError, ConnectionError) as exc:
        if not model.startswith("break-"):
            abandoned.append(model)
        if isinstance(exc, asyncio.CancelledError):
            raise
    return response


def reset_connection(request: web.Request) -> None:
    """Close with SO_LINGER 0, so the client sees a TCP reset rather than a clean close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


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
