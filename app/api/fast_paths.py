"""The common case of the two busiest routes, served without FastAPI's request machinery.

A gateway is judged by what it adds to every call. Measured with py-spy under
`bench/gateways.py`, routing, dependency solving, body parsing and validation through FastAPI
were about a third of a /v1 request's CPU, more than the database writes and the provider call
together. So this ASGI middleware takes the requests that need none of it, on
`POST /v1/chat/completions` and `POST /ai/prompts/` (each with or without its trailing
slash, as the routes): an API key this process verified recently (`KeyCache`) in the one
`Authorization` header, a head within MAX_HEADER_BYTES, a JSON body with a Content-Length
within MAX_BODY_BYTES that validates as the route's model, no `Idempotency-Key` (nor `Prefer`,
on /ai/prompts/), and a request the service's own checks accept. It then runs the very code
the route runs (`openai_compat.service.prepare_chat` and `run_chat` with the route's responses;
`prompts.service.prepare_prompt`, `Recorder.create_prompt`, the dispatcher), so the answer, the
record and the streaming are the route's.

Anything else is handed, body and all, to the app as if this middleware were not there: the
route answers it, errors included, so every error keeps one renderer and `/openapi.json`
stays the routes'. Nothing has been written when that happens: each service raises what is
wrong with a request before it records anything. A failure past that point (the database is
down, say) is answered with the route's error handlers, in the route's shape.

It sits in front of the whole app (`main.PromptManagerApp`), outside Starlette's own error,
telemetry and body-limit layers, which the requests it takes do not need: it checks the body's
size itself, and renders its failures as above.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import openai_errors
from app.api.auth import KeyCache
from app.api.bearer import DuplicateAuthorization, bearer_key
from app.api.chat_responses import ChatCompletionResponse, ChatStreamResponse
from app.api.middleware import target_bytes
from app.api.paths import other_form
from app.api.problems import handled
from app.db.models import User
from app.kit.errors import AppError
from app.services.chat import service as chat_service
from app.services.chat.schemas import ChatCompletionCreate
from app.services.prompts import service as prompt_service
from app.services.prompts.schemas import PromptCreate, PromptOut

# None: the route must answer (the request is not the common case, or it is refused).
Handler = Callable[[Scope, User, bytes], Awaitable[Response | None]]
ErrorRenderer = Callable[[Request, Exception], Awaitable[Response]]


async def _chat(scope: Scope, user: User, body: bytes) -> Response | None:
    state = scope["app"].state
    try:
        data = ChatCompletionCreate.model_validate_json(body)
        prompt = await chat_service.prepare_chat(
            user_id=user.id,
            data=data,
            router=state.model_router,
            max_prompt_chars=state.settings.max_prompt_chars,
            prompt_types=state.prompt_types,
        )
    except (pydantic.ValidationError, AppError):
        return None
    run = await chat_service.run_chat(state.recorder, state.inline_runner, prompt=prompt, data=data)
    return ChatStreamResponse(run) if run.stream else ChatCompletionResponse(run)


async def _submit(scope: Scope, user: User, body: bytes) -> Response | None:
    state = scope["app"].state
    try:
        data = PromptCreate.model_validate_json(body)
        prompt = await prompt_service.prepare_prompt(
            user_id=user.id,
            data=data,
            router=state.model_router,
            max_prompt_chars=state.settings.max_prompt_chars,
            prompt_types=state.prompt_types,
            pending=state.pending,
        )
    except (pydantic.ValidationError, AppError):
        return None
    await state.recorder.create_prompt(prompt)
    # (never raises: the sweeper has it otherwise)
    await state.dispatcher.dispatch(prompt.id, prompt.user_id)
    return Response(
        PromptOut.model_validate(prompt).model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/ai/prompts/{prompt.id}"},
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
        state = scope["app"].state
        token = _plain_request(scope, self.max_bytes, self.max_header_bytes, routed_headers)
        cache: KeyCache = state.key_cache
        user = cache.get(token) if token is not None else None
        if user is None or not hasattr(state, "recorder"):  # (no lifespan: the route says so)
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, self.max_bytes)
        try:
            response = await handler(scope, user, body) if complete else None
        except Exception as exc:  # the database is down, say: answered as the route would
            response = await render_error(Request(scope), exc)
        if response is None:
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
