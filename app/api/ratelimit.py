"""The RateLimit headers on the error answers of a request for work (`POST /ai/prompts/`,
`POST /v1/chat/completions`, `POST /v1/embeddings`) by a caller with limits, on its route and
on its fast path alike.

Once the caller is known (`auth.work_caller` on the routes, `FastPaths` on the fast paths),
`note` keeps `governor.answering`'s `Answer` in the request's ASGI scope: the caller's
policies (made only if an error is answered before the admission), then, once the request
is admitted, what its admission says. Every error answer then carries them, wherever it was
raised (validation, the intake, the insert, the provider call, the response), because the
one place that renders errors does it: the app's error handlers (app/api/problems.py), which
the routes, the fast paths and the /v1 renderer all go through. A successful answer and a
refusal (429) carry the admission's own headers already.

A caller without limits costs a falsy check of `Caller.accounts`, and nothing is kept.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Scope

from app.services.auth.authenticator import Caller
from app.services.limits.governor import Answer, answering

_KEY = "prompt_manager.rate_limit_headers"


def note(scope: Scope, caller: Caller) -> None:
    """Keep the RateLimit headers of the request's answers, for a caller with limits (check
    `caller.accounts` first: one without costs nothing more)."""
    scope[_KEY] = answering(caller.accounts)


def forget(scope: Scope) -> None:
    """The request goes to its route, which starts it over (the fast path hands it on)."""
    scope.pop(_KEY, None)


def carry(scope: Scope, response: Response) -> Response:
    """`response`, an error answer, with the request's RateLimit headers (if it has any and
    the error does not set its own)."""
    answer: Answer | None = scope.get(_KEY)
    if answer is not None:
        for name, value in answer.headers().items():
            response.headers.setdefault(name, value)
    return response
