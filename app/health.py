"""Liveness and readiness, for load balancers and orchestrators. No authentication."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.db.database import SessionFactory

router = APIRouter(tags=["health"])

Check = Callable[[], Awaitable[None]]
CHECK_TIMEOUT_SECONDS = 2.0


def database_check(sessions: SessionFactory) -> Check:
    async def check() -> None:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))

    return check


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"description": "A dependency is unreachable (`not_ready`)."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database (and, in Celery mode, the broker) answers within 2 s each."""
    checks: dict[str, Check] = request.app.state.readiness_checks
    results = await asyncio.gather(*(_run(check) for check in checks.values()))
    status = dict(zip(checks, results, strict=True))
    if all(result == "ok" for result in results):
        return JSONResponse({"status": "ready", "checks": status})
    body: dict[str, Any] = {
        "type": "urn:prompt-manager:problem:not_ready",
        "title": "Not ready",
        "status": 503,
        "code": "not_ready",
        "detail": "Unreachable: " + ", ".join(k for k, v in status.items() if v != "ok") + ".",
        "checks": status,
    }
    return JSONResponse(body, status_code=503, media_type="application/problem+json")


async def _run(check: Check) -> str:
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return "ok"
