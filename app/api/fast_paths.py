"""The common case of the two busiest routes, served without FastAPI's request machinery.

A gateway is judged by what it adds to every call. Measured with py-spy under
`bench/gateways.py`, routing, dependency solving, body parsing and validation through FastAPI
were about a third of a /v1 request's CPU (docs/architecture.md, "The hot path"). So this
ASGI middleware takes the requests that need none of it, on `POST /v1/chat/completions` and
`POST /ai/prompts/` (each with or without its trailing slash, as the routes): an API key this
process verified recently (`Authenticator.known`) in the one `Authorization` header, a head
within MAX_HEADER_BYTES, a JSON body with a Content-Length within MAX_BODY_BYTES that
validates as the route's model, no `Idempotency-Key` (nor `Prefer`, on /ai/prompts/), and a
request the services accept.

It is a thin caller of the services the routes call: `Services.chat.start` and
`Services.prompts.submit`, which pass every request through the intake
(app/services/intake.py), where per-request policies live; the answer, the record and the
streaming are the route's. Anything else is handed, body and all, to the app as if this
middleware were not there: the route answers it, errors included, so every error keeps one
renderer and `/openapi.json` stays the routes'. Nothing has been written when that happens:
the services raise what is wrong with a request before they record anything. A failure past
that point (the database is down, say) is answered with the route's error handlers.

It sits in front of the whole app (`main.PromptManagerApp`), outside the middleware stack and
the routes' dependencies, so what those do must be done here too. `MIDDLEWARE` and
`DEPENDENCIES` below say, for each, how: tests/test_fast_path_parity.py compares them with
the app's middleware and each fast-pathed route's dependencies, so adding a middleware or a
dependency fails that test until this module says what the fast path does about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import openai_errors, ratelimit
from app.api.bearer import DuplicateAuthorization, bearer_key
from app.api.chat_responses import ChatCompletionResponse, ChatStreamResponse
from app.api.middleware import target_bytes
from app.api.paths import other_form
from app.api.problems import handled
from app.api.prompts import location
from app.kit.errors import AppError
from app.services.auth.authenticator import Caller
from app.services.chat.schemas import ChatCompletionCreate
from app.services.container import Services
from app.services.prompts.schemas import PromptCreate, PromptOut

# The app's middleware (by class name) and what the fast path does in its place.
MIDDLEWARE: dict[str, str] = {
    "BodyLimitMiddleware": "_plain_request takes only a Content-Length within MAX_BODY_BYTES "
    "and a head within MAX_HEADER_BYTES; _read_body stops past MAX_BODY_BYTES",
}
# Each fast-pathed route's dependencies (by function or header name) and how the fast path
# meets them; a route dependency it cannot meet must send the request to the route instead.
_COMMON = {
    "work_caller": "Services.auth.known: a key this process verified recently (its user "
    "and its drop_params); any other key (or none) goes to the route; a caller with limits: "
    "ratelimit.note, and ratelimit.forget when the route takes the request over",
    "_Bearer": "_plain_request: the one Authorization header, read by bearer_key",
    "get_services": "scope['app'].state.services",
    "idempotency_key": "a request with an Idempotency-Key header goes to the route",
}
DEPENDENCIES: dict[str, dict[str, str]] = {
    "/v1/chat/completions": _COMMON,
    "/ai/prompts/": _COMMON | {"prefer": "a request with a Prefer header goes to the route"},
}

# None: the route must answer (the request is not the common case, or it is refused).
Handler = Callable[[Services, Caller, bytes], Awaitable[Response | None]]
ErrorRenderer = Callable[[Request, Exception], Awaitable[Response]]


async def _chat(services: Services, caller: Caller, body: bytes) -> Response | None:
    """`POST /v1/chat/completions` as its route (`app.api.chat.create_chat_completion`)
    answers it without an Idempotency-Key."""
    try:
        data = ChatCompletionCreate.model_validate_json(body)
        run = await services.chat.start(caller, data)
    except (pydantic.ValidationError, AppError):
        return None
    return ChatStreamResponse(run) if run.stream else ChatCompletionResponse(run)


async def _submit(services: Services, caller: Caller, body: bytes) -> Response | None:
    """`POST /ai/prompts/` as its route (`app.api.prompts.create_prompt`) answers it without
    an Idempotency-Key or a `Prefer`."""
    try:
        data = PromptCreate.model_validate_json(body)
        submission = await services.prompts.submit(caller, data)
    except (pydantic.ValidationError, AppError):
        return None
    prompt = submission.prompt
    return Response(
        PromptOut.model_validate(prompt).model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": location(prompt.id), **submission.headers},
    )


# path → (its handler, the headers that send a request to the route, how the route renders
# an exception: OpenAI's error shape under /v1, the app's problem+json elsewhere)
ROUTES: dict[str, tuple[Handler, frozenset[bytes], ErrorRenderer]] = {
    "/v1/chat/completions": (_chat, frozenset({b"idempotency-key"}), openai_errors.handle),
    "/ai/prompts/": (_submit, frozenset({b"idempotency-key", b"prefer"}), handled),
}
# Each path with and without its trailing slash, as the routes take them (app/api/paths.py).
ROUTES |= {other_form(path): route for path, route in ROUTES.items()}


class FastPaths:
    def __init__(self, app: ASGIApp, *, max_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = ROUTES.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        handler, routed_headers, render_error = route
        services: Services | None = getattr(scope["app"].state, "services", None)
        token = _plain_request(scope, self.max_bytes, self.max_header_bytes, routed_headers)
        caller = None
        if token is not None and services is not None:  # (no lifespan: the route says so)
            caller = services.auth.known(token)
        if caller is None or services is None:
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, self.max_bytes)
        if caller.accounts:  # (its errors carry its RateLimit headers, as on the route)
            ratelimit.note(scope, caller)
        try:
            response = await handler(services, caller, body) if complete else None
        except Exception as exc:  # the database is down, say: answered as the route would
            response = await render_error(Request(scope), exc)
        if response is None:
            if caller.accounts:
                ratelimit.forget(scope)  # (the route starts over, as if it were the first)
            await self.app(scope, _replaying(body, receive, more=not complete), send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await response(scope, receive, sending)
        except Exception as exc:
            if started:  # (the server logs it and closes the connection)
                raise
            await (await render_error(Request(scope), exc))(scope, receive, send)


def _plain_request(
    scope: Scope, max_bytes: int, max_header_bytes: int, routed: frozenset[bytes]
) -> str | None:
    """The bearer key of a request the fast path can take: JSON, with a Content-Length within
    the limit, a head within MAX_HEADER_BYTES (counted as `middleware.target_bytes` says),
    exactly one `Authorization` header, read by `bearer_key` as the routes read it, and none
    of the `routed` headers. None for any other: the route answers it, refusals included
    (431, 400 `duplicate_authorization`, 401)."""
    authorization: list[bytes] = []
    json_body = length_ok = False
    size = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value)
        if name == b"authorization":
            authorization.append(value)
        elif name == b"content-type":
            json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
        elif name == b"content-length":
            length_ok = value.isdigit() and int(value) <= max_bytes
        elif name in routed:
            return None
    size += 4 * len(scope["headers"]) + target_bytes(scope)
    if not (json_body and length_ok) or size > max_header_bytes:
        return None
    try:
        return bearer_key(authorization)
    except DuplicateAuthorization:
        return None


async def _read_body(receive: Receive, max_bytes: int) -> tuple[bytes, bool]:
    """The whole body, and whether it arrived whole (not cut off by a disconnect, and within
    `max_bytes`)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > max_bytes:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replaying(body: bytes, receive: Receive, *, more: bool) -> Receive:
    """`receive` for the app: the body already read, then (`more`) what follows."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
