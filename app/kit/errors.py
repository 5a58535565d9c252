"""The errors services raise: `AppError` and its kinds, each with an HTTP status and a stable
`code`. Services raise these (never FastAPI's HTTPException); the HTTP layer renders them as
RFC 9457 problem details (app/api/problems.py), or in OpenAI's shape under /v1.
"""

from __future__ import annotations

from typing import Any

PROBLEM_MEDIA_TYPE = "application/problem+json"


class AppError(Exception):
    status_code = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra or {}
        self.headers = headers


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class Unauthorized(AppError):
    status_code = 401
    code = "invalid_api_key"
    title = "Unauthorized"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(AppError):
    """The caller is known, and may not do this (a role that only reads, a key not allowed a
    model, an admin's operation)."""

    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class InvalidInput(AppError):
    status_code = 422
    code = "invalid_input"
    title = "Invalid input"


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    title = "Conflict"
