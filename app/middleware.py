"""Request body limit, answered in the problem shape.

A declared `Content-Length` over the limit is refused before a byte of the body is read; a
body without one (chunked) is counted as it streams and refused as soon as it passes the limit,
so an oversize request never sits in memory whole.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem_response

TOO_LARGE = "The request body is larger than this server accepts (MAX_BODY_BYTES)."


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
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
                    # app.errors turns it into the same 413 problem.
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited_receive, send)
