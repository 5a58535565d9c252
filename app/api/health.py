"""Liveness and readiness, for load balancers and orchestrators. No authentication."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServicesDep
from app.engine.health import readiness
from app.kit.errors import PROBLEM_MEDIA_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"description": "A dependency is unreachable (`not_ready`)."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database (and, in Celery mode, the broker) answers within 2 s each."""
    status, body = await readiness(services.readiness)
    media_type = "application/json" if status == 200 else PROBLEM_MEDIA_TYPE
    return JSONResponse(body, status_code=status, media_type=media_type)
