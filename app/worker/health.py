"""A Celery worker's own /healthz and /readyz, served by aiohttp on the worker's event loop.

`GET /healthz` answers 200 `{"status": "ok"}` when the event loop that runs the prompts answers
(a loop blocked or dead answers nothing); `GET /readyz` runs the same checks as the API's
(app/api/health.py: database and broker, 2 s each) and answers with the same bodies and status
codes. No authentication and no access log, like the API's.

The port (WORKER_HEALTH_HOST, WORKER_HEALTH_PORT) is bound by `bind_health_port` in the main
thread before anything else starts, so a port already in use stops the worker at once with one
line instead of a traceback from the event loop's thread; `serve_health` then serves that
socket once the runtime is open (a probe connecting meanwhile waits in the listen backlog).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from aiohttp import web

from app.engine.health import Check, readiness
from app.kit.errors import PROBLEM_MEDIA_TYPE
from app.kit.settings import Settings

SHUTDOWN_TIMEOUT_SECONDS = 3.0  # a /readyz in progress takes at most CHECK_TIMEOUT_SECONDS


def bind_health_port(settings: Settings) -> socket.socket | None:
    """A socket listening on WORKER_HEALTH_HOST:WORKER_HEALTH_PORT, or None when the port is
    unset. Raises SystemExit with a one-line message if it cannot be bound."""
    host, port = settings.worker_health_host, settings.worker_health_port
    if port is None:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        # create_server's own message repeats the address; the errno's says it plainly.
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
        raise SystemExit(
            f"WORKER_HEALTH_PORT {port} on {host} is not available ({reason}): give each worker "
            "on a machine a port of its own, or set WORKER_HEALTH_PORT empty to serve none"
        ) from None


@asynccontextmanager
async def serve_health(
    listener: socket.socket | None, checks: Mapping[str, Check]
) -> AsyncIterator[None]:
    """Serve /healthz and /readyz on `listener` (from `bind_health_port`; None serves nothing)
    for the duration of the block; the socket is closed at the end."""
    if listener is None:
        yield
        return

    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        return _json(*await readiness(checks))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    try:
        await runner.setup()
        await web.SockSite(runner, listener).start()
        yield
    finally:
        await runner.cleanup()
        listener.close()


def _json(status: int, body: Mapping[str, object]) -> web.Response:
    media_type = "application/json" if status == 200 else PROBLEM_MEDIA_TYPE
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=media_type)
