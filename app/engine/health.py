"""Readiness checks, shared by the API's /readyz (app/api/health.py) and the Celery worker's own
server (app/worker/health.py), which answer with the same bodies and status codes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import text

from app.db.database import SessionFactory

Check = Callable[[], Awaitable[None]]
CHECK_TIMEOUT_SECONDS = 2.0


def database_check(sessions: SessionFactory) -> Check:
    async def check() -> None:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))

    return check


async def readiness(checks: Mapping[str, Check]) -> tuple[int, dict[str, Any]]:
    """Run every check at once, CHECK_TIMEOUT_SECONDS each: 200 and `ready`, or 503 and a
    `not_ready` problem (to be sent as application/problem+json) naming what did not answer."""
    results = await asyncio.gather(*(_run(check) for check in checks.values()))
    status = dict(zip(checks, results, strict=True))
    if all(result == "ok" for result in results):
        return 200, {"status": "ready", "checks": status}
    return 503, {
        "type": "urn:prompt-manager:problem:not_ready",
        "title": "Not ready",
        "status": 503,
        "code": "not_ready",
        "detail": "Unreachable: " + ", ".join(k for k, v in status.items() if v != "ok") + ".",
        "checks": status,
    }


async def _run(check: Check) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"
