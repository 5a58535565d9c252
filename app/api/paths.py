"""Every route at its path with and without the trailing slash, answered where it is asked.

The routes' paths mix both forms (`/ai/prompts/`, `/webhooks`), and FastAPI answered the
other form with a 307 to the declared one. A redirect costs a client a round trip, and some
drop the body or the `Authorization` header when they follow it (or do not follow it at all
for a POST). So the other form is served as is: a request that no route matches is routed
once more at the other form of its path, and only a request that misses both is a 404. The
declared form stays the only one in `/openapi.json`, in `Location` headers and in the README.

Only a request that no route matches pays for this (a second pass of the router); a path as
declared is routed exactly as before. A path that a route has with another method is not a
miss: it is that route's 405 with `Allow`, whichever form it came in.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

# Set on a request routed at its other form: the path and raw path it came with.
_ASKED = "prompt_manager.asked_path"


def other_form(path: str) -> str:
    """The path with its trailing slash removed, or with one added ("/" has no other form)."""
    if path == "/":
        return path
    return path[:-1] if path.endswith("/") else path + "/"


class _Unmatched:
    """The router's `default`: what it calls when no route matches the request's path."""

    def __init__(self, app: FastAPI, not_found: Mapping[str, ASGIApp]) -> None:
        self.router = app.router
        self.fallback = app.router.not_found
        self.not_found = tuple(not_found.items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        asked = scope.pop(_ASKED, None)
        if asked is None:
            path = scope["path"]
            if path != "/":
                scope[_ASKED] = (path, scope.get("raw_path"))
                scope["path"] = other_form(path)
                if scope.get("raw_path") is not None:
                    scope["raw_path"] = other_form(scope["raw_path"].decode("latin-1")).encode(
                        "latin-1"
                    )
                await self.router(scope, receive, send)
                return
        else:  # the other form missed too: the 404 names the path as asked
            scope["path"], raw_path = asked
            if raw_path is not None:
                scope["raw_path"] = raw_path
        path = scope["path"]
        for prefix, answer in self.not_found:
            if path == prefix or path.startswith(prefix + "/"):
                await answer(scope, receive, send)
                return
        await self.fallback(scope, receive, send)


def serve_both_forms(app: FastAPI, *, not_found: Mapping[str, ASGIApp]) -> None:
    """Route every path in both forms without a redirect. `not_found` maps a prefix (`/v1`)
    to what answers a path under it that no route has (/v1 answers in OpenAI's shape); any
    other such path gets the app's 404 problem."""
    app.router.redirect_slashes = False
    app.router.default = _Unmatched(app, not_found)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(scope: Scope) -> str | None:
    """The `Allow` of a 405: every method that some route serves at the request's path.

    A route's own 405 names only its methods, while the path may have other routes for
    others (`GET` and `POST /ai/prompts/` are two). None when the routes serve the request's
    own method after all (a mount, such as the docs' static files, answers its own 405)."""
    router = scope["app"].router
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] is Match.FULL for route in router.routes
        )
    ]
    if not allowed or scope["method"] in allowed:
        return None
    return ", ".join(allowed)
