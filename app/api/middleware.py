"""Request size limits, answered in the problem shape: the head (MAX_HEADER_BYTES) and the
body (MAX_BODY_BYTES).

A declared `Content-Length` over the limit is refused before a byte of the body is read; a
body without one (chunked) is counted as it streams and refused as soon as it passes the limit,
so an oversize request never sits in memory whole.

The head is checked here for every server (`uvicorn app.main:create_app --factory`, the
in-process test client), but by the time an ASGI app sees the headers, the server has already
read them all: `python -m app serve` bounds them while they arrive (`app/api/server.py`), with the
same limit and the same answer.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_response

TOO_LARGE = "The request body is larger than this server accepts (MAX_BODY_BYTES)."
HEAD_TOO_LARGE = (
    "The request line and headers are larger than this server accepts (MAX_HEADER_BYTES)."
)


def head_too_large() -> JSONResponse:
    """The 431 for a head over MAX_HEADER_BYTES (here and from the server protocol)."""
    return problem_response(
        431, "header_too_large", "Request header fields too large", HEAD_TOO_LARGE
    )


def target_bytes(scope: Scope) -> int:
    """The request target's bytes as sent: the path, and `?` and the query if there is one.

    With each header's `name: value` and line end (`len(name) + len(value) + 4`), this is what
    the head limit counts, here, on the fast paths (`fast_paths._plain_request`) and in the
    server protocol (`app/api/server.py`): the head as sent, less the method and the HTTP version.
    """
    raw_path = scope.get("raw_path")
    path = len(raw_path) if raw_path is not None else len(scope["path"])
    query = len(scope.get("query_string", b""))
    return path + query + 1 if query else path


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        size = 0
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"content-length" and declared is None:
                declared = value
        if size + 4 * len(scope["headers"]) + target_bytes(scope) > self.max_header_bytes:
            await head_too_large()(scope, receive, send)
            return
        if declared is not None:
            if not declared.isdigit():
                response = problem_response(
                    400, "bad_request", "Bad request", "Content-Length is not a number."
                )
                await response(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                response = problem_response(
                    413, "payload_too_large", "Payload too large", TOO_LARGE
                )
                await response(scope, receive, send)
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body parsing; the handler in
                    # app/api/problems.py turns it into the same 413 problem.
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited_receive, send)
