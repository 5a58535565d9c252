"""Errors under /v1 in OpenAI's shape, so the official SDKs raise their usual exceptions.

Everything raised while serving a /v1 route (authentication, validation, our `AppError`s,
database and unexpected errors) first goes through the app's own handlers (app/api/problems.py), so
logging, codes, headers and messages stay exactly those of /ai; `OpenAIRoute` then re-renders
the problem as `{"error": {"message", "type", "param", "code"}}` with OpenAI's status
conventions: invalid input is a 400 (not our 422), and an unknown model a 404
`model_not_found`. Failures of the provider call itself (`UpstreamFailed`) keep the status
the SDK expects: 429 for a rate limit, 502/503/504 for an upstream that failed, was
unavailable or timed out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.api.problems import handled
from app.kit.errors import AppError

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_NOT_FOUND_CODES = frozenset({"unknown_model", "provider_not_configured"})
# Our limits' refusals (app/services/limits/governor.py, problems with a `limit_name`) as
# OpenAI words them: a rate limit is `rate_limit_exceeded` (of type `requests` or `tokens`), a
# spent budget `insufficient_quota`. (A provider's own 429 keeps `rate_limited`.)
_LIMIT_CODES = {
    "rate_limited": "rate_limit_exceeded",
    "too_many_in_flight": "rate_limit_exceeded",
    "budget_exceeded": "insufficient_quota",
}
_PASSED_HEADERS = ("retry-after", "www-authenticate", "allow", "ratelimit", "ratelimit-policy")


def error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    kind: str | None = None,
) -> JSONResponse:
    if kind is None:
        kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def app_error_response(exc: AppError) -> JSONResponse:
    """An error met once the route's handler has returned (while the answer is produced)."""
    return error_response(exc.status_code, exc.detail, code=exc.code, headers=exc.headers)


def error_event(exc: AppError) -> bytes:
    """A failure after a stream began (its status is long sent): OpenAI's SDKs raise
    `APIError` on this event."""
    kind = _TYPES.get(exc.status_code, "server_error")
    body = {"error": {"message": exc.detail, "type": kind, "param": None, "code": exc.code}}
    return f"data: {json.dumps(body)}\n\n".encode()


def from_problem(problem: Response) -> JSONResponse:
    """Re-render one of the app's problem+json responses in OpenAI's shape."""
    data: dict[str, Any] = json.loads(bytes(problem.body))
    status = int(data.get("status", problem.status_code))
    code = str(data.get("code")) if data.get("code") else None
    param = data.get("parameter")
    kind: str | None = None
    if status == 422 and code in _NOT_FOUND_CODES:
        status, code, param = 404, "model_not_found", "model"
    elif status == 429 and code in _LIMIT_CODES and "limit_name" in data:
        kind = "tokens" if data.get("limit_name") == "tpm" else "requests"
        if code == "budget_exceeded":
            kind = "insufficient_quota"
        code = _LIMIT_CODES[code]
    elif status == 422:
        status = 400
        errors = data.get("errors")
        if errors and isinstance(errors, list):
            param = ".".join(str(p) for p in errors[0].get("loc", ()) if p != "body") or None
    headers = {k: v for k, v in problem.headers.items() if k.lower() in _PASSED_HEADERS}
    return error_response(
        status,
        str(data.get("detail", "")),
        code=code,
        param=param,
        headers=headers or None,
        kind=kind,
    )


async def handle(request: Request, exc: Exception) -> Response:
    """The app's handler for this exception (as Starlette would pick it), re-rendered."""
    problem = await handled(request, exc)
    if problem.status_code == 413:
        # The body limit answers in the problem shape before any route when the body declares
        # its length (app.api.middleware): the same shape when it is counted as it streams.
        return problem
    return from_problem(problem)


class OpenAIRoute(APIRoute):
    """A route whose errors (dependencies, validation, handler) are rendered in OpenAI's
    shape; the rest of the app keeps its problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return await handle(request, exc)

        return route

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's own method check raises its 405 (with `Allow`) outside the handler
        above: rendered in OpenAI's shape too."""
        try:
            await super().handle(scope, receive, send)
        except StarletteHTTPException as exc:
            if exc.status_code != 405:
                raise
            response = await handle(Request(scope, receive), exc)
            await response(scope, receive, send)
