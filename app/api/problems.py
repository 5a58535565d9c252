"""One error shape for the whole API: RFC 9457 problem details with a stable `code`.

Services raise `AppError` subclasses (app/kit/errors.py); the handlers installed by
`install_error_handlers` turn those, validation errors, routing errors and unexpected failures
into `application/problem+json`. No stack trace and no secret ever reaches a response. Each
answer also carries the request's RateLimit headers, if it has any (app/api/ratelimit.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api import ratelimit
from app.api.paths import allowed_methods
from app.kit.dbapi import lost_connection
from app.kit.errors import PROBLEM_MEDIA_TYPE, AppError
from app.kit.text import INVALID_TEXT, scrub, scrub_json, validation_errors

logger = logging.getLogger(__name__)


class Problem(BaseModel):
    """RFC 9457 problem details. `code` is stable and meant for programs; `detail` for people."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:prompt-manager:problem:not_found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    code: str = Field(examples=["not_found"])
    detail: str = Field(examples=["No prompt with this id."])


_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    431: ("header_too_large", "Request header fields too large"),
}


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:prompt-manager:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": scrub(detail),  # (it may quote what the client sent)
    }
    if extra:
        body.update(scrub_json(jsonable_encoder(extra)))
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _validation_detail(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Summarise pydantic errors without echoing the input back (it may be large or secret)."""
    cleaned = validation_errors(errors)
    if not cleaned:
        return "The request is not valid.", cleaned
    loc = errors[0].get("loc", ())
    where = ".".join(str(part) for part in loc if part != "body") or "request"
    more = f" (and {len(cleaned) - 1} more)" if len(cleaned) > 1 else ""
    return f"{where}: {cleaned[0]['msg']}{more}", cleaned


async def handled(request: Request, exc: Exception) -> Response:
    """What the app's handler for `exc` answers (the one Starlette would pick), for code that
    answers outside the routes (app/api/fast_paths.py, a response already under way)."""
    handlers = request.app.exception_handlers
    handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
    if handler is None:  # no handler at all: the app was built without install_error_handlers
        raise exc
    response: Response = await handler(request, exc)
    return response


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _with_rate_headers(handler: Handler) -> Handler:
    """The handler, its answer carrying the request's RateLimit headers: those of a request
    for work by a caller with limits (app/api/ratelimit.py); no other request has any."""

    async def answer(request: Request, exc: Exception) -> Response:
        return ratelimit.carry(request.scope, await handler(request, exc))

    return answer


def install_error_handlers(app: FastAPI) -> None:
    async def app_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        return problem_response(
            exc.status_code, exc.code, exc.title, exc.detail, extra=exc.extra, headers=exc.headers
        )

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail, errors = _validation_detail(list(exc.errors()))
        # Text that no database or JSON encoder can hold (app/kit/text.py) has a code of its own.
        text = bool(errors) and all(e["type"] == INVALID_TEXT for e in errors)
        code = INVALID_TEXT if text else "validation_error"
        return problem_response(422, code, "Invalid request", detail, extra={"errors": errors})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code, title = _HTTP_CODES.get(exc.status_code, (f"http_{exc.status_code}", "Error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405 and (allow := allowed_methods(request.scope)) is not None:
            # (a route's own 405 names its methods only, not those of the path's other routes)
            headers = (headers or {}) | {"Allow": allow}
            detail = f"This path does not serve {request.method}; it serves {allow}."
        return problem_response(exc.status_code, code, title, detail, headers=headers)

    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", type(exc).__name__)
        return problem_response(
            503,
            "database_unavailable",
            "Service unavailable",
            "The database cannot be reached right now; retry shortly.",
            headers={"Retry-After": "2"},
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unexpected error (incident %s)", incident, exc_info=exc)
        return problem_response(
            500,
            "internal_error",
            "Internal error",
            f"An unexpected error occurred; it was logged as incident {incident}.",
        )

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DBAPIError)
        if (
            exc.connection_invalidated
            or isinstance(exc, OperationalError | InterfaceError)
            or lost_connection(exc)
        ):
            return await database_unavailable(request, exc)
        return await unexpected(request, exc)

    handlers: dict[type[Exception], Handler] = {
        AppError: app_error,
        RequestValidationError: validation_error,
        StarletteHTTPException: http_error,
        DBAPIError: database_error,
        ConnectionError: database_unavailable,
        Exception: unexpected,
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, _with_rate_headers(handler))


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the problem shape for these statuses."""
    descriptions = {
        401: "Missing, unknown, expired or revoked API key (`missing_api_key`, `invalid_api_key`, "
        "`expired_api_key`, `revoked_api_key`).",
        404: "No such resource for this user (`not_found`).",
        409: "Not possible in the resource's current state (`already_finished`: the prompt is "
        "already completed, failed or cancelled).",
        413: "Request body over `MAX_BODY_BYTES` (`payload_too_large`).",
        422: "Invalid input (`validation_error`, `invalid_text`: a NUL or a lone surrogate in a "
        "string, `unknown_model`, `provider_not_configured`, `prompt_too_large`).",
        429: "Too many requests: retry after `Retry-After` seconds.",
        503: "The database is unreachable (`database_unavailable`).",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def document_body_errors(app: FastAPI) -> None:
    """Document, on every operation that takes a body, the two errors any body can cause
    before a route sees it: 400 `bad_request` (not parseable as JSON) and 413
    `payload_too_large` (over MAX_BODY_BYTES), so the OpenAPI document matches what clients
    can get (the contract test checks it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        body_errors = {
            "400": "The body could not be parsed (`bad_request`).",
            "413": "Request body over `MAX_BODY_BYTES` (`payload_too_large`).",
        }
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if isinstance(operation, dict) and "requestBody" in operation:
                    responses = operation.setdefault("responses", {})
                    for status, description in body_errors.items():
                        responses.setdefault(
                            status, {"description": description, "content": problem}
                        )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
